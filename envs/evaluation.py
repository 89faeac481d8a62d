"""The evaluation protocol of the locomotion tables (LocoMujoco's, as used by the NIL paper).

    num_episodes environments in parallel, each from a reset with its own key,
    episode_length = 1000 control steps (10 s at 100 Hz), deterministic policy
    an episode ends at the first fall (or non-finite physics); later steps add nothing
    return          = sum of the task reward over the steps taken      (paper: Expert 400 / A1 300)
    reward_per_step = return / steps taken                             (independent of falls)
    fall_rate       = fraction of episodes that ended before episode_length
Skill tasks (envs/skill_tasks.py) also give, from their per-step "success" predicate:
    success_rate    = fraction of episodes where it held for HOLD_STEPS consecutive steps
    normalized_task_reward = return / episode_length (the task reward is in [0, 1] per step)

`evaluate` is one jitted `lax.scan` over time with a vmapped batch of episodes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from brax.envs.base import Env

from nil_jax.envs.skill_tasks import HOLD_STEPS

Policy = Callable[[jax.Array, jax.Array], jax.Array]  # (obs, key) -> action

EPISODE_LENGTH = 1000


def zero_policy(action_size: int) -> Policy:
    return lambda obs, key: jnp.zeros(action_size)


def random_policy(action_size: int) -> Policy:
    return lambda obs, key: jax.random.uniform(key, (action_size,), minval=-1.0, maxval=1.0)


def evaluate(env: Env, policy: Policy, key: jax.Array, num_episodes: int = 5,
             episode_length: int = EPISODE_LENGTH) -> dict[str, jax.Array]:
    """Per-episode return, steps, reward per step and fall flag (arrays of num_episodes)."""
    key_reset, key_act = jax.random.split(key)

    def episode(key_reset, key_act):
        def step(carry, key):
            state, alive, total, steps, run, longest = carry
            next_state = env.step(state, policy(state.obs, key))
            total = total + alive * next_state.reward
            steps = steps + alive
            if "success" in next_state.metrics:  # a skill: the longest run of successes
                run = jnp.where(alive * next_state.metrics["success"] > 0, run + 1, 0)
                longest = jnp.maximum(longest, run)
            alive = alive * (1.0 - next_state.done)
            return (next_state, alive, total, steps, run, longest), None

        state = env.reset(key_reset)
        zero = jnp.zeros(())
        init = (state, jnp.ones(()), zero, zero, zero, zero)
        keys = jax.random.split(key_act, episode_length)
        (state, alive, total, steps, _, longest), _ = jax.lax.scan(step, init, keys)
        out = {"return": total, "steps": steps, "reward_per_step": total / steps,
               "fell": 1.0 - alive}
        if "success" in state.metrics:
            out.update(success=(longest >= HOLD_STEPS).astype(total.dtype),
                       longest_success_steps=longest,
                       normalized_task_reward=total / episode_length)
        return out

    return jax.vmap(episode)(jax.random.split(key_reset, num_episodes),
                             jax.random.split(key_act, num_episodes))


def summarize(results: dict[str, jax.Array]) -> dict[str, float]:
    """Means over episodes, as plain floats for JSON."""
    summary = {
        "return_mean": float(jnp.mean(results["return"])),
        "return_std": float(jnp.std(results["return"])),
        "reward_per_step_mean": float(jnp.mean(results["reward_per_step"])),
        "episode_steps_mean": float(jnp.mean(results["steps"])),
        "fall_rate": float(jnp.mean(results["fell"])),
    }
    if "success" in results:
        summary.update(success_rate=float(jnp.mean(results["success"])),
                       normalized_task_reward_mean=float(
                           jnp.mean(results["normalized_task_reward"])))
    return summary
