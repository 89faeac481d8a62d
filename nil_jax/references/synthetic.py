"""Synthetic references with ground truth: a kinematic walk (or a skill's key-pose motion)
rendered like a generated video.

    gait(t): joint angles from a procedural gait (starting from the home pose, e0, and reaching
             full amplitude within 0.4 s), root x advancing at the walk task's speed,
             root height such that the lowest foot touches the floor (feet may slide: as
             physically implausible as a generated video), every joint clipped to its range
      --poses at the generator's frame rate (25 fps)--> MuJoCo's renderer (meshes, lighting),
        tracking camera, background replaced by e0's plain colour --> video.mp4
      --the same `ingest` as a generated video (segment, 25 -> 100 Hz, frame, embed)-->
      bundle + ground truth: qpos at the control rate and MuJoCo's segmentation masks of those
      poses, so tests can score the ingest (mask IoU) and training can report pose error.

Gaits, as offsets of each joint from the home pose, in pitch about the world +y axis (the
joints' axes are measured at load: each joint's sign is that of its axis' y component):
  humanoids  hips -A sin(phi) (left) and -A sin(phi + pi) (right), knees flex during swing,
             ankles keep the foot level, shoulders swing against the same-side leg, elbows bent
  quadruped  trot: diagonal pairs (FR, RL) and (FL, RR) half a cycle apart, thighs swing,
             calves flex during swing
The joint names come from each model (they differ: H1, Talos, G1 and A1 name joints their own
way); Talos has no shoulder pitch joint with its arms down, so only its elbows swing.

Skill scenes (an embodiment loaded with `skill=`, envs/scenes.py) get a key-pose motion instead:
the start pose blended toward a key pose by a smoothstep weight, rendered with the scene's
objects (a generator would see the chair too) and ingested with MuJoCo's masks of the robot
(the weight-free segmenter would take the chair for part of it):
  sit      stand 0.3 s, sit down over 1.5 s into the scene's sitting pose, stay seated
  hang     hang 0.3 s, raise the knees (hips -1.2, knees 1.6 rad) over 1 s, hold 0.7 s, lower
           them over 1 s; every 3 s
  balance  stand 0.3 s, crouch a little (hips -0.35, knees 0.7, ankles -0.35 rad) with the arms
           forward (shoulders -0.8 rad) over 1 s, hold; feet on the board, which stays level
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Optional

import mujoco
import numpy as np

from nil_jax.envs import scenes
from nil_jax.envs.embodiments import Embodiment, feet_at
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import sim_frames
from nil_jax.references import bundle as bundle_lib
from nil_jax.references.bundle import ReferenceBundle
from nil_jax.references.errors import BundleFormatError
from nil_jax.reward.renderer import mask_iou
from nil_jax.video import write_video

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HumanoidGait:
    hips: tuple[str, str]  # (left, right)
    knees: tuple[str, str]
    ankles: tuple[str, str]
    shoulders: Optional[tuple[str, str]]
    elbows: tuple[str, str]
    frequency: float = 0.9  # gait cycles per second
    hip_amplitude: float = 0.45  # rad
    knee_bend: float = 0.15  # rad, always
    knee_swing: float = 0.75  # rad, extra at mid-swing
    shoulder_amplitude: float = 0.35
    elbow_bend: float = 0.35
    elbow_swing: float = 0.2  # only arm motion when there are no shoulder joints


@dataclasses.dataclass(frozen=True)
class TrotGait:
    legs: tuple[tuple[str, str, float], ...]  # (thigh, calf, phase)
    frequency: float = 2.0
    thigh_amplitude: float = 0.3
    calf_swing: float = 0.5


GAITS = {
    "h1": HumanoidGait(
        hips=("hip_flexion_l", "hip_flexion_r"), knees=("knee_angle_l", "knee_angle_r"),
        ankles=("ankle_angle_l", "ankle_angle_r"), shoulders=("l_arm_shy", "r_arm_shy"),
        elbows=("left_elbow", "right_elbow")),
    "talos": HumanoidGait(
        hips=("hip_flexion_l", "hip_flexion_r"), knees=("knee_angle_l", "knee_angle_r"),
        ankles=("ankle_angle_l", "ankle_angle_r"), shoulders=None,
        elbows=("l_arm_elx", "r_arm_elx")),
    "g1": HumanoidGait(
        hips=("left_hip_pitch_joint", "right_hip_pitch_joint"),
        knees=("left_knee_joint", "right_knee_joint"),
        ankles=("left_ankle_pitch_joint", "right_ankle_pitch_joint"),
        shoulders=("left_shoulder_pitch_joint", "right_shoulder_pitch_joint"),
        elbows=("left_elbow_pitch_joint", "right_elbow_pitch_joint")),
    "a1": TrotGait(legs=tuple((f"{leg}_thigh_joint", f"{leg}_calf_joint", phase)
                              for leg, phase in (("FR", 0.0), ("FL", np.pi), ("RR", np.pi),
                                                 ("RL", 0.0)))),
}


RAMP_SECONDS = 0.4  # the gait's amplitude grows from zero (the home pose, e0) over this time


def _swing(phase: np.ndarray) -> np.ndarray:
    """0 in stance, rising to 1 at mid-swing (the leg moves forward while cos(phase) > 0)."""
    return np.maximum(np.cos(phase), 0.0) ** 2


def pitch_offsets(gait, times: np.ndarray) -> dict[str, np.ndarray]:
    """Joint name -> offset from the home pose (T,), as pitch about world +y (rad).

    Negative pitch about +y swings a hanging limb forward (+x)."""
    phase = 2 * np.pi * gait.frequency * times
    out = {}
    if isinstance(gait, TrotGait):
        for thigh, calf, shift in gait.legs:
            out[thigh] = -gait.thigh_amplitude * np.sin(phase + shift)
            out[calf] = -gait.calf_swing * _swing(phase + shift)  # fold the leg (A1: calf < 0)
        return out
    for side, shift in ((0, 0.0), (1, np.pi)):
        leg = phase + shift
        hip = -gait.hip_amplitude * np.sin(leg)
        knee = gait.knee_bend + gait.knee_swing * _swing(leg)
        out[gait.hips[side]], out[gait.knees[side]] = hip, knee
        out[gait.ankles[side]] = -(hip + knee)  # sole parallel to the floor
        elbow = -gait.elbow_bend * np.ones_like(times)
        if gait.shoulders is not None:
            out[gait.shoulders[side]] = gait.shoulder_amplitude * np.sin(leg)
        else:
            elbow = elbow + gait.elbow_swing * np.sin(leg)
        out[gait.elbows[side]] = elbow
    return out


def walking_qpos(embodiment: Embodiment, times: np.ndarray) -> np.ndarray:
    """(T, nq) poses of the procedural walk at `times` (s), within every joint's range."""
    model = embodiment.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = embodiment.init_qpos
    mujoco.mj_kinematics(model, data)
    qpos = np.repeat(embodiment.init_qpos[None], len(times), 0)
    # The limbs start from the home pose, like a generated video starts from e0.
    ramp = np.clip(times / RAMP_SECONDS, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
    for name, offset in pitch_offsets(GAITS[embodiment.name], times).items():
        offset = ramp * offset
        joint = model.joint(name)
        axis_y = data.xaxis[joint.id][1]
        if abs(axis_y) < 0.9:
            raise ValueError(f"{embodiment.name}: joint {name!r} is not a pitch joint (world "
                             f"axis {np.round(data.xaxis[joint.id], 2)} at the home pose).")
        address = joint.qposadr[0]
        low, high = model.jnt_range[joint.id]
        qpos[:, address] = np.clip(qpos[:, address] + np.sign(axis_y) * offset, low, high)
    qpos[:, embodiment.root_xy_qpos[0]] += embodiment.spec.walk_speed * times
    return _feet_on(embodiment, qpos, 0.0)


def _feet_on(embodiment: Embodiment, qpos: np.ndarray, height: float) -> np.ndarray:
    """`qpos` (T, nq) with each pose's lowest foot at `height`."""
    return feet_at(embodiment.mj_model, qpos, embodiment.root_height_qpos,
                   embodiment.foot_geom_ids, height)


SKILL_SETTLE_SECONDS = 0.3  # the start pose (e0) is held this long
SKILL_SECONDS = 4.0  # a skill reference's length: time to reach the pose and hold it (> 1 s)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def skill_qpos(embodiment: Embodiment, times: np.ndarray) -> np.ndarray:
    """(T, nq) poses of the skill scene's key-pose motion at `times` (s) (module docstring)."""
    scene, model = embodiment.scene, embodiment.mj_model
    if scene is None:
        raise ValueError(f"{embodiment.name} was loaded without a skill scene")
    limbs = scenes.LIMBS[embodiment.name]
    start = embodiment.init_qpos
    late = times - SKILL_SETTLE_SECONDS
    if scene.skill == "sit":
        target = np.concatenate([scene.key_qpos, start[embodiment.robot_nq:]])
        weight = _smoothstep(late / 1.5)
    elif scene.skill == "hang":
        target = scenes.set_joints(model, start, {**{j: -1.2 for j in limbs.hip_pitch},
                                                  **{j: 1.6 for j in limbs.knee}})
        cycle = np.mod(late, 3.0)
        weight = np.where(late < 0, 0.0, _smoothstep(cycle) - _smoothstep(cycle - 1.7))
    else:
        target = scenes.set_joints(model, start, {
            **{j: -0.35 for j in limbs.hip_pitch}, **{j: 0.7 for j in limbs.knee},
            **{j: -0.35 for j in limbs.ankle_pitch}, **{j: -0.8 for j in limbs.shoulder_pitch}})
        weight = _smoothstep(late)
    qpos = start + weight[:, None] * (target - start)
    if scene.skill == "hang":
        return qpos  # the hands stay on the bar: the root does not move
    board_top = 2 * scenes.PIVOT_RADIUS + 2 * scene.board_half_size[2]
    return _feet_on(embodiment, qpos, board_top if scene.skill == "balance" else 0.0)


def motion_qpos(embodiment: Embodiment, times: np.ndarray) -> np.ndarray:
    """The synthetic reference's poses: the skill scene's motion, or the walk."""
    if embodiment.scene is not None:
        return skill_qpos(embodiment, times)
    return walking_qpos(embodiment, times)


def motion_name(embodiment: Embodiment) -> str:
    return "walk" if embodiment.scene is None else embodiment.scene.skill


def file_stem(embodiment: Embodiment) -> str:
    """<embodiment>_<motion>, and _<view> unless the camera is the side view."""
    view = "" if embodiment.camera == "side" else f"_{embodiment.camera}"
    return f"{embodiment.name}_{motion_name(embodiment)}{view}"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    seconds: float = 3.0  # video length
    video_fps: float = 25.0  # the generator-like frame rate of the rendered video
    video_size: int = 224  # side of the rendered (square) video
    video_background: tuple[int, int, int] = sim_frames.DEFAULT_BACKGROUND  # e0's plain colour
    shadows: bool = False  # MuJoCo's shadows (self-shadowing only; 3x slower on a CPU)


def make(embodiment: Embodiment, folder: str | os.PathLike,
         config: SyntheticConfig = SyntheticConfig(),
         ingest_config: ingest_lib.IngestConfig = ingest_lib.IngestConfig(segmenter="background")
         ) -> tuple[ReferenceBundle, pathlib.Path]:
    """Renders the walk (or the skill scene's motion) to `folder`/`file_stem`.mp4, ingests it,
    adds the ground truth.

    Returns the bundle (not saved) and the video path."""
    started = time.perf_counter()
    video_times = np.arange(round(config.seconds * config.video_fps) + 1) / config.video_fps
    frames, masks = sim_frames.render_agent(embodiment, motion_qpos(embodiment, video_times),
                                            config.video_size, config.video_size,
                                            config.video_background, config.shadows)
    motion = motion_name(embodiment)
    video = write_video(pathlib.Path(folder) / f"{file_stem(embodiment)}.mp4", frames,
                        config.video_fps)
    rendered = time.perf_counter()
    # With a scene in the picture, the simulator's masks stand in for the segmenter.
    given = masks if embodiment.scene is not None else None
    bundle = ingest_lib.ingest(video, embodiment, ingest_config, masks=given)
    ingested = time.perf_counter()
    truth = motion_qpos(embodiment, np.arange(bundle.num_frames) * embodiment.control_dt)
    size = bundle.frames.shape[1]
    truth_masks = sim_frames.agent_masks(embodiment, truth, size, size)
    ious = np.array([float(mask_iou(a, b)) for a, b in zip(bundle.masks, truth_masks)])
    metadata = {**bundle.metadata, "synthetic": {
        "motion": motion,
        **({"gait": dataclasses.asdict(GAITS[embodiment.name])} if motion == "walk" else {}),
        **dataclasses.asdict(config),
        "ground_truth": f"qpos of the procedural {motion} at the control rate; masks: MuJoCo "
                        "segmentation of those poses (body geoms)",
        "mask_iou_mean": float(ious.mean()), "mask_iou_min": float(ious.min()),
        "render_s": rendered - started, "ingest_s": ingested - rendered}}
    logger.info("Synthetic %s %s: mask IoU vs ground truth mean %.3f, min %.3f",
                embodiment.name, motion, ious.mean(), ious.min())
    return dataclasses.replace(bundle, ground_truth_qpos=truth.astype(np.float64),
                               ground_truth_masks=truth_masks, metadata=metadata), video


def cache_path(embodiment: Embodiment, folder: str | os.PathLike,
               config: SyntheticConfig = SyntheticConfig(),
               ingest_config: ingest_lib.IngestConfig =
               ingest_lib.IngestConfig(segmenter="background")) -> pathlib.Path:
    """Where `load_or_make` keeps the reference: its name digests every setting (the camera
    view is in the name itself, `file_stem`)."""
    settings = json.dumps([bundle_lib.FORMAT_VERSION, dataclasses.asdict(config),
                           dataclasses.asdict(ingest_config)], sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return pathlib.Path(folder) / f"{file_stem(embodiment)}_{digest}.npz"


def load_or_make(embodiment: Embodiment, folder: str | os.PathLike,
                 config: SyntheticConfig = SyntheticConfig(),
                 ingest_config: ingest_lib.IngestConfig =
                 ingest_lib.IngestConfig(segmenter="background")) -> ReferenceBundle:
    """The synthetic reference of `embodiment`, cached in `folder` under a name that digests
    every setting (the default job's reference: seconds on a CPU, no weights needed)."""
    path = cache_path(embodiment, folder, config, ingest_config)
    if path.exists():
        try:
            return bundle_lib.load(path, embodiment=embodiment.name, nq=embodiment.nq,
                                   camera=embodiment.camera)
        except BundleFormatError as e:
            logger.warning("Cached synthetic reference %s is unusable (%s); making it again.",
                           path, e)
    bundle, _ = make(embodiment, folder, config, ingest_config)
    bundle_lib.save(bundle, path)
    return bundle
