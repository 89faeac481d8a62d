"""Frames of a simulated trajectory from MuJoCo's own renderer, and atomic video files.

    qpos trajectory (T, nq) --mj_kinematics + mujoco.Renderer (tracking camera)--> (T, H, W, 3)
    frames --imageio (ffmpeg)--> tmp file --os.replace--> path.mp4
    frames (T, H, W[, C]) --resize_frames--> (T, size, size[, C])

Headless machines need an OpenGL backend: MUJOCO_GL=egl (set before mujoco is imported).
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import cv2
import imageio.v2 as imageio
import mujoco
import numpy as np

from nil_jax.io_utils import publish


def render_trajectory(model: mujoco.MjModel, qpos: np.ndarray, camera: int | str,
                      height: int = 224, width: int = 224) -> np.ndarray:
    """uint8 frames (T, height, width, 3) of the poses `qpos` (T, nq) seen from `camera`."""
    data = mujoco.MjData(model)
    frames = np.empty((len(qpos), height, width, 3), np.uint8)
    try:
        renderer = mujoco.Renderer(model, height, width)
    except Exception as e:  # no usable OpenGL context
        raise RuntimeError(
            f"MuJoCo could not create an OpenGL context ({e}). On a headless machine set "
            "MUJOCO_GL=egl (Mesa or NVIDIA EGL) or MUJOCO_GL=osmesa before starting Python."
        ) from e
    with renderer:
        for t, q in enumerate(qpos):
            data.qpos[:] = q
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=camera)
            frames[t] = renderer.render()
    return frames


def resize_frames(frames: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """(T, H, W[, C]) -> (T, size, size[, C]): pixel-area averages, or the nearest pixel."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (size, size), interpolation=interpolation) for f in frames])


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> pathlib.Path:
    """Writes frames to `path` (mp4/webm by suffix) through a temporary file, then renames."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    try:
        # ffmpeg's default codec for mp4 (libx264) does not fit a webm container.
        codec = {".webm": "libvpx-vp9"}.get(path.suffix.lower())
        imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1,
                         **({"codec": codec} if codec else {}))
        publish(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
