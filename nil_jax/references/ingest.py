"""Ingest: a generated video of an embodiment -> a ReferenceBundle at the control rate.

    video file --read_video--> frames at fps_in (24-30 fps), sha256
      --central square (the simulation camera's framing, see video_io)-->
      --downscaled to at most segment_resolution (224) for the segmenter-->
      --the first frames segmented and checked against the e0 mask (embodiment, camera or
        framing mismatch: refused before the rest of the video is segmented)-->
      --segment, prompted with the simulator's e0 mask (SAM 2, or the background model)-->
      --resize frames and masks to the resolution (224 x 224)--> --fill short runs of empty
        masks-->
      --resample to the control rate (1 / control_dt = 100 Hz; flow or linear)-->
      --masked RGB on black--> --TimeSformer clip embeddings (when weights exist)-->
    ReferenceBundle (+ metadata: what was done, with which settings)

Synthetic references (`synthetic.py`) go through exactly this function. Host-side, not jitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pathlib
import time
from typing import Optional

import numpy as np

import nil_jax
from nil_jax.envs.embodiments import CAMERA_VIEWS, Embodiment
from nil_jax.references import embed, resample, segment, sim_frames, video_io
from nil_jax.references.bundle import (CLIP_FRAMES, FORMAT, FORMAT_VERSION, ReferenceBundle)
from nil_jax.references.errors import (BackgroundError, EmbodimentMismatchError,
                                       TooFewFramesError)
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
    # Larger frames are shrunk to this side before segmentation, whose cost grows with the
    # pixels (a 480 px video: 17 times faster, README); never below `resolution`.
    segment_resolution: int = 224
    # A silhouette that matches e0's once moved and scaled onto it (IoU of the two bounding
    # boxes' contents at least this) is the right robot re-framed, not another robot or view.
    reframed_iou: float = 0.6

    def __post_init__(self):
        if self.initial_frames < 1:
            raise ValueError(f"initial_frames must be >= 1 (the first frames checked against "
                             f"e0), got {self.initial_frames}")


def _encoder_metadata(info: dict) -> dict:
    return {**info, "clip_frames": CLIP_FRAMES,
            "clip": "frames t-7..t, frame 0 repeated before the start"}


def aligned_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """IoU of `mask` with `reference` once its bounding box is moved and scaled onto the
    reference's: how alike the two silhouettes are, wherever the camera put them."""
    def box(m):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        return m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if not mask.any() or not reference.any():
        return 0.0
    target = box(reference)
    content = video_io.resize_to(box(mask), target.shape)
    return float(mask_iou(content, target))


# Where the check's threshold is set, by the command that ingests.
MIN_INITIAL_IOU_FLAGS = ("--ingest.min-initial-iou for experiments/run.py, --min-initial-iou "
                         "for experiments/prepare_reference.py ingest")


def _check_initial_frames(masks: np.ndarray, e0_mask: np.ndarray, config: IngestConfig,
                          embodiment: Embodiment, first_frame: np.ndarray) -> float:
    """Median IoU of the first frames' masks with e0; raises when below `min_initial_iou`,
    saying which of the two mismatches it is.

    The generator starts from e0, so its first frames must show the same silhouette where the
    simulator draws it. A low IoU is either the right robot re-framed (the generator moved the
    camera or zoomed: the silhouettes match once aligned, `aligned_iou`) or another silhouette
    (another robot, or this robot from another view). The first few frames, not only frame 0,
    because SAM 2 returns the prompt itself on frame 0. Which one it is is judged on
    `first_frame`'s whole foreground (the segmenters, prompted with e0's mask, may find nothing
    of a robot the camera moved), when its background is plain."""
    first = masks[:config.initial_frames]
    iou = float(np.median([float(mask_iou(m, e0_mask)) for m in first]))
    if iou >= config.min_initial_iou:
        return iou
    try:  # no prompt: every foreground component of the frame
        found = segment.background_masks(first_frame[None], np.zeros_like(e0_mask),
                                         config.background)[0]
    except BackgroundError:
        found = first[0]
    aligned = aligned_iou(found, e0_mask)
    seen = (f"The first {len(first)} frames' agent masks overlap the simulator's initial frame "
            f"of {embodiment.name!r} ({embodiment.spec.display_name}, {embodiment.camera} "
            f"camera) with IoU {iou:.2f} < {config.min_initial_iou} (min_initial_iou)")
    if aligned >= config.reframed_iou:
        raise EmbodimentMismatchError(
            f"{seen}, but moved and scaled onto it they match (IoU {aligned:.2f}): the video "
            "shows this robot re-framed; the generator moved the camera or zoomed, and the "
            "reward would compare masks that do not line up. Generate it again from this "
            "embodiment's e0 frame (prepare_reference.py stage1) with a prompt that keeps the "
            "camera still. If the offset is small and you accept it, lower the threshold ("
            f"{MIN_INITIAL_IOU_FLAGS}).")
    views = [view for view in CAMERA_VIEWS if view != embodiment.camera]
    raise EmbodimentMismatchError(
        f"{seen}, and even moved and scaled onto it they do not match (IoU {aligned:.2f}): the "
        f"video shows another embodiment, or {embodiment.name!r} from another view (this run's "
        f"is {embodiment.camera!r}; the others: {', '.join(views)}, --camera). Ingest it for the "
        "robot and view it shows (--embodiment, --camera), or generate it from this "
        "embodiment's e0 frame (prepare_reference.py stage1). Lowering the threshold ("
        f"{MIN_INITIAL_IOU_FLAGS}) would train on a reference that is not this robot's.")


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

    # The segmenter works on frames no larger than segment_resolution (nor smaller than the
    # reference), prompted with e0's mask at that size.
    work = min(side, max(config.segment_resolution, size))
    _, e0_small = sim_frames.initial_frame(embodiment, size, size)
    e0_mask = video_io.resize_masks(e0_small[None], work)[0]
    segmented = video_io.resize_frames(square, work)

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
        run_segmenter = None
    elif segmenter == "sam2":
        def run_segmenter(frames):
            return segment.iter_sam2_masks(frames, e0_mask, config.sam2_checkpoint,
                                           config.sam2_config, config.sam2_device,
                                           config.sam2_overrides)
        segmenter_info = {"name": "sam2", "checkpoint": config.sam2_checkpoint,
                          "config": config.sam2_config, "overrides": list(config.sam2_overrides),
                          "prompt": "simulator e0 mask on frame 0"}
        if config.sam2_checkpoint is None:
            segmenter_info["note"] = "RANDOM SAM 2 weights: masks are meaningless (tests only)"
    else:
        def run_segmenter(frames):
            return segment.iter_background_masks(frames, e0_mask, config.background)
        segmenter_info = {"name": "background", **dataclasses.asdict(config.background),
                          "prompt": "simulator e0 mask tracks the agent from frame 0"}
    if run_segmenter is not None:
        segmenter_info["side"] = work
        # Both segmenters go forward a frame at a time (SAM 2 propagates from the prompt, the
        # background model tracks the last mask): the first frames are checked as soon as
        # they are segmented, and a wrong video is refused before the slow part.
        # Closed on the way out, a refused video included: SAM 2's predictor is let go.
        with contextlib.closing(run_segmenter(segmented)) as stream:
            first = list(itertools.islice(stream, config.initial_frames))
            if config.min_initial_iou > 0:
                _check_initial_frames(video_io.resize_masks(np.stack(first), size), e0_small,
                                      config, embodiment,
                                      video_io.resize_frames(segmented[:1], size)[0])
            masks = np.stack(first + list(stream))
        if len(masks) != len(segmented):
            raise RuntimeError(f"The {segmenter} segmenter gave {len(masks)} masks for "
                               f"{len(segmented)} frames.")
    timings["segment_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    frames = video_io.resize_frames(square, size)
    masks = video_io.resize_masks(masks, size)
    interpolator, interpolate, interpolator_info = resample.choose(config.interpolator)
    min_pixels = max(1, round(config.min_mask_fraction * size * size))
    masks, gaps = segment.fill_gaps(frames, masks, video.fps, config.max_mask_gap, min_pixels,
                                    interpolate)
    initial_iou = _check_initial_frames(masks, e0_small, config, embodiment, frames[0])
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
