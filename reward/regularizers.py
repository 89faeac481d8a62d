"""Physical regularizers of the NIL reward: P_t = P_J + P_A + P_V + P_F + P_S, each term <= 0.

Generated videos are not physically plausible; these standard locomotion penalties keep the
policy in the physically sensible region while it imitates them (the paper's eta * P_t). Each
term is a pure function of one environment's step; `penalties` evaluates the five with their
scales and returns them by name (a scale of 0 switches a term off: the paper's ablations).

    P_J torques           -s_J * mean_i (tau_i / tau_max_i)^2
                          tau = the actuator command of the action, as torque motors read it
                          (ctrl), tau_max = the larger end of the actuator's ctrlrange. With
                          PD actuation (envs.robot_env) the action is a joint-target offset
                          from the home pose, and this term is its normalized size: the effort
                          the policy asks for, which also keeps joints near home
    P_A action deltas     -s_A * mean_i (a_i(t) - a_i(t-1))^2          a in [-1, 1]^nu
    P_V angular velocity  -s_V * (omega_roll^2 + omega_pitch^2)         rad/s, the root's two
                          non-yaw hinge rates (turning about the vertical is not penalized)
    P_F foot slip         -s_F * sum_feet c_f * ||v_xy,f||^2            m/s, v from the foot
                          body's displacement over the control step, c_f = 1 while the foot is
                          within `contact_height` of its height in the home pose
    P_S torso tilt        -s_S * (1 - R_zz^2)                           R the root body's
                          orientation: the squared horizontal part of gravity in its frame

The shapes follow mujoco_playground's torque, action-rate, angular-velocity, feet-slip and
orientation costs; the normalizations (torques by their range, means over actuators) make the
default scales work across robots whose gears differ by 200x.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from nil_jax.envs.embodiments import Embodiment, geom_lowest_z

TERMS = ("torques", "action_rate", "angular_velocity", "foot_slip", "torso_tilt")


@dataclasses.dataclass(frozen=True)
class RegularizerScales:
    """Scale of each penalty (>= 0; 0 switches the term off). Defaults: each term is a few
    hundredths for a standing robot under random actions, and their sum stays well below the
    similarity streams even while a robot thrashes and falls (H1 under random joint targets:
    about -0.25 against an IoU of 0.5), so that staying up and imitating always pays."""

    torques: float = 0.1
    action_rate: float = 0.05
    angular_velocity: float = 0.01
    foot_slip: float = 0.02
    torso_tilt: float = 1.0
    contact_height: float = 0.03  # metres above the home height that still count as contact

    def __post_init__(self):
        for name in TERMS + ("contact_height",):
            if not getattr(self, name) >= 0:
                raise ValueError(f"regularizer scale {name} must be >= 0, got "
                                 f"{getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class BodyIndices:
    """Static indices and constants the penalties need, taken from an embodiment once."""

    root_body: int
    tilt_qvel: np.ndarray  # (2,) the root's roll and pitch hinge rates
    foot_bodies: np.ndarray  # (F,)
    foot_home_height: np.ndarray  # (F,) body origin heights standing in the home pose
    torque_limit: np.ndarray  # (nu,)
    ctrl_low: np.ndarray
    ctrl_high: np.ndarray
    control_dt: float

    @classmethod
    def of(cls, embodiment: Embodiment) -> "BodyIndices":
        model = embodiment.mj_model
        hinges = [int(j) for j in range(model.njnt)
                  if model.jnt_bodyid[j] == embodiment.root_body
                  and model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE]
        tilt = [model.jnt_dofadr[j] for j in hinges if abs(model.jnt_axis[j][2]) < 0.5]
        if len(tilt) != 2:
            raise ValueError(f"{embodiment.name}: expected two non-vertical root hinges (roll and "
                             f"pitch), found {len(tilt)}")
        data = mujoco.MjData(model)
        data.qpos[:] = embodiment.init_qpos
        mujoco.mj_kinematics(model, data)
        foot_height = data.xpos[embodiment.foot_body_ids, 2].copy()
        if embodiment.scene is not None and not embodiment.scene.feet_supported:
            # Hanging: the feet start in the air; they touch down at the floor, not there.
            foot_height -= min(geom_lowest_z(model, data, g) for g in embodiment.foot_geom_ids)
        return cls(root_body=embodiment.root_body, tilt_qvel=np.asarray(tilt),
                   foot_bodies=np.asarray(embodiment.foot_body_ids),
                   foot_home_height=foot_height,
                   torque_limit=np.maximum(np.abs(embodiment.ctrl_low),
                                           np.abs(embodiment.ctrl_high)),
                   ctrl_low=embodiment.ctrl_low, ctrl_high=embodiment.ctrl_high,
                   control_dt=float(model.opt.timestep * embodiment.n_substeps))


def torques(indices: BodyIndices, action: jax.Array) -> jax.Array:
    ctrl = indices.ctrl_low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (
        indices.ctrl_high - indices.ctrl_low)
    return -jnp.mean(jnp.square(ctrl / indices.torque_limit), axis=-1)


def action_rate(action: jax.Array, previous_action: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.square(action - previous_action), axis=-1)


def angular_velocity(indices: BodyIndices, qvel: jax.Array) -> jax.Array:
    return -jnp.sum(jnp.square(qvel[..., indices.tilt_qvel]), axis=-1)


def foot_slip(indices: BodyIndices, foot_pos: jax.Array, previous_foot_pos: jax.Array,
              contact_height: float) -> jax.Array:
    """foot_pos, previous_foot_pos (..., F, 3): the foot bodies' origins after and before."""
    velocity_xy = (foot_pos[..., :2] - previous_foot_pos[..., :2]) / indices.control_dt
    contact = foot_pos[..., 2] < indices.foot_home_height + contact_height
    return -jnp.sum(jnp.where(contact, jnp.sum(jnp.square(velocity_xy), -1), 0.0), axis=-1)


def torso_tilt(root_xmat: jax.Array) -> jax.Array:
    """root_xmat (..., 3, 3): -(1 - R_zz^2) = -|horizontal part of gravity in the root frame|^2."""
    return -(1.0 - jnp.square(root_xmat[..., 2, 2]))


def penalties(scales: RegularizerScales, indices: BodyIndices, *, action, previous_action,
              qvel, xpos, previous_xpos, xmat) -> dict[str, jax.Array]:
    """The five scaled penalties (each <= 0) of one step, by name; `penalties/total` their sum.

    xpos, previous_xpos (..., nbody, 3) and xmat (..., nbody, 3, 3): body poses after and
    before the step (mjx.kinematics, shared with the silhouette renderer)."""
    feet = indices.foot_bodies
    raw = {
        "torques": lambda: torques(indices, action),
        "action_rate": lambda: action_rate(action, previous_action),
        "angular_velocity": lambda: angular_velocity(indices, qvel),
        "foot_slip": lambda: foot_slip(indices, xpos[..., feet, :], previous_xpos[..., feet, :],
                                       scales.contact_height),
        "torso_tilt": lambda: torso_tilt(xmat[..., indices.root_body, :, :]),
    }
    terms = {f"penalty/{name}": getattr(scales, name) * raw[name]()
             for name in TERMS if getattr(scales, name) > 0}
    total = sum(terms.values()) if terms else jnp.zeros(action.shape[:-1], action.dtype)
    return {**terms, "penalty/total": total}
