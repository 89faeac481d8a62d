"""Segmenting the agent in a generated video, prompted with the simulator's initial-frame mask.

    frames (N, S, S, 3) uint8 (the central square of the video), prompt mask (S, S) bool
    (the e0 mask the simulator rendered) --segmenter--> masks (N, S, S) bool
      --fill_gaps: frames where the agent was not found (empty masks) are interpolated from
        their neighbours when the run is short, and fail loudly (MaskGapError) when it is long

Segmenters (SEGMENTERS):
  "sam2"        SAM 2's video predictor (Ravi et al. 2024), as in NIL: the e0
                mask is added as the object's mask on frame 0 and propagated through the video.
                Needs the `sam2` package (torch) and a checkpoint the user supplies.
  "background"  needs no weights: image-to-video generators continue the plain background that
                stage 1 gives them in e0. Per frame, the background colour is the median of a
                border ring (the agent is framed in the centre); pixels farther than a threshold
                from it are foreground; speckles are removed, small holes filled, and only the
                connected components near the previous frame's mask (frame 0: the prompt mask)
                are kept, which tracks the agent and drops stray blobs. A border that is not
                plain raises BackgroundError (use SAM2 then).
"auto" picks SAM2 when a checkpoint is given and `sam2` imports, else "background" with a
warning. Host-side, not jitted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import tempfile
from typing import Iterator, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from nil_jax.references.errors import BackgroundError, MaskGapError
from nil_jax.references.resample import PairInterpolator

logger = logging.getLogger(__name__)

SAM2_DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@dataclasses.dataclass(frozen=True)
class BackgroundModel:
    """Settings of the weight-free segmenter (fractions are of the square's side S)."""

    border: float = 0.03  # width of the ring that samples the background
    threshold: float = 40.0  # RGB distance (0..441) from the background colour: foreground
    max_border_spread: float = 30.0  # 90th percentile of ring distances above this: not plain
    track_radius: float = 0.08  # components within this distance of the last mask are kept
    min_component: float = 2e-4  # components smaller than this fraction of S^2 are dropped
    max_hole: float = 2e-3  # enclosed holes smaller than this fraction of S^2 are filled


def _ring(side: int, width: int) -> np.ndarray:
    ring = np.zeros((side, side), bool)
    ring[:width], ring[-width:], ring[:, :width], ring[:, -width:] = True, True, True, True
    return ring


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def background_masks(frames: np.ndarray, prompt_mask: np.ndarray,
                     settings: BackgroundModel = BackgroundModel()) -> np.ndarray:
    """Foreground by distance to a plain background colour, tracked from the prompt mask."""
    masks = np.zeros(frames.shape[:3], bool)
    for t, mask in enumerate(iter_background_masks(frames, prompt_mask, settings)):
        masks[t] = mask
    return masks


def iter_background_masks(frames: np.ndarray, prompt_mask: np.ndarray,
                          settings: BackgroundModel = BackgroundModel()
                          ) -> Iterator[np.ndarray]:
    """`background_masks` one frame at a time, in order: a caller may stop early."""
    num, side = frames.shape[0], frames.shape[1]
    ring = _ring(side, max(2, round(settings.border * side)))
    track = _disk(max(1, round(settings.track_radius * side)))
    min_pixels = max(1, round(settings.min_component * side * side))
    max_hole = settings.max_hole * side * side
    anchor = prompt_mask
    for t in range(num):
        mask = np.zeros((side, side), bool)
        pixels = frames[t].astype(np.float32)
        colour = np.median(pixels[ring], axis=0)
        distance = np.linalg.norm(pixels - colour, axis=-1)
        spread = float(np.percentile(distance[ring], 90))
        if spread > settings.max_border_spread:
            raise BackgroundError(
                f"Frame {t}: the background is not plain (colour spread {spread:.0f} along the "
                f"border, more than {settings.max_border_spread:.0f}), so the weight-free "
                "segmenter cannot separate the agent. Use SAM2 (--segmenter sam2 "
                "--sam2-checkpoint ...), or generate the video from e0 on a plain background.")
        foreground = ndimage.binary_opening(distance > settings.threshold)
        holes = ndimage.binary_fill_holes(foreground) & ~foreground
        labels, count = ndimage.label(holes)
        if count:
            sizes = ndimage.sum_labels(holes, labels, np.arange(1, count + 1))
            foreground |= np.isin(labels, 1 + np.flatnonzero(sizes <= max_hole))
        labels, count = ndimage.label(foreground, structure=np.ones((3, 3)))
        if count:
            near = ndimage.binary_dilation(anchor, track) if anchor.any() else np.ones_like(anchor)
            sizes = ndimage.sum_labels(foreground, labels, np.arange(1, count + 1))
            touching = ndimage.maximum(near, labels, np.arange(1, count + 1))
            keep = 1 + np.flatnonzero((sizes >= min_pixels) & (np.asarray(touching) > 0))
            mask = np.isin(labels, keep)
        if mask.any():
            anchor = mask
        yield mask


def iter_sam2_masks(frames: np.ndarray, prompt_mask: np.ndarray, checkpoint: Optional[str],
                    config: str = SAM2_DEFAULT_CONFIG, device: str = "cpu",
                    hydra_overrides: tuple[str, ...] = ()) -> Iterator[np.ndarray]:
    """SAM 2 video predictor: the prompt mask on frame 0, propagated forward, yielded a frame
    at a time in order; a caller may stop early (the predictor is released when the iterator
    is closed).

    `checkpoint=None` builds a randomly initialised model (tests of the code path only: its
    masks are meaningless). `hydra_overrides` are passed to SAM 2's config (e.g.
    "++model.image_size=256" for a small, fast test model)."""
    try:
        import torch
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as e:
        raise ImportError(
            "The 'sam2' segmenter needs the sam2 package: pip install -e '.[sam2]' (SAM 2 and "
            "the torch it needs), plus a checkpoint, e.g. sam2.1_hiera_tiny.pt from the SAM 2 "
            "release; or use --segmenter background.") from e
    if checkpoint is None:
        logger.warning("SAM 2 with RANDOM weights: masks are meaningless (tests only).")
    predictor = build_sam2_video_predictor(config, ckpt_path=checkpoint, device=device,
                                           hydra_overrides_extra=list(hydra_overrides))
    with tempfile.TemporaryDirectory(prefix="nil_sam2_") as folder, torch.inference_mode():
        for t, frame in enumerate(frames):  # SAM 2 reads a folder of numbered JPEG frames
            Image.fromarray(frame).save(os.path.join(folder, f"{t:05d}.jpg"), quality=95)
        state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)  # loads all
        predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=prompt_mask)
    # Outside the block: the caller runs between the masks, and must not find itself in
    # inference mode (SAM 2's propagation enters it for each of its own steps).
    for expected, (t, _, logits) in enumerate(predictor.propagate_in_video(state)):
        if t != expected:  # forward from the prompt on frame 0: 0, 1, 2, ...
            raise RuntimeError(f"SAM 2 propagated frame {t} where {expected} was due.")
        yield logits[0, 0].float().cpu().numpy() > 0.0


SEGMENTERS = ("background", "sam2")


def choose(name: str, sam2_checkpoint: Optional[str]) -> str:
    """Resolves "auto": SAM 2 with a checkpoint when installed, else the background model."""
    if name == "auto":
        if sam2_checkpoint is not None:
            if importlib.util.find_spec("sam2") is not None:
                return "sam2"
            logger.warning("A SAM 2 checkpoint was given but the sam2 package is not "
                           "installed (pip install -e '.[sam2]').")
        logger.warning("Segmenting with the weight-free background model (no SAM 2 "
                       "checkpoint): it needs the plain background generators continue from "
                       "e0. Pass --segmenter sam2 --sam2-checkpoint PATH for SAM 2.")
        return "background"
    if name not in SEGMENTERS:
        raise ValueError(f"Unknown segmenter {name!r}; choose one of {SEGMENTERS + ('auto',)}.")
    return name


def empty_runs(masks: np.ndarray, min_pixels: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) frame ranges where the mask has fewer than `min_pixels` pixels."""
    empty = masks.reshape(len(masks), -1).sum(1) < min_pixels
    runs, start = [], None
    for t, e in enumerate(empty):
        if e and start is None:
            start = t
        if not e and start is not None:
            runs.append((start, t - 1))
            start = None
    if start is not None:
        runs.append((start, len(masks) - 1))
    return runs


def fill_gaps(frames: np.ndarray, masks: np.ndarray, fps: float, max_gap: int,
              min_pixels: int, interpolate: PairInterpolator
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Masks with short runs of empty frames filled; the runs filled (source frame indices).

    A run between two found masks is interpolated across (the frame interpolator, with the
    video's own frames); a run at the start or end holds the nearest found mask. A run longer
    than `max_gap` frames, or no mask at all, raises MaskGapError naming the frames."""
    runs = empty_runs(masks, min_pixels)
    if len(runs) == 1 and runs[0] == (0, len(masks) - 1):
        raise MaskGapError(f"The agent was not found on any of the {len(masks)} frames.")
    long = [(a, b) for a, b in runs if b - a + 1 > max_gap]
    if long:
        described = ", ".join(f"frames {a}-{b} ({a / fps:.2f}-{b / fps:.2f} s, {b - a + 1} "
                              "frames)" for a, b in long)
        raise MaskGapError(
            f"The agent was not found on {described}: longer than the {max_gap} frames that "
            "can be interpolated (--max-mask-gap). Check the video around those frames (does "
            "the agent leave the picture?), or use another segmenter.")
    masks = masks.copy()
    for a, b in runs:
        if a == 0 or b == len(masks) - 1:
            masks[a:b + 1] = masks[b + 1] if a == 0 else masks[a - 1]
            continue
        weights = (np.arange(a, b + 1) - (a - 1)) / (b + 1 - (a - 1))
        _, masks[a:b + 1] = interpolate(frames[a - 1], frames[b + 1], masks[a - 1],
                                        masks[b + 1], weights)
    if runs:
        logger.warning("Agent masks interpolated across empty frames %s.", runs)
    return masks, runs
