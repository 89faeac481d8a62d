"""BRO learns: brax's inverted pendulum (pure JAX physics, brax's default `generalized` pipeline)
goes from a random policy's few steps of balance to balancing for the whole 1,000-step episode,
for every one of several seeds trained at once (`jax.vmap` over `Bro.init` / `Bro.train`).

The losses, duals, learning rates and batch are BRO-fast's; sizes are cut for a 2-core CPU:
narrower networks, 25 quantiles, 4 envs, a 400-transition warm-up, 4 updates per iteration of 4
env steps (one update per transition: BRO-fast itself does 2 per transition with one env), and
no reset inside the run (see CONFIG). Two settings differ from the official ones, for the cause
below: 3-step returns (`n_step=3`, as FastTD3 and FastSAC use) and target critics updated at
tau 0.02 (official 0.005; FastSAC uses 0.1). Both policies are evaluated the same way
(`envs.evaluation.evaluate`, the same reset keys, EVAL_LENGTH steps, return = steps balanced).

Why (measured with these sizes, 8 seeds at a time, evaluated every 1,000 iterations): at the
official tau 0.005 with one-step targets the critic is still climbing after 4,000 iterations
(mean Q 47, where balancing is worth ~100 at gamma 0.99): late seeds sat at 60-300 steps for
2,000-3,000 iterations, and seeds that had balanced fell back to 360-670 while it climbed (one
of 8 at each of iterations 4,000, 5,000 and 8,000); this test at 4,000 iterations failed on CI
(547 for one seed of four). With 3-step targets at tau 0.02, in two runs of 8 seeds (keys 0 and
1): 13 of 16 seeds balanced 1,000 steps by 2,000 iterations and all 32 seed-evaluations from
6,000 to 8,000 iterations balanced 1,000 steps; but this 4-seed test, at a 20,000-row replay,
failed again (seed 0: 1,000 at 4,000 and 6,000 iterations, 577 at 8,000). A replay that small
holds only the last 5,000 iterations: once a policy balances, the early failures (the cart
running into the rail's end) are overwritten, and the critic forgets why drifting is bad. The
official replay keeps every transition, so the test's holds all 32,000 (it was 40,000 rows when
measured; unwrapped, sampling does not depend on the capacity): the same seeds are
then identical up to 5,000 iterations and seed 0 holds 1,000 at 8,000; 8 seeds (key 0) balanced
1,000 steps at every evaluation from 3,000 iterations to 8,000 (48 of 48). The test trains
8,000.
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
NUM_ENVS = 4
CHUNK, CHUNKS = 2000, 4  # training iterations between evaluations; 8,000 in all
# The replay holds the whole run (32,000 transitions), as the official one does: a smaller one
# overwrites the early failures and a balancing policy can unlearn (see the docstring).
CONFIG = bro.preset("bro_fast", num_envs=NUM_ENVS, updates_per_step=4,
                    episode_length=EVAL_LENGTH, warmup_steps=400, critic_width=64,
                    actor_width=64, num_quantiles=25,
                    replay_capacity=CHUNK * CHUNKS * NUM_ENVS, reset_steps=(),
                    n_step=3, tau=0.02)
# No reset: BRO-fast's one reset, at 15,001 transitions, would fall inside these 32,000 and the
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
