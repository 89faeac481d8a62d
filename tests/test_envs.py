"""Environments: reset/step under jit + vmap, brax wrappers, rewards, falls, non-finite physics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.wrappers import training

from nil_jax import envs
from nil_jax.envs import evaluation, tasks

NAMES = sorted(envs.EMBODIMENTS)


@pytest.mark.parametrize("name", NAMES)
def test_reset_and_step_under_jit_and_vmap(name):
    env = envs.make(name, backend="cpu")
    emb = env.embodiment
    assert env.observation_size == emb.nq - 2 + emb.nv
    assert env.action_size == emb.nu
    batch = 6
    state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))
    assert state.obs.shape == (batch, env.observation_size)
    # Different keys give different (noisy) limb poses, the same root pose.
    qpos = np.asarray(state.pipeline_state.qpos)
    assert np.ptp(qpos[:, 6:], axis=0).max() > 0
    np.testing.assert_allclose(qpos[:, :6], np.broadcast_to(emb.init_qpos[:6], (batch, 6)),
                               atol=1e-6)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (batch, env.action_size), minval=-1)
    step = jax.jit(jax.vmap(env.step))
    next_state = step(state, actions)
    assert next_state.obs.shape == (batch, env.observation_size)
    np.testing.assert_allclose(next_state.pipeline_state.time, 0.01, atol=1e-6)
    assert np.all(np.asarray(next_state.done) == 0)
    assert np.all((np.asarray(next_state.reward) > 0) & (np.asarray(next_state.reward) <= 1))
    # The same inputs give the same outputs (no hidden state in the backend).
    again = step(state, actions)
    np.testing.assert_array_equal(again.obs, next_state.obs)


@pytest.mark.parametrize("backend", envs.BACKENDS)
def test_brax_training_wrappers_autoreset(backend):
    env = envs.make("h1", backend=backend)
    wrapped = training.wrap(env, episode_length=30)
    state = jax.jit(wrapped.reset)(jax.random.split(jax.random.PRNGKey(0), 4))

    @jax.jit
    def run(state, key):
        def body(state, key):
            action = jax.random.uniform(key, (4, env.action_size), minval=-1.0, maxval=1.0)
            state = wrapped.step(state, action)
            return state, (state.done, state.info["truncation"], state.metrics["fallen"])
        return jax.lax.scan(body, state, jax.random.split(key, 60))

    state, (done, truncation, fallen) = run(state, jax.random.PRNGKey(1))
    done, truncation, fallen = map(np.asarray, (done, truncation, fallen))
    assert done.sum() >= 4  # every env ended at least once: fell or hit the 30-step limit
    np.testing.assert_array_equal(done, np.maximum(fallen, truncation))
    assert np.all(np.isfinite(np.asarray(state.obs)))


def _hand_built(env, qvel_root=(0.0, 0.0), qpos_updates=()):
    state = env.reset(jax.random.PRNGKey(0))
    emb = env.embodiment
    physics = state.pipeline_state
    qvel = physics.qvel.at[emb.root_vel_xy_qvel].set(jnp.array(qvel_root))
    qpos = physics.qpos
    for index, value in qpos_updates:
        qpos = qpos.at[index].set(value)
    return physics.replace(qpos=qpos, qvel=qvel)


@pytest.mark.parametrize("name", ["h1", "talos", "g1"])
def test_walk_reward_humanoid_on_hand_built_state(name):
    env = envs.make(name, backend="cpu")
    task = tasks.WalkTask()
    for vx, expected in [(1.25, 1.0), (0.25, np.exp(-1.0)), (3.25, np.exp(-4.0))]:
        physics = _hand_built(env, (vx, 0.7))
        reward, terms = task.reward(env.embodiment, physics, physics, jnp.zeros(env.action_size))
        np.testing.assert_allclose(reward, expected, rtol=1e-6)
        np.testing.assert_allclose(terms["velocity_x"], vx, rtol=1e-6)


def test_walk_reward_quadruped_on_hand_built_state():
    env = envs.make("a1", backend="cpu")
    task = tasks.WalkTask()
    for v, expected in [((0.5, 0.0), 1.0), ((0.5, 0.3), np.exp(-1.5)), ((-0.1, 0.8), np.exp(-5.0))]:
        physics = _hand_built(env, v)
        reward, _ = task.reward(env.embodiment, physics, physics, jnp.zeros(env.action_size))
        np.testing.assert_allclose(reward, expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_fall_limits_end_the_episode(name):
    env = envs.make(name, backend="cpu")
    emb = env.embodiment
    upright = _hand_built(env)
    assert not tasks.fallen(emb, upright.qpos)
    for index, low, high in zip(emb.fall_qpos, emb.fall_low, emb.fall_high):
        below = _hand_built(env, qpos_updates=[(index, low - 0.01)])
        assert tasks.fallen(emb, below.qpos)
        if np.isfinite(high):
            above = _hand_built(env, qpos_updates=[(index, high + 0.01)])
            assert tasks.fallen(emb, above.qpos)
        inside = _hand_built(env, qpos_updates=[(index, low + 0.01)])
        assert not tasks.fallen(emb, inside.qpos)


def test_lying_robot_gets_done_from_step():
    env = envs.make("h1", backend="cpu")
    state = env.reset(jax.random.PRNGKey(0))
    emb = env.embodiment
    tilt = int(emb.fall_qpos[1])  # pelvis_tilt
    physics = state.pipeline_state.replace(qpos=state.pipeline_state.qpos.at[tilt].set(1.5))
    next_state = jax.jit(env.step)(state.replace(pipeline_state=physics),
                                   jnp.zeros(env.action_size))
    assert next_state.done == 1 and next_state.metrics["fallen"] == 1
    assert next_state.metrics["nonfinite"] == 0


@pytest.mark.parametrize("backend", envs.BACKENDS)
def test_nonfinite_physics_ends_episode_and_is_not_propagated(backend):
    env = envs.make("h1", backend=backend)
    state = env.reset(jax.random.PRNGKey(0))
    # A finite but absurd spin of the pelvis makes the next physics step diverge.
    spun = state.pipeline_state.replace(qvel=state.pipeline_state.qvel.at[3].set(1e6))
    next_state = jax.jit(env.step)(state.replace(pipeline_state=spun), jnp.zeros(env.action_size))
    assert next_state.metrics["nonfinite"] == 1
    assert next_state.done == 1 and next_state.reward == 0
    assert next_state.metrics["fallen"] == 0
    assert np.all(np.isfinite(np.asarray(next_state.obs)))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in next_state.metrics.values())
    # The diverged step is undone: the state is the one before the step.
    np.testing.assert_array_equal(next_state.pipeline_state.qpos, spun.qpos)


def test_evaluation_protocol_sums_until_the_fall():
    env = envs.make("h1", backend="cpu")
    results = jax.jit(lambda key: evaluation.evaluate(
        env, evaluation.zero_policy(env.action_size), key, num_episodes=3, episode_length=200,
    ))(jax.random.PRNGKey(0))
    steps = np.asarray(results["steps"])
    assert np.all((steps > 0) & (steps < 200)) and np.all(np.asarray(results["fell"]) == 1)
    np.testing.assert_allclose(results["reward_per_step"], results["return"] / steps)
    # Replay episode 0 by hand: the return is the sum of rewards up to the fall.
    key_reset, _ = jax.random.split(jax.random.PRNGKey(0))
    state = env.reset(jax.random.split(key_reset, 3)[0])
    step = jax.jit(env.step)
    total, n = 0.0, 0
    while True:
        state = step(state, jnp.zeros(env.action_size))
        total += float(state.reward)
        n += 1
        if state.done:
            break
    assert n == steps[0]
    np.testing.assert_allclose(results["return"][0], total, rtol=1e-5)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="Unknown task"):
        envs.make("h1", task="dance")
    with pytest.raises(ValueError, match="Unknown physics backend"):
        envs.make("h1", backend="bullet")


@pytest.mark.parametrize("name", NAMES)
def test_pd_actuation_commands_clipped_pd_torques(name):
    env = envs.make(name, backend="cpu", actuation="pd", pd_action_scale=0.5)
    pd, body = env.pd, env.embodiment
    state = env.reset(jax.random.PRNGKey(0))
    physics = state.pipeline_state
    rng = np.random.default_rng(0)
    qvel = physics.qvel.at[pd.qvel].set(rng.uniform(-2, 2, len(pd.qvel)).astype(np.float32))
    physics = physics.replace(qvel=qvel)
    action = rng.uniform(-1, 1, env.action_size).astype(np.float32)
    ctrl = np.asarray(env.action_to_ctrl(jnp.asarray(action), physics))
    target = np.clip(pd.home + 0.5 * action, pd.low, pd.high)
    torque = pd.kp * (target - np.asarray(physics.qpos)[pd.qpos]) - pd.kd * np.asarray(qvel)[pd.qvel]
    expected = np.clip(torque / pd.gear, body.ctrl_low, body.ctrl_high)
    np.testing.assert_allclose(ctrl, expected, rtol=1e-5, atol=1e-6)
    # Half the full-torque error asks for half the motor; the clip binds beyond the full error.
    assert np.all(pd.kp * 0.5 == pytest.approx(pd.gear * np.minimum(-body.ctrl_low,
                                                                     body.ctrl_high)))


def test_pd_zero_action_holds_h1_up_longer_than_zero_torque():
    """Zero torque lets H1 collapse in about 0.3 s; zero PD action holds the home pose (the
    straight-legged stance still tips over, after about a second)."""
    steps = {}
    for actuation in ("torque", "pd"):
        env = envs.make("h1", backend="cpu", actuation=actuation)
        results = evaluation.evaluate(env, evaluation.zero_policy(env.action_size),
                                      jax.random.PRNGKey(0), 2, 150)
        steps[actuation] = float(np.mean(results["steps"]))
    assert steps["torque"] < 50 and steps["pd"] > 80, steps
