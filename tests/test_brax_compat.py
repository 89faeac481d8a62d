"""brax's own trainers run on our environments unchanged (wrapping, pmap, jit, autoreset)."""

import functools

import jax
import numpy as np
import pytest
from brax.training.agents.ppo import train as ppo
from brax.training.agents.sac import train as sac

from nil_jax import envs


@pytest.mark.parametrize("trainer", ["ppo", "sac"])
def test_brax_trainers_run_on_the_cpu_backend(trainer):
    env = envs.make("a1", backend="cpu")
    metrics_seen = []
    if trainer == "ppo":
        train = functools.partial(
            ppo.train, num_timesteps=640, episode_length=20, num_envs=8, batch_size=8,
            num_minibatches=2, unroll_length=5, num_updates_per_batch=2, num_evals=2,
            num_eval_envs=4, seed=0,
        )
    else:
        train = functools.partial(
            sac.train, num_timesteps=400, episode_length=20, num_envs=4, batch_size=32,
            min_replay_size=64, max_replay_size=1000, grad_updates_per_step=1, num_evals=2,
            num_eval_envs=4, seed=0,
        )
    make_policy, params, metrics = train(
        environment=env, progress_fn=lambda step, m: metrics_seen.append((step, m)))
    assert len(metrics_seen) == 2
    final = metrics_seen[-1][1]
    assert np.isfinite(final["eval/episode_reward"])
    assert 0 < final["eval/episode_reward"] <= 20  # at most 1 per step over 20 steps
    policy = jax.jit(make_policy(params, deterministic=True))
    obs = env.reset(jax.random.PRNGKey(0)).obs
    action, _ = policy(obs, jax.random.PRNGKey(1))
    assert action.shape == (env.action_size,)
