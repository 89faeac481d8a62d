"""Ingest: a generated video of an embodiment -> a ReferenceBundle at the control rate.

    video file --read_video--> frames at fps_in (24-30 fps), sha256
      --central square (the simulation camera's framing, see video_io)-->
      --segment, prompted with the simulator's e0 mask (SAM 2, or the background model)-->
      --resize frames and masks to 224 x 224--> --fill short runs of empty masks-->
      --check the first frames against the e0 mask (embodiment / framing mismatch)-->
      --resample to the control rate (1 / control_dt = 100 Hz; flow or linear)-->
      --masked RGB on black--> --TimeSformer clip embeddings (when weights exist)-->
    ReferenceBundle (+ metadata: what was done, with which settings)

Synthetic references (`synthetic.py`) go through exactly this function. Host-side, not jitted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Optional

import numpy as np

import nil_jax
from nil_jax.envs.embodiments import Embodiment
from nil_jax.references import embed, resample, segment, sim_frames, video_io
from nil_jax.references.bundle import (CLIP_FRAMES, FORMAT, FORMAT_VERSION, ReferenceBundle)
from nil_jax.references.errors import EmbodimentMismatchError, TooFewFramesError
from nil_jax.reward.renderer import mask_iou

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Every choice the ingest makes; all of it is recorded in the bundle's metadata."""

    skill: str = sim_frames.DEFAULT_SKILL  # the skill named in the prompt
    fps: Optional[float] = None  # the video's frame rate, when the file does not say it
    resolution: int = 224  # side of the square reference frames (TimeSformer: 224)
    segmenter: str = "auto"  # "background", "sam2" or "auto" (segment.py)
    sam2_checkpoint: Optional[str] = None
    sam2_config: str = segment.SAM2_DEFAULT_CONFIG
    sam2_device: str = "cpu"
    sam2_overrides: tuple[str, ...] = ()  # hydra overrides of the SAM 2 config
    background: segment.BackgroundModel = segment.BackgroundModel()
    interpolator: str = "auto"  # "flow", "linear" or "auto" (resample.py)
    encoder: str = "auto"  # "auto", "pretrained", "i3d", "random", "none" (embed.ENCODERS)
    encoder_checkpoint: Optional[str] = None  # default $NIL_JAX_TIMESFORMER, else the K400 one
    random_encoder: str = "base"  # architecture of the "random" encoder: embed.RANDOM_CONFIGS
    embed_batch: int = 8
    min_source_frames: int = 8  # fewer decoded frames than this: TooFewFramesError
    max_mask_gap: int = 3  # longest run of empty-mask source frames that is interpolated
    min_mask_fraction: float = 1e-3  # a mask smaller than this fraction of the frame is empty
    min_initial_iou: float = 0.5  # median IoU of the first frames' masks with e0's mask
    initial_frames: int = 3  # how many first frames that check looks at


def _encoder_metadata(info: dict) -> dict:
    return {**info, "clip_frames": CLIP_FRAMES,
            "clip": "frames t-7..t, frame 0 repeated before the start"}


def _check_initial_frames(masks: np.ndarray, e0_mask: np.ndarray, config: IngestConfig,
                          embodiment: Embodiment) -> float:
    """Median IoU of the first frames' masks with e0; raises when below `min_initial_iou`.

    The generator starts from e0, so its first frames must show the same silhouette: a low IoU
    means another robot (embodiment mismatch), or a generator that re-framed the scene. The
    first few frames, not only frame 0, because SAM 2 returns the prompt itself on frame 0."""
    ious = [float(mask_iou(m, e0_mask)) for m in masks[:config.initial_frames]]
    iou = float(np.median(ious))
    if iou < config.min_initial_iou:
        raise EmbodimentMismatchError(
            f"The first {len(ious)} frames' agent masks overlap the simulator's initial frame "
            f"of {embodiment.name!r} ({embodiment.spec.display_name}) with IoU {iou:.2f} < "
            f"{config.min_initial_iou} (--min-initial-iou): the video shows another embodiment, "
            "or the generator moved the camera or zoomed. Ingest it for the embodiment it shows, "
            "or generate it from this embodiment's e0 (prepare_reference.py stage1).")
    return iou


def ingest(video_path: str | os.PathLike, embodiment: Embodiment,
           config: IngestConfig = IngestConfig(), masks: Optional[np.ndarray] = None
           ) -> ReferenceBundle:
    """The ReferenceBundle of a generated video of `embodiment` (not saved; see bundle.save).

    `masks` (frames, H, W) bool: the agent masks of the video's frames when they are known
    (synthetic references of skill scenes: MuJoCo's segmentation, since the weight-free
    segmenter would take the chair for the robot); the segmenter is then not run."""
    started = time.perf_counter()
    timings = {}
    control_dt = embodiment.control_dt
    fps_out = 1.0 / control_dt
    video = video_io.read_video(video_path, config.fps, config.min_source_frames)
    num_out = len(resample.source_positions(video.num_frames, video.fps, fps_out))
    if num_out < CLIP_FRAMES:
        raise TooFewFramesError(
            f"Video {video.path} lasts {(video.num_frames - 1) / video.fps:.3f} s "
            f"({video.num_frames} frames at {video.fps:g} fps): {num_out} frames at "
            f"{fps_out:g} Hz, fewer than one {CLIP_FRAMES}-frame clip.")
    height, width = video.frames.shape[1:3]
    video_io.check_portrait(height, width, video.path)
    square = video_io.crop_square(video.frames)
    side = square.shape[1]
    size = config.resolution
    timings["read_s"] = time.perf_counter() - started

    # The prompt: e0's mask at the reference resolution, scaled to the square's.
    _, e0_small = sim_frames.initial_frame(embodiment, size, size)
    e0_mask = video_io.resize_masks(e0_small[None], side)[0]

    tick = time.perf_counter()
    segmenter = "given" if masks is not None else segment.choose(config.segmenter,
                                                                 config.sam2_checkpoint)
    if segmenter == "given":
        if masks.shape != video.frames.shape[:3]:
            raise ValueError(f"given masks {masks.shape} do not match the video's frames "
                             f"{video.frames.shape[:3]}")
        masks = video_io.crop_square(np.asarray(masks, bool))
        segmenter_info = {"name": "given", "note": "agent masks supplied with the video "
                          "(the simulator's segmentation of a synthetic reference)"}
    elif segmenter == "sam2":
        masks = segment.sam2_masks(square, e0_mask, config.sam2_checkpoint, config.sam2_config,
                                   config.sam2_device, config.sam2_overrides)
        segmenter_info = {"name": "sam2", "checkpoint": config.sam2_checkpoint,
                          "config": config.sam2_config, "overrides": list(config.sam2_overrides),
                          "prompt": "simulator e0 mask on frame 0"}
        if config.sam2_checkpoint is None:
            segmenter_info["note"] = "RANDOM SAM 2 weights: masks are meaningless (tests only)"
    else:
        masks = segment.background_masks(square, e0_mask, config.background)
        segmenter_info = {"name": "background", **dataclasses.asdict(config.background),
                          "prompt": "simulator e0 mask tracks the agent from frame 0"}
    timings["segment_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    frames = video_io.resize_frames(square, size)
    masks = video_io.resize_masks(masks, size)
    interpolator, interpolate, interpolator_info = resample.choose(config.interpolator)
    min_pixels = max(1, round(config.min_mask_fraction * size * size))
    masks, gaps = segment.fill_gaps(frames, masks, video.fps, config.max_mask_gap, min_pixels,
                                    interpolate)
    initial_iou = _check_initial_frames(masks, e0_small, config, embodiment)
    frames, masks = resample.resample(frames, masks, video.fps, fps_out, interpolate)
    frames = frames * masks[..., None]  # masked RGB on black, what the video reward sees
    timings["resample_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    encoder, encoder_info = embed.load(config.encoder, config.encoder_checkpoint,
                                       config.random_encoder)
    embeddings = None
    if encoder is not None:
        embeddings = embed.embed_frames(encoder, frames, config.embed_batch)
    encoder_info = _encoder_metadata(encoder_info)
    timings["embed_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    # A skill scene names its skill; a plain floor, the config's.
    skill = embodiment.scene.skill if embodiment.scene is not None else config.skill
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nil_jax": nil_jax.__version__,
        "embodiment": embodiment.name, "camera": embodiment.camera,
        "skill": skill, "prompt": sim_frames.prompt(embodiment, skill),
        "source": {"file": pathlib.Path(video.path).name, "sha256": video.sha256,
                   "frames": video.num_frames, "height": height, "width": width,
                   "fps": video.fps, "crop": list(video_io.center_square(height, width))},
        "fps_in": video.fps, "fps_out": fps_out, "control_dt": control_dt,
        "resample_factor": fps_out / video.fps,
        "resolution": [size, size], "num_frames": int(len(frames)),
        "framing": "central square of the video resized to the resolution (simulation camera)",
        "segmenter": segmenter_info, "interpolator": interpolator_info,
        "mask_gaps_filled": [list(g) for g in gaps], "initial_iou": initial_iou,
        "encoder": encoder_info, "timings": timings,
    }
    logger.info("Ingested %s: %d frames at %g fps -> %d frames at %g Hz (%s, %s, encoder %s) "
                "in %.1f s", video.path, video.num_frames, video.fps, len(frames), fps_out,
                segmenter, interpolator, encoder_info["id"], timings["total_s"])
    return ReferenceBundle(frames=frames.astype(np.uint8), masks=masks, metadata=metadata,
                           embeddings=embeddings)


def add_embeddings(bundle: ReferenceBundle, encoder: str = "pretrained",
                   checkpoint: Optional[str] = None, random_encoder: str = "base",
                   batch_size: int = 8) -> ReferenceBundle:
    """The bundle with (new) embeddings from `encoder`, e.g. once the weights are available."""
    model, info = embed.load(encoder, checkpoint, random_encoder)
    embeddings = None if model is None else embed.embed_frames(model, bundle.frames, batch_size)
    metadata = {**bundle.metadata, "encoder": _encoder_metadata(info)}
    return dataclasses.replace(bundle, embeddings=embeddings, metadata=metadata)
