"""BRO learns: brax's inverted pendulum (pure JAX physics, brax's default `generalized` pipeline)
goes from a random policy's few steps of balance to balancing for the whole 1,000-step episode,
for every one of several seeds trained at once (`jax.vmap` over `Bro.init` / `Bro.train`).

The algorithm is BRO-fast's (official temperature, tau, duals, learning rates, batch 128); only
sizes are cut for a 2-core CPU: narrower networks, 25 quantiles, 4 envs, a 400-transition
warm-up, 4 updates per iteration of 4 env steps (one update per transition: BRO-fast itself does
2 per transition with one env), and no reset inside the run (see CONFIG). Both policies are
evaluated the same way (`envs.evaluation.evaluate`, the same reset keys, EVAL_LENGTH steps,
return = steps balanced).

Why this budget (measured with these settings, 4-8 seeds): the test's earlier 1,400 updates at
tau 0.005 left the critic about 7 Bellman backups deep (one per ~1/tau updates: mean Q 8, where
a policy that balances is worth ~100 at gamma 0.99) and the temperature near 0.7 (Adam moves
log alpha by at most its learning rate per update), so every seed balanced 50-150 steps and
then drifted off the rail, whichever of tau 0.02-0.05, initial temperature 0.1 or 2-8 updates
per iteration was tried within 5,600 updates. With one update per transition every seed
balanced the full 1,000 steps after 12,000 updates (3,000 iterations); the test trains 4,000.
"""

import time

import brax.envs
import jax
import numpy as np

from nil_jax.agents import bro
from nil_jax.envs import evaluation

BACKEND = "generalized"  # compiles and runs faster on this CPU than "mjx" for this model
EVAL_LENGTH = 1000  # the task's own episode length
SEEDS = 4
CHUNK, CHUNKS = 2000, 2  # training iterations between evaluations; 4,000 in all
CONFIG = bro.preset("bro_fast", num_envs=4, updates_per_step=4, episode_length=EVAL_LENGTH,
                    warmup_steps=400, critic_width=64, actor_width=64, num_quantiles=25,
                    replay_capacity=20_000, reset_steps=())
# No reset: BRO-fast's one reset, at 15,001 transitions, would fall inside these 16,000 and the
# last evaluation would score a freshly reset agent (measured: it did, returns 25-69).
SOLVED = 800.0  # of EVAL_LENGTH steps, for every seed at the end; a random policy balances ~5


def test_bro_learns_inverted_pendulum_for_every_seed():
    env = brax.envs.get_environment("inverted_pendulum", backend=BACKEND)
    learner = bro.Bro(env, CONFIG)
    key_init, key_eval = jax.random.split(jax.random.PRNGKey(0))

    def returns(policy):
        return evaluation.evaluate(env, policy, key_eval, num_episodes=5,
                                   episode_length=EVAL_LENGTH)["return"]

    evaluate = jax.jit(jax.vmap(lambda agent: returns(learner.policy(agent))))
    start = time.perf_counter()
    state = jax.jit(jax.vmap(learner.init))(jax.random.split(key_init, SEEDS))
    train = jax.jit(jax.vmap(learner.train, (0, None)), static_argnums=1, donate_argnums=0)
    curve = []
    for _ in range(CHUNKS):
        state, metrics = train(state, CHUNK)
        curve.append(np.asarray(evaluate(state.agent)).mean(-1))  # (SEEDS,)
    seconds = time.perf_counter() - start
    random_mean = float(np.mean(jax.jit(
        lambda: returns(evaluation.random_policy(env.action_size)))()))
    print(f"\ninverted_pendulum ({BACKEND}), {SEEDS} seeds: {CHUNK * CHUNKS} iterations x "
          f"{CONFIG.num_envs} envs ({CONFIG.warmup_steps} warm-up transitions), "
          f"{(CHUNK * CHUNKS - CONFIG.warmup_iterations) * CONFIG.updates_per_step} updates, "
          f"{seconds:.0f} s with compiles. Mean return of 5 deterministic episodes per seed "
          f"every {CHUNK} iterations: {[np.round(r, 1).tolist() for r in curve]}; random "
          f"policy {random_mean:.1f}; final temperature "
          f"{np.round(np.asarray(metrics['temperature'][:, -1]), 3).tolist()}")
    assert random_mean < 0.05 * SOLVED
    assert np.all(curve[-1] >= SOLVED)
