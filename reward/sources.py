"""What a run trains on: the registry of reward sources (`TrainConfig.reward_source`).

    nil   (default) the NIL reward R_t = zeta S_v + beta S_M + eta P_t (`nil_reward`): video
          similarity, mask IoU and the regularizers, from the reference video alone. The method.
    task  the environment's own reward: LocoMujoco's walk reward for walk (humanoids
          exp(-(v_x - 1.25)^2), `envs.tasks`), a skill's hand-written task reward for sit, hang
          and balance (`envs.skill_tasks`). What RL reaches with the reward the benchmark scores:
          the RL upper bound NIL is compared against.
    pose  a mocap-tracking oracle (DeepMimic, Peng et al. 2018, the pose term's kernel):
              r_t = exp(-mean_i |q_i - q*_{t,i}| / POSE_SCALE),  POSE_SCALE = 0.1 rad,
          i over every angle of the robot (the root's three rotations and the joints, not the
          root slides nor a scene's free bodies: `embodiments.angle_qpos`), q*_t the reference's
          ground-truth pose at control step t (the frame the masks are matched at). A mean
          error of 0.1 rad gives 1/e. What imitation reaches when the poses are given, which a
          video does not give: the upper bound of imitating the reference. Needs a reference
          with ground-truth poses (the synthetic ones).

Whatever the source, NilEnv computes the NIL terms, logs `reward/env`, and logs `reward/pose`
whenever the reference has ground-truth poses; only the reward trained on changes.
"""

from __future__ import annotations

import typing
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.references.errors import ReferenceDataError

RewardSource = Literal["nil", "task", "pose"]
SOURCES: tuple[str, ...] = typing.get_args(RewardSource)
POSE_SCALE = 0.1  # rad: the mean angle error at which the pose reward is 1/e


def check(source: str) -> None:
    """Raises ValueError unless `source` is a registered reward source. Host-side."""
    if source not in SOURCES:
        raise ValueError(f"Unknown reward source {source!r}; choose one of "
                         f"{', '.join(SOURCES)}.")


def check_ground_truth(source: str, ground_truth_qpos: Optional[np.ndarray],
                       reference: str) -> None:
    """Raises ReferenceDataError when `source` needs the reference's ground-truth poses and
    `reference` has none (a video's reference never has them). Host-side."""
    if source == "pose" and ground_truth_qpos is None:
        raise ReferenceDataError(
            f"--reward-source pose tracks the reference's ground-truth poses, and {reference} "
            "has none (a reference made from a video never has them). Use the synthetic "
            "reference (no --reference), or a bundle with ground-truth poses.")


def pose_reward(qpos: jax.Array, target_qpos: jax.Array, angles: np.ndarray) -> jax.Array:
    """r = exp(-mean_i |q_i - q*_i| / POSE_SCALE) (...,) of poses qpos (..., nq) against the
    reference's target_qpos (..., nq), i over the qpos indices `angles` (static numpy)."""
    error = jnp.mean(jnp.abs(qpos[..., angles] - target_qpos[..., angles]), axis=-1)
    return jnp.exp(-error / POSE_SCALE)
