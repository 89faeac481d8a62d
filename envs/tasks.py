"""Tasks: reward and termination as pure functions of the physics state.

A task gets the loaded `Embodiment` (static indices) and the `PhysicsState` before and after a
control step, and returns the reward plus named terms for logging. `walk` is LocoMujoco 0.4.1's
evaluation reward, the environment reward of the NIL paper's locomotion tables:

    humanoids (H1, Talos, G1):  r = exp(-(v_x - 1.25)^2)                 (TargetVelocityReward)
    quadruped (A1):             r = exp(-5 * ||v_xy - (0.5, 0)||)         (VelocityVectorReward)

with v the world-frame velocity of the root (the qvel of the root's x/y slide joints). LocoMujoco
reads the velocity of the state before the action; we read it after the 100 Hz step, as brax
environments do. Episodes end when a fall limit of LocoMujoco's `_has_fallen` is violated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nil_jax.envs.backends import PhysicsState
from nil_jax.envs.embodiments import Embodiment
from nil_jax.envs.skill_tasks import SKILL_TASKS


def fallen(embodiment: Embodiment, qpos: jax.Array) -> jax.Array:
    """True when any fall-limited root/back joint is outside its range (LocoMujoco)."""
    q = qpos[..., embodiment.fall_qpos]
    return jnp.any((q < embodiment.fall_low) | (q > embodiment.fall_high), axis=-1)


def root_velocity_xy(embodiment: Embodiment, state: PhysicsState) -> jax.Array:
    return state.qvel[..., embodiment.root_vel_xy_qvel]


def reward_walk_humanoid(velocity_xy: jax.Array, target_speed: float) -> jax.Array:
    return jnp.exp(-jnp.square(velocity_xy[..., 0] - target_speed))


def reward_walk_quadruped(velocity_xy: jax.Array, target_speed: float) -> jax.Array:
    target = jnp.array([target_speed, 0.0])
    return jnp.exp(-5.0 * jnp.linalg.norm(velocity_xy - target, axis=-1))


@dataclasses.dataclass(frozen=True)
class WalkTask:
    """Walk forward (+x) at the embodiment's target speed; ends on a fall."""

    name = "walk"

    def metric_names(self) -> tuple[str, ...]:
        return ("reward/walk", "velocity_x")

    def reward(self, embodiment: Embodiment, previous: PhysicsState, state: PhysicsState,
               action: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        del previous, action
        velocity = root_velocity_xy(embodiment, state)
        if embodiment.spec.kind == "quadruped":
            reward = reward_walk_quadruped(velocity, embodiment.spec.walk_speed)
        else:
            reward = reward_walk_humanoid(velocity, embodiment.spec.walk_speed)
        return reward, {"reward/walk": reward, "velocity_x": velocity[..., 0]}

    def terminated(self, embodiment: Embodiment, state: PhysicsState) -> jax.Array:
        return fallen(embodiment, state.qpos)


TASKS = {"walk": WalkTask, **SKILL_TASKS}
