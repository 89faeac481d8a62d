"""Reading a generated video, and framing it the way the simulation camera frames the agent.

    file (mp4 / webm / mov / mkv: imageio's FFMPEG plugin; gif: imageio's Pillow plugin)
      --> SourceVideo: frames (N, H, W, 3) uint8, fps, sha256 of the file
      --center_square--> the central H x H square (W >= H), --resize--> 224 x 224

Why a centre crop reproduces the simulation framing: stage 1 renders the initial frame e0 with
the embodiment's tracking camera, whose field of view is vertical (MuJoCo's `fovy`). A square e0
is exactly the 224 x 224 simulation view at another resolution; a landscape e0 (stage 1 with
width > height, for generators that want 16:9) only adds field at the sides, so its central
square is again exactly the simulation view. Image-to-video generators keep the first frame's
composition and, prompted with "camera follows the agent", keep the agent centred at that
scale; so the central square of every generated frame, resized to 224, is what the simulation
camera would see. What breaks it: a generator that zooms, pans away or re-frames (the agent
grows, shrinks or drifts off centre, and the mask IoU reward then asks the policy to match a
wrong scale); portrait output (its central square is a crop of the simulation view). Ingest
checks the first frames against the simulator's e0 mask (`min_initial_iou`) to catch the worst
of this, and a mismatched embodiment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
from typing import Optional

import imageio.v2 as imageio
import imageio.v3 as iio3
import numpy as np
from PIL import Image

from nil_jax.envs.assets import sha256_file  # the file's content digest, as for robot assets
from nil_jax.references.errors import MissingFpsError, TooFewFramesError, VideoReadError

logger = logging.getLogger(__name__)

PILLOW_SUFFIXES = (".gif",)  # read with Pillow: per-frame durations; ffmpeg would invent an fps


@dataclasses.dataclass(frozen=True, eq=False)
class SourceVideo:
    frames: np.ndarray  # (N, H, W, 3) uint8
    fps: float
    sha256: str
    path: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _valid_fps(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _read_ffmpeg(path: pathlib.Path) -> tuple[list[np.ndarray], Optional[float]]:
    with imageio.get_reader(path, format="FFMPEG") as reader:
        fps = _valid_fps(reader.get_meta_data().get("fps"))
        return [np.asarray(frame) for frame in reader], fps


def _read_pillow(path: pathlib.Path) -> tuple[list[np.ndarray], Optional[float]]:
    """GIF: frame durations in ms from Pillow (none stored means no fps)."""
    frames = iio3.imread(path, plugin="pillow", index=None, mode="RGB")
    durations = [iio3.immeta(path, plugin="pillow", index=i).get("duration")
                 for i in range(len(frames))]
    durations = [d for d in durations if _valid_fps(d)]
    fps = None
    if durations:
        if max(durations) - min(durations) > 1:  # ms; GIF delays are in 10 ms steps
            logger.warning("%s has variable frame durations (%s ms); using the median.", path,
                           sorted(set(durations)))
        fps = 1000.0 / float(np.median(durations))
    return list(frames), fps


def read_video(path: str | os.PathLike, fps: Optional[float] = None,
               min_frames: int = 8) -> SourceVideo:
    """Every frame of a video file as RGB uint8, with its frame rate. Not jitted.

    `fps` overrides (or supplies) the file's frame rate. Raises VideoReadError (missing,
    unreadable, corrupt, truncated), MissingFpsError, TooFewFramesError (< `min_frames`)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise VideoReadError(f"Video file {path} does not exist.")
    reader = _read_pillow if path.suffix.lower() in PILLOW_SUFFIXES else _read_ffmpeg
    try:
        frames, file_fps = reader(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
        detail = str(e).strip().splitlines()
        raise VideoReadError(
            f"Could not decode video {path}: the file is unreadable, corrupt or truncated "
            f"({type(e).__name__}: {detail[-1] if detail else ''}).") from e
    if not frames:
        raise VideoReadError(f"Video {path} decodes to no frames (empty or corrupt file).")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"Video {path} has frames of different sizes {sorted(shapes)}.")
    frames = np.stack(frames)
    if frames.ndim == 3:  # greyscale
        frames = np.repeat(frames[..., None], 3, axis=-1)
    frames = frames[..., :3].astype(np.uint8)
    if fps is not None:
        if _valid_fps(fps) is None:
            raise MissingFpsError(f"fps={fps!r} is not a positive frame rate.")
        if file_fps is not None and not math.isclose(fps, file_fps, rel_tol=1e-3):
            logger.warning("%s says %.3f fps; using %.3f fps as asked.", path, file_fps, fps)
        file_fps = float(fps)
    if file_fps is None:
        raise MissingFpsError(
            f"Video {path} does not state its frame rate, and the frame rate decides how the "
            "video is resampled to the control rate. Pass it explicitly (fps=... or --fps "
            "24), as the generator documents it.")
    if len(frames) < min_frames:
        raise TooFewFramesError(
            f"Video {path} has {len(frames)} frames; at least {min_frames} are needed "
            f"(--min-source-frames).")
    return SourceVideo(frames=frames, fps=file_fps, sha256=sha256_file(path), path=str(path))


def center_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the central square of an image."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def crop_square(images: np.ndarray) -> np.ndarray:
    """The central square of (N, H, W, ...) images."""
    top, left, side = center_square(*images.shape[1:3])
    return images[:, top:top + side, left:left + side]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, size, size, 3) uint8: shrunk by area averaging (each pixel
    the mean of the pixels it covers, as a camera of that resolution would see them), enlarged
    bilinearly. A wider filter (Pillow's antialiased bilinear) smears the agent's edge over
    more pixels, and the background segmenter takes the smear for the agent: its masks of a
    448 px video shrunk to 224 px were 14% too large (IoU 0.875 against 0.955 with areas)."""
    if frames.shape[1:3] == (size, size):
        return frames.copy()
    method = Image.BOX if size < frames.shape[1] else Image.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), method))
                     for f in frames])


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) bool -> (N, size, size) bool: area-weighted coverage >= 0.5."""
    if masks.shape[1:3] == (size, size):
        return masks.astype(bool)
    return np.stack([resize_to(m, (size, size)) for m in masks])


def resize_to(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> `shape` (rows, columns) bool: area-weighted coverage >= 0.5."""
    resized = Image.fromarray(mask.astype(np.float32)).resize((shape[1], shape[0]),
                                                               Image.BILINEAR)
    return np.asarray(resized) >= 0.5


def check_portrait(height: int, width: int, path: str) -> None:
    if height > width:
        logger.warning(
            "%s is portrait (%dx%d): its central square is narrower than the simulation "
            "camera's view, so the agent will look larger than in simulation. Generate "
            "square or landscape videos.", path, width, height)

