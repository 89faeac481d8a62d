"""A brax-compatible environment: one robot, one task, one physics backend.

    reset(rng) -> State          home pose + uniform joint noise, zero velocity
    step(state, action) -> State
        action in [-1, 1]^nu --actuation--> ctrl in the actuators' ctrlrange (normalized torques)
        --backend.step (5 x 2 ms)--> PhysicsState --task--> reward, terminated

Actuation (how an action becomes torques):
    "torque"  the model's own: ctrl = the affine map of the action onto ctrlrange (LocoMujoco's,
              the evaluation protocol's); zero action = zero torque, so the robot collapses
    "pd"      joint position targets: target = home pose + action x `pd_action_scale` (rad),
              clipped to the joint's range; torque = kp (target - q) - kd q', clipped to the
              motor's limit, held over the control step (100 Hz). kp = motor limit /
              `pd_full_torque_error` (the error that asks for the whole motor), kd =
              `pd_damping_ratio` x kp (s). Zero action holds the home pose. The gains scale with
              each motor's strength, so one setting serves every robot.
        non-finite physics: the step is undone, reward 0, done 1, metrics["nonfinite"] 1

Observation (size nq - 2 + nv), LocoMujoco's layout without the horizontal root position:
    qpos[2:]  root height offset (m), root tilt/list/rotation hinges (rad), joint angles (rad),
              then a skill scene's free bodies (height, orientation) and their horizontal
              position relative to the root
    qvel      root linear velocity (world frame, m/s), root hinge rates, joint velocities (and
              the scene's free bodies')

`State.pipeline_state` is the backend's `PhysicsState`, so brax's `VmapWrapper`,
`EpisodeWrapper`, `AutoResetWrapper` and its PPO/SAC trainers work unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax.envs.base import Env, State

from nil_jax.envs import backends
from nil_jax.envs.embodiments import Embodiment


ACTUATIONS = ("torque", "pd")


@dataclasses.dataclass(frozen=True)
class PdGains:
    """Per actuator (static numpy): the joint it drives, its gains and torque limit."""

    qpos: np.ndarray  # (nu,) qpos address of each actuator's joint
    qvel: np.ndarray  # (nu,) dof address
    home: np.ndarray  # (nu,) home-pose angle (rad)
    low: np.ndarray  # (nu,) joint range (rad)
    high: np.ndarray
    kp: np.ndarray  # (nu,) N m / rad
    kd: np.ndarray  # (nu,) N m s / rad
    gear: np.ndarray  # (nu,) torque per unit of ctrl


def pd_gains(embodiment: Embodiment, full_torque_error: float, damping_ratio: float) -> PdGains:
    model = embodiment.mj_model
    joints = model.actuator_trnid[:, 0]
    if np.any(model.actuator_trntype != int(mujoco.mjtTrn.mjTRN_JOINT)) or np.any(
            model.jnt_type[joints] != int(mujoco.mjtJoint.mjJNT_HINGE)):
        raise ValueError(f"{embodiment.name}: PD actuation needs every actuator on a hinge joint.")
    plain_motor = (model.actuator_gainprm[:, 0] == 1) & np.all(model.actuator_biasprm == 0, 1)
    if not (np.all(model.jnt_limited[joints]) and np.all(plain_motor)):
        raise ValueError(f"{embodiment.name}: PD actuation needs motors (gain 1, no bias) on "
                         "joints with a range; use actuation='torque' for this model.")
    gear = model.actuator_gear[:, 0]
    limit = gear * np.minimum(np.abs(embodiment.ctrl_low), np.abs(embodiment.ctrl_high))
    kp = limit / full_torque_error
    qpos = model.jnt_qposadr[joints]
    return PdGains(qpos=qpos, qvel=model.jnt_dofadr[joints], home=embodiment.init_qpos[qpos],
                   low=model.jnt_range[joints, 0], high=model.jnt_range[joints, 1], kp=kp,
                   kd=damping_ratio * kp, gear=gear)


class RobotEnv(Env):
    def __init__(self, embodiment: Embodiment, task, backend: Optional[str] = None,
                 reset_noise_scale: float = 0.01, actuation: str = "torque",
                 pd_action_scale: float = 1.0, pd_full_torque_error: float = 0.5,
                 pd_damping_ratio: float = 0.02):
        if actuation not in ACTUATIONS:
            raise ValueError(f"Unknown actuation {actuation!r}; choose one of {ACTUATIONS}.")
        self.embodiment = embodiment
        self.task = task
        self.actuation = actuation
        self.pd_action_scale = pd_action_scale
        self.pd = (pd_gains(embodiment, pd_full_torque_error, pd_damping_ratio)
                   if actuation == "pd" else None)
        self.physics = backends.make_backend(backend or backends.default_backend(),
                                             embodiment.mj_model, embodiment.n_substeps)
        self.reset_noise_scale = reset_noise_scale
        # Reset noise on the limbs only: the root keeps the home height and orientation, and a
        # skill scene's free bodies (after the robot's qpos) start where they are.
        nq = embodiment.nq
        self._noisy_qpos = np.setdiff1d(np.arange(embodiment.robot_nq), embodiment.root_qpos)
        # A skill scene's free bodies (the balance board and its sphere) are observed with
        # their horizontal position relative to the robot's root, not in the world.
        model = embodiment.mj_model
        free = [model.jnt_qposadr[j] for j in range(model.njnt)
                if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
        self._scene_xy_qpos = np.array([[a, a + 1] for a in free], int).reshape(-1, 2)
        self._obs_qpos = np.setdiff1d(np.arange(nq), np.concatenate(
            [embodiment.root_xy_qpos, self._scene_xy_qpos.ravel()]))
        data = mujoco.MjData(model)
        data.qpos[:] = embodiment.init_qpos
        mujoco.mj_kinematics(model, data)
        # World xy of the root = its slides + this offset (the slides come first in its chain).
        self._root_xy_offset = data.xpos[embodiment.root_body, :2] - embodiment.init_qpos[
            embodiment.root_xy_qpos]

    @property
    def observation_size(self) -> int:
        return len(self._obs_qpos) + self._scene_xy_qpos.size + self.embodiment.nv

    @property
    def action_size(self) -> int:
        return self.embodiment.nu

    @property
    def backend(self) -> str:
        return self.physics.name

    def action_to_ctrl(self, action: jax.Array, physics: backends.PhysicsState) -> jax.Array:
        low, high = self.embodiment.ctrl_low, self.embodiment.ctrl_high
        action = jnp.clip(action, -1.0, 1.0)
        if self.pd is None:
            return low + 0.5 * (action + 1.0) * (high - low)
        pd = self.pd
        target = jnp.clip(pd.home + self.pd_action_scale * action, pd.low, pd.high)
        torque = pd.kp * (target - physics.qpos[pd.qpos]) - pd.kd * physics.qvel[pd.qvel]
        return jnp.clip(torque / pd.gear, low, high)

    def observe(self, physics: backends.PhysicsState) -> jax.Array:
        qpos = physics.qpos
        root_xy = qpos[self.embodiment.root_xy_qpos] + self._root_xy_offset
        scene_xy = (qpos[self._scene_xy_qpos] - root_xy).ravel()
        return jnp.concatenate([qpos[self._obs_qpos], scene_xy.astype(qpos.dtype), physics.qvel])

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
        stepped = self.physics.step(previous, self.action_to_ctrl(action, previous))
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
