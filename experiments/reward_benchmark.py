"""The `reward` suite of experiments/benchmark.py: does a reward stream rank the reference motion
above wrong ones? A reward that cannot cannot teach the motion, and this is measured in
minutes, with no RL.

For each embodiment and tracking-camera view (`envs.embodiments.CAMERA_VIEWS`), the synthetic
walk's bundle is the reference, as training reads it (MuJoCo's RGB render, segmented and
ingested: `references.synthetic`). Candidate motions are rendered as training renders the
simulation (the JAX silhouette renderer, at the stream's size) and scored against it:

    true         the reference's own ground-truth poses
    swapped      left and right exchanged (the gait half a cycle later)
    in phase     every leg with the first leg's angles (a hop, not a walk)
    late         the gait a quarter cycle late
    standing     the home pose throughout
    half speed   the gait at half its frequency
    reversed     the gait played backwards
    sideways     the true poses with every joint that does not pitch about the walking
                 direction's normal (hip rotation and adduction, shoulder roll and yaw, torso
                 yaw) `SIDEWAYS_OFFSET` rad off: what a side view barely shows

    IoU at S px  mean over the scored frames of mask IoU (`renderer.mask_iou`) with the
                 reference's masks resized to S (`training.resize_masks`)
    I3D <endpoint> <pooling> [centered] <input> <S>px
                 mean over the scored frames of the cosine between the Kinetics-400 I3D's
                 embedding of the 8-frame clip ending there, as training computes it (the
                 JAX renderer's `input`, shade or silhouette, at `--reward-render-size`, resized
                 to S), and the reference clip's (the bundle's masked RGB, resized to S). The
                 feature map at `endpoint` is pooled to its mean or kept as a grid; `centered`
                 subtracts the mean of the reference's embeddings from both first (raw cosines of
                 non-negative features sit near 1). `I3D random ...`: random weights, the
                 control (a margin there comes from the pixels, not from what I3D learned)

Beside the streams, each motion's pose error: mean |angle - true angle| (rad) over the scored
frames and the angles the learning benchmark scores (`embodiments.angle_qpos`): how far from
the reference a motion that scores a given IoU is (standing still: not far, on H1).

Frames after the gait's ramp (`synthetic.RAMP_SECONDS`), every `--reward-frame-stride`-th, are
scored. Per stream: the true motion's score, the best wrong one's, the margin (true - best
wrong: the larger, the more the stream tells the policy) and the true motion's rank (1: it
scores best). The video streams run for `--reward-video-embodiments` only (the I3D on a CPU
takes minutes per embodiment and view).

Reproduce (writes benchmarks/reward.{json,md}; a few minutes on a 2-core CPU):

    python experiments/benchmark.py --suite reward
    python experiments/benchmark.py --suite reward --embodiments h1 --reward-sizes 64
"""

from __future__ import annotations

import argparse
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from nil_jax import envs, training
from nil_jax.references import bundle as bundle_lib
from nil_jax.references import synthetic
from nil_jax.reward import (i3d, i3d_weights, nil_reward, renderer, silhouettes, timesformer,
                            video_preprocess)

MOTIONS = ("true", "swapped", "in phase", "late", "standing", "half speed", "reversed",
           "sideways")
SIDEWAYS_OFFSET = 0.2  # rad
RENDER_BATCH = 64
ENCODER_BATCH = 16
VIDEO_ENCODERS = ("i3d", "i3d-random")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--reward-sizes", nargs="+", type=int, default=[64, 112, 224],
                       help="sides (px) of the IoU streams")
    group.add_argument("--reward-cameras", nargs="+", default=list(envs.embodiments.CAMERA_VIEWS),
                       choices=list(envs.embodiments.CAMERA_VIEWS))
    group.add_argument("--reward-frame-stride", type=int, default=4,
                       help="score every k-th control frame after the gait's ramp")
    group.add_argument("--reward-references-dir", default="references",
                       help="where the synthetic references are cached (as run.py's)")
    group.add_argument("--reward-video-embodiments", nargs="*", default=["h1"],
                       help="embodiments whose video streams are scored (none: IoU only)")
    group.add_argument("--reward-encoders", nargs="*", default=list(VIDEO_ENCODERS),
                       choices=VIDEO_ENCODERS,
                       help="i3d: the Kinetics-400 weights; i3d-random: random weights, the "
                            "control (Mixed_5c, shade only)")
    group.add_argument("--reward-i3d-endpoints", nargs="+", default=["Mixed_4f", "Mixed_5c"],
                       choices=i3d.ENDPOINTS[:-1])
    group.add_argument("--reward-i3d-sizes", nargs="+", type=int, default=[112],
                       help="sides (px) the I3D sees (the clips are resized to them)")
    group.add_argument("--reward-encoder-inputs", nargs="+",
                       default=list(nil_reward.ENCODER_INPUTS), choices=nil_reward.ENCODER_INPUTS)
    group.add_argument("--reward-video-frame-stride", type=int, default=8,
                       help="the video streams score every k-th of the IoU streams' frames")
    group.add_argument("--reward-render-size", type=int, default=64,
                       help="side (px) the simulation is rendered at for the video streams (the "
                            "CPU preset's render_size)")


def _leg_pairs(embodiment: envs.embodiments.Embodiment) -> list[tuple[str, str]]:
    """(source, target) joints: every other leg takes the first leg's angles."""
    gait = synthetic.GAITS[embodiment.name]
    if isinstance(gait, synthetic.TrotGait):
        first_thigh, first_calf, _ = gait.legs[0]
        return [pair for thigh, calf, _ in gait.legs[1:]
                for pair in ((first_thigh, thigh), (first_calf, calf))]
    return [(group[0], group[1]) for group in (gait.hips, gait.knees, gait.ankles)]


def sideways_joints(embodiment: envs.embodiments.Embodiment) -> np.ndarray:
    """Joint ids of the robot's hinge joints (not the root's) whose world axis at the home
    pose is not along y: they move the body out of the walking plane."""
    model = embodiment.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = embodiment.init_qpos
    mujoco.mj_kinematics(model, data)
    root = set(embodiment.root_qpos.tolist())
    return np.array([j for j in range(model.njnt)
                     if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
                     and model.jnt_qposadr[j] < embodiment.robot_nq
                     and model.jnt_qposadr[j] not in root
                     and abs(data.xaxis[j][1]) < 0.9], dtype=int)


def motions(embodiment: envs.embodiments.Embodiment, times: np.ndarray) -> dict[str, np.ndarray]:
    """{motion: (T, nq) poses at `times`} for every entry of MOTIONS."""
    frequency = synthetic.GAITS[embodiment.name].frequency
    walk = lambda t: synthetic.walking_qpos(embodiment, np.maximum(t, 0.0))  # noqa: E731
    true = walk(times)
    model = embodiment.mj_model
    in_phase = true.copy()
    for source, target in _leg_pairs(embodiment):
        in_phase[:, model.joint(target).qposadr[0]] = true[:, model.joint(source).qposadr[0]]
    sideways = true.copy()
    joints = sideways_joints(embodiment)
    low, high = model.jnt_range[joints].T
    qpos = model.jnt_qposadr[joints]
    sideways[:, qpos] = np.clip(true[:, qpos] + SIDEWAYS_OFFSET, low, high)
    standing = np.repeat(embodiment.init_qpos[None], len(times), 0)
    standing[:, embodiment.root_xy_qpos] = true[:, embodiment.root_xy_qpos]
    out = {"true": true, "swapped": walk(times + 0.5 / frequency), "in phase": in_phase,
           "late": walk(times - 0.25 / frequency), "standing": standing,
           "half speed": walk(0.5 * times), "reversed": walk(times[-1] + times[0] - times),
           "sideways": sideways}
    assert tuple(out) == MOTIONS
    return out


def rank_streams(scores: dict[str, dict[str, float]]) -> dict[str, dict]:
    """{stream: {motion: score}} -> {stream: true score, best wrong motion and score, margin,
    rank of the true motion (1: best)}."""
    out = {}
    for stream, by_motion in scores.items():
        wrong = {m: s for m, s in by_motion.items() if m != "true"}
        best = max(wrong, key=wrong.get)
        out[stream] = dict(true=by_motion["true"], best_wrong=best,
                           best_wrong_score=wrong[best], margin=by_motion["true"] - wrong[best],
                           rank=1 + sum(s > by_motion["true"] for s in wrong.values()))
    return out


def iou_scores(embodiment, reference_masks: np.ndarray, poses: dict[str, np.ndarray],
               size: int) -> dict[str, float]:
    """{motion: mean mask IoU} of the JAX renderer's masks of `poses` at `size` px against the
    reference's masks (T, H, W) resized to `size`."""
    sil = silhouettes.make(embodiment, size, size)
    render = jax.jit(lambda q: silhouettes.render(sil, q)["mask"])
    reference = training.resize_masks(reference_masks, size)
    out = {}
    for motion, qpos in poses.items():
        masks = np.concatenate([
            jax.device_get(render(jnp.asarray(qpos[i:i + RENDER_BATCH], jnp.float32)))
            for i in range(0, len(qpos), RENDER_BATCH)])
        out[motion] = float(np.mean(renderer.mask_iou(masks, reference)))
    return out


@functools.cache
def _jitted_features(model: i3d.InceptionI3d, size: int):
    """One jitted function per model and size (each clip shape then compiles once)."""
    settings = i3d.preprocessing(size)
    return jax.jit(lambda v, c: model.apply(v, video_preprocess.preprocess(c, settings)))


def _features(model: i3d.InceptionI3d, variables: dict, size: int, clips: np.ndarray
              ) -> np.ndarray:
    """I3D feature maps (N, T', H', W', C) of uint8 clips (N, 8, H, W[, 3]), resized to `size`
    and normalized as `i3d.preprocessing`; grey clips get three equal channels."""
    apply = _jitted_features(model, size)
    if clips.ndim == 4:
        clips = clips[..., None]
    out = []
    for start in range(0, len(clips), ENCODER_BATCH):
        batch = clips[start:start + ENCODER_BATCH]
        padded = np.concatenate([batch, np.repeat(batch[-1:], ENCODER_BATCH - len(batch), 0)])
        out.append(np.asarray(apply(variables, jnp.asarray(padded)))[:len(batch)])
    return np.concatenate(out)


def video_scores(embodiment, bundle, frames: np.ndarray, motion_poses: dict[str, np.ndarray],
                 encoders: list[str], endpoints: list[str], sizes: list[int],
                 inputs: list[str], render_size: int, frame_stride: int = 1
                 ) -> dict[str, dict[str, float]]:
    """{stream: {motion: mean cosine}} of the I3D streams (see the module docstring).

    motion_poses: {motion: (T, nq)} poses at every control frame; `frames`: the IoU streams'
    scored ones, of which every `frame_stride`-th is scored here."""
    frames = frames[::frame_stride]
    sil = silhouettes.make(embodiment, render_size, render_size)
    render = jax.jit(lambda q: silhouettes.render(sil, q))
    config = lambda name: nil_reward.RewardConfig(encoder_input=name)  # noqa: E731
    clips = bundle_lib.clip_indices(bundle.num_frames)[frames]  # (N, 8) frame indices
    sim_frames = {name: {} for name in inputs}  # input -> motion -> (T, S, S) uint8
    for motion, qpos in motion_poses.items():
        rendered = [jax.device_get(render(jnp.asarray(qpos[i:i + RENDER_BATCH], jnp.float32)))
                    for i in range(0, len(qpos), RENDER_BATCH)]
        for name in inputs:
            sim_frames[name][motion] = np.concatenate(
                [np.asarray(nil_reward.encoder_frame(config(name), r)) for r in rendered])
    runs = [("i3d", endpoint, size, name) for endpoint in endpoints for size in sizes
            for name in inputs] if "i3d" in encoders else []
    if "i3d-random" in encoders:
        runs += [("i3d-random", "Mixed_5c", size, inputs[0]) for size in sizes]
    variables, references, scores = {}, {}, {}
    for weights, endpoint, size, name in runs:
        if weights not in variables:
            variables[weights] = (i3d_weights.load_variables() if weights == "i3d"
                                  else i3d_weights.random_variables(seed=0))
        model = i3d.InceptionI3d(endpoint)
        if (weights, endpoint, size) not in references:  # the same for every input
            references[weights, endpoint, size] = _features(model, variables[weights], size,
                                                            bundle.frames[clips])
        reference = references[weights, endpoint, size]
        by_motion = {m: _features(model, variables[weights], size, sim_frames[name][m][clips])
                     for m in motion_poses}
        label = "I3D random" if weights == "i3d-random" else "I3D"
        for pooling in i3d.POOLINGS:
            z_ref = np.asarray(i3d.pool(jnp.asarray(reference), pooling))
            z = {m: np.asarray(i3d.pool(jnp.asarray(f), pooling)) for m, f in by_motion.items()}
            for centered in (False, True):
                center = z_ref.mean(0) if centered else 0.0
                stream = (f"{label} {endpoint} {pooling}{' centered' if centered else ''} "
                          f"{name} {size}px")
                scores[stream] = {m: float(np.mean(timesformer.cosine_similarity(
                    z[m] - center, z_ref - center))) for m in motion_poses}
    return scores


def landscape(embodiment, bundle, sizes: list[int], frame_stride: int,
              video: Optional[dict] = None) -> dict:
    """The scores and ranking of every stream for one embodiment and camera view; `video`: the
    arguments of `video_scores` (encoders, endpoints, sizes, inputs, render_size) or None."""
    frames = np.arange(int(np.ceil(synthetic.RAMP_SECONDS / embodiment.control_dt)),
                       bundle.num_frames, frame_stride)
    poses = motions(embodiment, frames * embodiment.control_dt)
    # The motions are built from the gait itself; the bundle's ground truth is the same walk.
    np.testing.assert_allclose(poses["true"], bundle.ground_truth_qpos[frames], atol=1e-9)
    scores = {f"IoU {size} px": iou_scores(embodiment, bundle.masks[frames], poses, size)
              for size in sizes}
    if video:
        every_frame = motions(embodiment, np.arange(bundle.num_frames) * embodiment.control_dt)
        scores.update(video_scores(embodiment, bundle, frames, every_frame, **video))
    angles = envs.embodiments.angle_qpos(embodiment)
    pose_error = {motion: float(np.abs(qpos[:, angles] - poses["true"][:, angles]).mean())
                  for motion, qpos in poses.items()}
    return dict(frames=len(frames), scores=scores, ranking=rank_streams(scores),
                pose_error_rad=pose_error)


def table(results: list[dict], machine: dict, settings: dict) -> str:
    lines = [f"Machine: {machine['cpu_count']} CPUs ({machine['processor']}), jax "
             f"{machine['jax']}, mujoco {machine['mujoco']}.", "",
             "Each stream scores the reference's own motion (true) and wrong ones against the "
             "reference as training reads it; margin = true - best wrong (larger: the stream "
             "tells the motion apart better); rank 1: the true motion scores best. "
             f"`sideways`: every out-of-plane joint {SIDEWAYS_OFFSET} rad off.", "",
             "I3D streams: cosine of the Kinetics-400 I3D's embeddings of 8-frame clips, the "
             "simulation as training renders it (shade or silhouette at "
             f"{settings['render_size']} px, resized to the I3D's size) against the "
             "reference's masked RGB clips; `centered`: the mean of the reference's embeddings "
             "subtracted from both; `I3D random`: random weights (the control). They score "
             "every k-th of the IoU streams' frames (settings.video_frame_stride).", "",
             "| embodiment | camera | stream | true | best wrong | margin | rank | "
             + " | ".join(m for m in MOTIONS if m != "true") + " |",
             "|---|---|---|---:|---|---:|---:|" + "---:|" * (len(MOTIONS) - 1)]
    for r in results:
        for stream, rank in r["ranking"].items():
            scores = r["scores"][stream]
            lines.append(
                f"| {r['embodiment']} | {r['camera']} | {stream} | {rank['true']:.3f} | "
                f"{rank['best_wrong']} {rank['best_wrong_score']:.3f} | {rank['margin']:.3f} | "
                f"{rank['rank']} | "
                + " | ".join(f"{scores[m]:.3f}" for m in MOTIONS if m != "true") + " |")
    lines += ["", "Pose error (rad) of each motion: mean |angle - true angle| over the scored "
              "frames and the angles the learning benchmark scores (camera-independent).", "",
              "| embodiment | " + " | ".join(MOTIONS) + " |",
              "|---|" + "---:|" * len(MOTIONS)]
    for r in results:
        if r["camera"] == results[0]["camera"]:
            lines.append(f"| {r['embodiment']} | " + " | ".join(
                f"{r['pose_error_rad'][m]:.3f}" for m in MOTIONS) + " |")
    return "\n".join(lines)


def run_reward(args, machine: dict) -> tuple[dict, str]:
    results = []
    for name in args.embodiments:
        for camera in args.reward_cameras:
            embodiment = envs.load(name, camera=camera)
            bundle = synthetic.load_or_make(embodiment, args.reward_references_dir)
            video = dict(encoders=args.reward_encoders, endpoints=args.reward_i3d_endpoints,
                         sizes=args.reward_i3d_sizes, inputs=args.reward_encoder_inputs,
                         render_size=args.reward_render_size,
                         frame_stride=args.reward_video_frame_stride) if (
                name in args.reward_video_embodiments and args.reward_encoders) else None
            result = dict(embodiment=name, camera=camera,
                          reference=str(synthetic.cache_path(embodiment,
                                                             args.reward_references_dir)),
                          **landscape(embodiment, bundle, args.reward_sizes,
                                      args.reward_frame_stride, video))
            results.append(result)
            for stream, rank in result["ranking"].items():
                print(f"{name} {camera:8s} {stream:44s} true {rank['true']:.3f} best wrong "
                      f"{rank['best_wrong']} {rank['best_wrong_score']:.3f} margin "
                      f"{rank['margin']:+.3f} rank {rank['rank']}", flush=True)
    settings = dict(sizes=args.reward_sizes, cameras=args.reward_cameras,
                    frame_stride=args.reward_frame_stride, sideways_offset=SIDEWAYS_OFFSET,
                    motions=list(MOTIONS), video_embodiments=args.reward_video_embodiments,
                    encoders=args.reward_encoders, i3d_endpoints=args.reward_i3d_endpoints,
                    i3d_sizes=args.reward_i3d_sizes, encoder_inputs=args.reward_encoder_inputs,
                    render_size=args.reward_render_size,
                    video_frame_stride=args.reward_video_frame_stride,
                    i3d_checkpoint_sha256=i3d_weights.CHECKPOINT_SHA256)
    return dict(machine=machine, settings=settings, results=results), table(results, machine,
                                                                          settings)
