"""The BRO learner (agents/bro.py, agents/checkpoint.py) on a tiny pure-JAX environment:
episode handling, the reset schedule, vmapped seeds, checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.base import Env, State

from nil_jax.agents import bro, checkpoint

# Vmapped matmuls round differently from unbatched ones, and Adam's normalized steps carry
# rounding into parameters at the scale of the learning rate (3e-4); seeds that mixed or
# diverged would differ at O(1).
VMAP_RTOL, VMAP_ATOL = 1e-4, 1e-3
STEPS = 4  # training iterations per jitted `train` call, the same everywhere: one compile


class Line(Env):
    """A point on a line: position += 0.4 * action; the episode terminates when |position| > 1.
    obs = (position, steps taken in the episode), so a reset observation is recognisable. The
    state also holds an empty array, as MuJoCo's `act` of a robot without activations."""

    def reset(self, rng):
        position = 0.01 * jax.random.uniform(rng, (), minval=-1.0, maxval=1.0)
        zero = jnp.zeros(())
        return State(pipeline_state=(position, zero, jnp.zeros((0,))),
                     obs=jnp.stack([position, zero]),
                     reward=zero, done=zero)

    def step(self, state, action):
        position, steps, empty = state.pipeline_state
        position, steps = position + 0.4 * action[0], steps + 1.0
        return state.replace(  # keeps the wrappers' info
            pipeline_state=(position, steps, empty), obs=jnp.stack([position, steps]),
            reward=-jnp.abs(position), done=(jnp.abs(position) > 1.0).astype(jnp.float32))

    @property
    def observation_size(self):
        return 2

    @property
    def action_size(self):
        return 1

    @property
    def backend(self):
        return "jax"


SMALL = bro.preset("bro_fast", num_envs=3, episode_length=4, batch_size=16, warmup_steps=6,
                   replay_capacity=64, critic_width=32, actor_width=16, num_quantiles=8,
                   reset_steps=(20,))


@pytest.fixture(scope="module")
def learner():
    return bro.Bro(Line(), SMALL)


@pytest.fixture(scope="module")
def jitted(learner):
    """Compiled once for the module: init, STEPS training iterations, one env step."""
    return dict(init=jax.jit(learner.init),
                train=jax.jit(learner.train, static_argnums=1),
                env_step=jax.jit(learner.env_step))


def _trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                     strict=True))


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_presets_are_the_official_hyperparameters():
    config = bro.PRESETS["bro"]
    assert (config.critic_width, config.critic_depth, config.num_quantiles) == (512, 2, 100)
    assert (config.actor_width, config.actor_depth) == (256, 1)
    assert (config.batch_size, config.updates_per_step, config.warmup_steps) == (128, 10, 2500)
    assert (config.discount, config.tau, config.learning_rate, config.weight_decay) == (
        0.99, 0.005, 3e-4, 1e-4)
    assert (config.init_optimism, config.init_kl_weight, config.kl_target) == (1.0, 0.25, 0.05)
    assert (config.std_multiplier, config.pessimism, config.dual_learning_rate) == (
        0.75, 0.0, 3e-5)
    assert config.reset_steps[:6] == (15_001, 50_001, 250_001, 500_001, 750_001, 1_000_001)
    fast = bro.preset("bro_fast", num_envs=8)
    assert (fast.updates_per_step, fast.reset_steps, fast.num_envs) == (2, (15_001,), 8)
    with pytest.raises(ValueError):
        bro.preset("sac")


def test_reset_iterations():
    # The official reset before the update of env step 15001 is iteration 15000 with one env.
    assert bro.preset("bro").reset_iterations[:2] == (15_000, 50_000)
    # With N envs: the iteration whose N transitions include the 15001st.
    assert bro.preset("bro_fast", num_envs=256).reset_iterations == (58,)  # 58*256 < 15001
    assert dataclasses.replace(SMALL, reset_steps=(20, 21)).reset_iterations == (6,)


def test_useful_resets_drop_those_the_run_ends_too_soon_after():
    official = bro.OFFICIAL_RESET_STEPS
    # The quick run (16k): BRO-fast's reset at 15,001 would leave 999 transitions to recover.
    assert bro.useful_resets(official[:1], 16_000) == ((), (15_001,))
    assert bro.useful_resets(official[:1], 150_000) == ((15_001,), ())
    # 300k: 15k and 50k are kept (>= 15k and >= 35k follow them), 250k is not (50k of 200k).
    assert bro.useful_resets(official, 300_000) == (official[:2], official[2:])
    assert bro.useful_resets((), 10) == ((), ())


def test_truncation_bootstraps_termination_does_not(learner, jitted):
    state = jitted["init"](jax.random.PRNGKey(0))
    # env 0 terminates at step 3 (|1.2| > 1), env 1 is truncated at step 4 (episode_length),
    # env 2 terminates at step 4, when it is also truncated: termination wins.
    action = jnp.asarray([[1.0], [0.0], [-0.75]])
    env_state, key = state.env_state, jax.random.PRNGKey(1)
    transitions, infos = [], []
    for _ in range(4):
        key, key_reset = jax.random.split(key)
        env_state, transition, info = jitted["env_step"](env_state, action, key_reset)
        transitions.append(transition)
        infos.append(info)
    mask = np.stack([t.mask for t in transitions])
    np.testing.assert_array_equal(mask[:, 0], [1, 1, 0, 1])  # step 4: a new episode
    np.testing.assert_array_equal(mask[:, 1], [1, 1, 1, 1])
    np.testing.assert_array_equal(mask[:, 2], [1, 1, 1, 0])
    # The stored next observation is the true last one (position, steps), not a reset one.
    np.testing.assert_allclose(transitions[2].next_obs[0], [1.2, 3.0], atol=0.011)
    np.testing.assert_allclose(transitions[3].next_obs[1], [0.0, 4.0], atol=0.011)
    np.testing.assert_allclose(transitions[3].next_obs[2], [-1.2, 4.0], atol=0.011)
    # ... and the next step starts from a reset: env 0 at step 4 observed (pos ~0, 0 steps).
    np.testing.assert_allclose(transitions[3].obs[0], [0.0, 0.0], atol=0.011)
    np.testing.assert_allclose(env_state.obs[:, 1], [1.0, 0.0, 0.0])
    assert float(infos[2]["episodes_finished"]) == 1 and float(infos[3]["episodes_finished"]) == 2


def test_warmup_collects_random_actions_without_updates(learner, jitted):
    state = jitted["init"](jax.random.PRNGKey(0))
    state, metrics = jitted["train"](state, STEPS)  # iterations 0..3; the warm-up is 0, 1
    assert SMALL.warmup_iterations == 2
    np.testing.assert_array_equal(metrics["warming_up"], [1, 1, 0, 0])
    np.testing.assert_array_equal(metrics["critic_loss"][:2], [0, 0])  # no updates yet
    assert np.all(metrics["critic_loss"][2:] > 0)
    assert int(state.replay.size) == STEPS * SMALL.num_envs
    actions = np.asarray(state.replay.data.action[:6])
    assert np.all(np.abs(actions) <= 1) and actions.std() > 0.3


def test_reset_schedule_restores_the_initial_agent(learner, jitted):
    # reset_steps (20,) with 3 envs: iteration 6 collects transitions 19..21.
    state, _ = jitted["train"](jitted["init"](jax.random.PRNGKey(0)), STEPS)
    state, metrics = jitted["train"](state, STEPS)  # iterations 4..7
    np.testing.assert_array_equal(metrics["agent_reset"], [0, 0, 1, 0])
    fresh = learner.fresh_agent(state.initial_params)
    maybe_reset = jax.jit(learner.maybe_reset)
    for step, expected in ((5, False), (6, True), (7, False)):
        agent, reset = maybe_reset(state.agent, state.initial_params, jnp.int32(step))
        assert bool(reset) == expected
        _assert_trees_equal(agent, fresh if expected else state.agent)
    assert not _trees_equal(state.agent, fresh)


def test_update_changes_every_network_and_dual(learner, jitted):
    state = jitted["init"](jax.random.PRNGKey(0))
    new, metrics = jitted["train"](state, STEPS)  # two iterations of updates after the warm-up
    before, after = state.agent, new.agent
    for name in ("actor", "optimistic_actor", "critic", "temperature", "optimism", "kl_weight"):
        changed = [not np.array_equal(x, y) for x, y in zip(
            jax.tree.leaves(getattr(before, name).params),
            jax.tree.leaves(getattr(after, name).params))]
        assert any(changed), name
    for name in ("critic_loss", "actor_loss", "optimistic_actor_loss", "entropy", "kl",
                 "temperature", "optimism", "kl_weight", "critic_grad_norm", "q_mean"):
        assert np.all(np.isfinite(metrics[name][2:])), name


@pytest.fixture(scope="module")
def seeds(learner):
    """Two seeds trained side by side under `jax.vmap`: (keys, states, metrics)."""
    def run(key):
        return learner.train(learner.init(key), STEPS)

    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    return (keys,) + jax.jit(jax.vmap(run))(keys)


def test_vmapped_seeds_match_single_seed_runs(jitted, seeds):
    keys, batched_state, batched_metrics = seeds
    singles = [jitted["train"](jitted["init"](k), STEPS) for k in keys]
    for seed, (state, metrics) in enumerate(singles):
        for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(batched_state), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y[seed]), rtol=VMAP_RTOL,
                                       atol=VMAP_ATOL)
        np.testing.assert_allclose(metrics["critic_loss"], batched_metrics["critic_loss"][seed],
                                   rtol=VMAP_RTOL)
    # The seeds are independent: different parameters, different data.
    a, b = (s.agent.actor.params for s, _ in singles)
    assert not np.allclose(jax.tree.leaves(a)[0], jax.tree.leaves(b)[0])


def test_checkpoint_restore_continues_bit_identically(learner, jitted, tmp_path):
    state, _ = jitted["train"](jitted["init"](jax.random.PRNGKey(5)), STEPS)
    checkpoint.save(tmp_path / "run", state)
    continued, metrics = jitted["train"](state, STEPS)

    restored = checkpoint.restore(tmp_path / "run", learner)
    _assert_trees_equal(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    resumed, resumed_metrics = jitted["train"](restored, STEPS)
    _assert_trees_equal(resumed, continued)
    _assert_trees_equal(resumed_metrics, metrics)


def test_checkpoint_of_vmapped_seeds(learner, seeds, tmp_path):
    _, states, _ = seeds
    checkpoint.save(tmp_path / "seeds", states)
    _assert_trees_equal(checkpoint.restore(tmp_path / "seeds", learner, num_seeds=2), states)


def test_observation_normalization_counts_every_acted_observation():
    learner = bro.Bro(Line(), dataclasses.replace(SMALL, normalize_observations=True))
    train = jax.jit(learner.train, static_argnums=1)
    state, metrics = train(learner.init(jax.random.PRNGKey(0)), 2 * STEPS)  # resets at 6
    assert metrics["agent_reset"].sum() == 1  # the statistics survived the agent's reset
    # Every observation the envs acted on (one-step transitions: the replay's obs) is counted.
    seen = np.asarray(state.replay.data.obs[:int(state.replay.size)])
    stats = state.agent.obs_stats
    assert len(seen) == 2 * STEPS * SMALL.num_envs == int(stats.count.lo)
    np.testing.assert_allclose(stats.mean, seen.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, seen.std(0), rtol=1e-4)
    # The actor sees the standardized observation.
    obs = jnp.asarray([[0.3, 2.0], [-5.0, 0.0]])
    standardized = np.clip((obs - seen.mean(0)) / seen.std(0), -bro.OBS_CLIP, bro.OBS_CLIP)
    mean, _ = learner.actor_net.apply(state.agent.actor.params, jnp.asarray(standardized))
    np.testing.assert_allclose(learner.act(state.agent, obs), np.tanh(mean), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(learner.act(state.agent, obs), learner.act(
        state.agent.replace(obs_stats=learner.init_obs_stats()), obs))
