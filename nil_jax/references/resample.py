"""Resampling a video to the control rate: frame interpolation of frames and masks.

    frames (N, S, S, 3), masks (N, S, S) at fps_in (generators: 24-30 fps)
      --output step k at time k / fps_out lies between source frames i and i+1, weight w-->
      (T, S, S, 3), (T, S, S) at fps_out (100 Hz: 4x for 25 fps), T = floor((N-1) fps_out/fps_in)+1

NIL interpolates the generated video 4x with RIFE before imitation, so that frame t
of the reference is aligned with control step t. Interpolators (INTERPOLATORS):

  "flow"   OpenCV's Farneback optical flow both ways between the neighbours; each neighbour's agent
           pixels are moved linearly to time t (splatted: flow reversal, Xu et al. 2019), which
           gives the agent's coverage at t and the flow back to each neighbour; both neighbours
           are warped there (cv2.remap) and blended (1-t, t) where their agents land. The mask
           at t is the blended coverage >= 0.5.
  "linear" (1-t) a + t b per pixel, masks the same way; no dependency, ghosting on fast limbs.

"auto" is "flow" when OpenCV is installed, else "linear" with a warning. The name and version
used go into the bundle metadata. Host-side numpy, not jitted.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

# pair interpolation: (frame0, frame1, mask0, mask1, weights (K,)) -> frames (K,...), masks (K,...)
PairInterpolator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                            tuple[np.ndarray, np.ndarray]]


def _blend(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    w = w.reshape((-1,) + (1,) * a.ndim)
    return (1.0 - w) * a.astype(np.float32)[None] + w * b.astype(np.float32)[None]


def interpolate_linear(frame0, frame1, mask0, mask1, weights):
    """Cross-fade of frames and mask coverage."""
    frames = np.clip(np.rint(_blend(frame0, frame1, weights)), 0, 255).astype(np.uint8)
    return frames, _blend(mask0, mask1, weights) >= 0.5


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError("The 'flow' interpolator needs OpenCV: pip install "
                          "opencv-python-headless (or choose interpolator 'linear').") from e
    return cv2


# Farneback's dense flow (OpenCV). DIS (preset medium) was tried first: it lost a 12 px motion of
# a small textured disk in one of the two directions, Farneback found both to 0.01 px.
FARNEBACK = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                 flags=0)


def _reverse_flow(flow: np.ndarray, mask: np.ndarray, t: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Flow from time t back to this frame, and the agent's coverage at time t.

    Each agent pixel x moves to x + t flow(x) (linear motion) and is splatted there bilinearly,
    carrying the flow back, -t flow(x) (the flow reversal of Xu et al., "Quadratic Video
    Interpolation", NeurIPS 2019). Only agent pixels are splatted, so the plain background
    (zero flow) never dilutes the agent's motion. Pixels no agent pixel reached get the flow
    of their neighbourhood (normalized Gaussian blur), which only matters outside the agent."""
    cv2 = _cv2()
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    motion = flow[ys, xs].astype(np.float64)  # (n, 2): dx, dy
    px, py = xs + t * motion[:, 0], ys + t * motion[:, 1]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    ax, ay = px - x0, py - y0
    numerator = np.zeros((height, width, 2))
    density = np.zeros((height, width))
    for dx, dy, weight in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)),
                           (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        x, y = x0 + dx, y0 + dy
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        np.add.at(numerator, (y[inside], x[inside]), -t * motion[inside] * weight[inside, None])
        np.add.at(density, (y[inside], x[inside]), weight[inside])
    blurred = cv2.GaussianBlur(np.dstack([numerator, density]).astype(np.float32), (0, 0), 3.0)
    reversed_flow = np.where(density[..., None] > 0.25, numerator / np.maximum(density, 1e-6)[
        ..., None], blurred[..., :2] / np.maximum(blurred[..., 2:], 1e-6))
    coverage = np.minimum(cv2.blur(density.astype(np.float32), (3, 3)), 1.0)
    return reversed_flow.astype(np.float32), coverage


def interpolate_flow(frame0, frame1, mask0, mask1, weights):
    """Bidirectional optical flow, reversed by splatting the agent, backward warping."""
    cv2 = _cv2()
    grey0 = cv2.cvtColor(frame0, cv2.COLOR_RGB2GRAY)
    grey1 = cv2.cvtColor(frame1, cv2.COLOR_RGB2GRAY)
    flow01 = cv2.calcOpticalFlowFarneback(grey0, grey1, None, **FARNEBACK)  # x -> x + flow01(x)
    flow10 = cv2.calcOpticalFlowFarneback(grey1, grey0, None, **FARNEBACK)
    height, width = grey0.shape
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), -1).astype(np.float32)
    frames, masks = [], []
    for t in np.asarray(weights, np.float64):
        flow_t0, cover0 = _reverse_flow(flow01, mask0, t)
        flow_t1, cover1 = _reverse_flow(flow10, mask1, 1.0 - t)
        warped0 = cv2.remap(frame0.astype(np.float32), grid + flow_t0, None, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        warped1 = cv2.remap(frame1.astype(np.float32), grid + flow_t1, None, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        # Each neighbour contributes where its agent lands at time t (no ghosts), else blend.
        w0, w1 = (1 - t) * cover0 + 1e-3 * (1 - t), t * cover1 + 1e-3 * t
        frame = (w0[..., None] * warped0 + w1[..., None] * warped1) / (w0 + w1)[..., None]
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        masks.append((1 - t) * cover0 + t * cover1 >= 0.5)
    return np.stack(frames), np.stack(masks)


INTERPOLATORS: dict[str, PairInterpolator] = {"flow": interpolate_flow,
                                              "linear": interpolate_linear}


def choose(name: str) -> tuple[str, PairInterpolator, dict]:
    """(name, function, metadata) of an interpolator; "auto" picks flow when OpenCV exists."""
    if name == "auto":
        try:
            _cv2()
            name = "flow"
        except ImportError:
            logger.warning("OpenCV is not installed: resampling with the 'linear' interpolator "
                           "(cross-fades; pip install opencv-python-headless for optical flow).")
            name = "linear"
    if name not in INTERPOLATORS:
        raise ValueError(f"Unknown interpolator {name!r}; choose one of "
                         f"{sorted(INTERPOLATORS) + ['auto']}.")
    info = {"name": name}
    if name == "flow":
        info.update(method="opencv Farneback optical flow both ways, agent pixels splatted to "
                           "time t (flow reversal), backward warps blended",
                    opencv=_cv2().__version__)
    return name, INTERPOLATORS[name], info


def source_positions(num_source: int, fps_in: float, fps_out: float) -> np.ndarray:
    """Fractional source-frame position of every output frame (first frames coincide)."""
    num_out = int(np.floor((num_source - 1) * fps_out / fps_in + 1e-9)) + 1
    return np.arange(num_out) * (fps_in / fps_out)


def resample(frames: np.ndarray, masks: np.ndarray, fps_in: float, fps_out: float,
             interpolate: PairInterpolator) -> tuple[np.ndarray, np.ndarray]:
    """Frames and masks at `fps_out`, each output frame interpolated between its neighbours."""
    positions = source_positions(len(frames), fps_in, fps_out)
    index = np.minimum(np.floor(positions + 1e-6).astype(int), len(frames) - 1)
    weight = np.clip(positions - index, 0.0, 1.0)
    weight[weight < 1e-6] = 0.0
    out_frames = np.empty((len(positions),) + frames.shape[1:], np.uint8)
    out_masks = np.empty((len(positions),) + masks.shape[1:], bool)
    exact = weight == 0.0
    out_frames[exact], out_masks[exact] = frames[index[exact]], masks[index[exact]]
    for i in np.unique(index[~exact]):  # one flow computation per source pair
        k = np.flatnonzero((index == i) & ~exact)
        out_frames[k], out_masks[k] = interpolate(frames[i], frames[i + 1], masks[i],
                                                  masks[i + 1], weight[k])
    return out_frames, out_masks
