"""A brax-compatible environment: one robot, one task, one physics backend.

    reset(rng) -> State          home pose + uniform joint noise, zero velocity
    step(state, action) -> State
        action in [-1, 1]^nu --affine--> ctrl in the actuators' ctrlrange (normalized torques)
        --backend.step (5 x 2 ms)--> PhysicsState --task--> reward, terminated
        non-finite physics: the step is undone, reward 0, done 1, metrics["nonfinite"] 1

Observation (size nq - 2 + nv), LocoMujoco's layout without the horizontal root position:
    qpos[2:]  root height offset (m), root tilt/list/rotation hinges (rad), joint angles (rad)
    qvel      root linear velocity (world frame, m/s), root hinge rates, joint velocities

`State.pipeline_state` is the backend's `PhysicsState`, so brax's `VmapWrapper`,
`EpisodeWrapper`, `AutoResetWrapper` and its PPO/SAC trainers work unchanged.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State

from nil_jax.envs import backends
from nil_jax.envs.embodiments import Embodiment


class RobotEnv(Env):
    def __init__(self, embodiment: Embodiment, task, backend: Optional[str] = None,
                 reset_noise_scale: float = 0.01):
        self.embodiment = embodiment
        self.task = task
        self.physics = backends.make_backend(backend or backends.default_backend(),
                                             embodiment.mj_model, embodiment.n_substeps)
        self.reset_noise_scale = reset_noise_scale
        # Reset noise on the limbs only: the root keeps the home height and orientation.
        nq = embodiment.nq
        self._noisy_qpos = np.setdiff1d(np.arange(nq), embodiment.root_qpos)
        self._obs_qpos = np.setdiff1d(np.arange(nq), embodiment.root_xy_qpos)

    @property
    def observation_size(self) -> int:
        return len(self._obs_qpos) + self.embodiment.nv

    @property
    def action_size(self) -> int:
        return self.embodiment.nu

    @property
    def backend(self) -> str:
        return self.physics.name

    def action_to_ctrl(self, action: jax.Array) -> jax.Array:
        low, high = self.embodiment.ctrl_low, self.embodiment.ctrl_high
        return low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (high - low)

    def observe(self, physics: backends.PhysicsState) -> jax.Array:
        return jnp.concatenate([physics.qpos[self._obs_qpos], physics.qvel])

    def reset(self, rng: jax.Array) -> State:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
        qpos = jnp.asarray(self.embodiment.init_qpos, dtype)
        noise = jax.random.uniform(rng, (len(self._noisy_qpos),), minval=-1.0, maxval=1.0)
        qpos = qpos.at[self._noisy_qpos].add(self.reset_noise_scale * noise)
        physics = self.physics.init(qpos, jnp.zeros(self.embodiment.nv, dtype))
        zero = jnp.zeros((), dtype)
        metrics = {name: zero for name in self.task.metric_names()}
        metrics.update(nonfinite=zero, fallen=zero)
        return State(pipeline_state=physics, obs=self.observe(physics), reward=zero,
                     done=zero, metrics=metrics, info={})

    def step(self, state: State, action: jax.Array) -> State:
        previous = state.pipeline_state
        stepped = self.physics.step(previous, self.action_to_ctrl(action))
        finite = stepped.is_finite()
        physics = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, previous)
        reward, terms = self.task.reward(self.embodiment, previous, physics, action)
        fallen = self.task.terminated(self.embodiment, physics)
        reward = jnp.where(finite, reward, 0.0)
        # Keys that wrappers or trainers added to the metrics are kept (brax's PPO adds some).
        metrics = dict(state.metrics)
        metrics.update({name: jnp.where(finite, value, 0.0) for name, value in terms.items()})
        metrics.update(nonfinite=(~finite).astype(reward.dtype),
                       fallen=(fallen & finite).astype(reward.dtype))
        done = (fallen | ~finite).astype(reward.dtype)
        return state.replace(pipeline_state=physics, obs=self.observe(physics), reward=reward,
                             done=done, metrics=metrics)
