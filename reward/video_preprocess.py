"""Video frames -> TimeSformer input, jittable, matching the checkpoint's Hugging Face processor.

    frames (..., T, H, W, 3) uint8 in [0, 255] or float in [0, 1]
      --resize: shortest edge to 224, long edge int(224 * long / short), bilinear with PIL's
        antialiasing (its triangle filter widens by the downscale factor)-->
      --center crop 224 x 224 (offsets (H - 224) // 2, as HF)-->
      --values / 255 (uint8 only), (x - 0.45) / 0.225 per channel--> (..., T, 224, 224, 3) f32

This is what `facebook/timesformer-base-finetuned-k400`'s preprocessor_config.json asks for
(VideoMAEImageProcessor: shortest_edge 224, resample 2 = PIL bilinear, crop 224, rescale 1/255,
mean 0.45, std 0.225). HF's PIL processor resizes 8-bit images and rounds the result to 8 bits;
for uint8 input the resized values are rounded here too, so both agree to one grey level
(PIL's fixed-point arithmetic rounds a few values the other way). Float frames are not
quantized (they carry more than 8 bits, e.g. the silhouette renderer's output). Frames that
already have the crop size (224 x 224) pass through the resize unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoPreprocessing:
    """The processor settings; defaults are those of facebook/timesformer-base-finetuned-k400."""

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    image_mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    image_std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    @classmethod
    def from_hf(cls, processor_config: dict) -> "VideoPreprocessing":
        """From a checkpoint's preprocessor_config.json (dict). Only bilinear resizing with
        rescale 1/255 is implemented; anything else raises instead of silently differing."""
        if processor_config.get("resample", 2) != 2:
            raise ValueError(f"resample {processor_config['resample']} is not implemented "
                             "(only 2 = bilinear)")
        if not np.isclose(processor_config.get("rescale_factor", 1 / 255), 1 / 255):
            raise ValueError("only rescale_factor 1/255 is implemented")
        crop = processor_config.get("crop_size", {"height": 224, "width": 224})
        return cls(shortest_edge=int(processor_config["size"]["shortest_edge"]),
                   crop_size=(int(crop["height"]), int(crop["width"])),
                   image_mean=tuple(processor_config["image_mean"]),
                   image_std=tuple(processor_config["image_std"]))

    @classmethod
    def from_checkpoint(cls, folder: str | pathlib.Path) -> "VideoPreprocessing":
        path = pathlib.Path(folder) / "preprocessor_config.json"
        return cls.from_hf(json.loads(path.read_text())) if path.is_file() else cls()


def resized_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """HF's `get_resize_output_image_size(default_to_square=False)`: the long side truncates."""
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def preprocess(frames: jax.Array, settings: VideoPreprocessing = VideoPreprocessing()
               ) -> jax.Array:
    """(..., T, H, W, C) uint8 [0, 255] or float [0, 1] -> normalized float32 (..., T, h, w, 3).

    C is 3 (RGB) or 1 (grey: resized once, then normalized into three equal channels, which is
    what resizing three equal channels gives). Jittable; the output size is static (the crop
    size)."""
    if frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames {frames.shape}: the last axis must hold 3 (RGB) or 1 (grey) "
                         "channels")
    is_uint8 = frames.dtype == jnp.uint8
    height, width = frames.shape[-3:-1]
    new_height, new_width = resized_shape(height, width, settings.shortest_edge)
    crop_height, crop_width = settings.crop_size
    if new_height < crop_height or new_width < crop_width:
        raise ValueError(f"frames resized to {new_height}x{new_width} are smaller than the crop "
                         f"{crop_height}x{crop_width}")
    top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
    scale = 1.0 if is_uint8 else 255.0  # resize on the 0..255 scale, as PIL does
    pixels = frames.astype(jnp.float32) * scale
    # PIL resizes 8-bit images in two passes, width then height, each storing 8-bit results.
    # Only the pixels the center crop keeps are computed.
    for axis, size, start, crop in ((frames.ndim - 2, new_width, left, crop_width),
                                    (frames.ndim - 3, new_height, top, crop_height)):
        if pixels.shape[axis] == size:
            pixels = lax.slice_in_dim(pixels, start, start + crop, axis=axis)
            continue
        pixels = _resize_axis(pixels, axis, *resize_taps(pixels.shape[axis], size, start,
                                                         start + crop))
        if is_uint8:
            pixels = jnp.clip(jnp.floor(pixels + 0.5), 0.0, 255.0)  # PIL rounds half up
    mean = jnp.asarray(settings.image_mean, jnp.float32)
    std = jnp.asarray(settings.image_std, jnp.float32)
    return (pixels / 255.0 - mean) / std


@functools.lru_cache(maxsize=None)
def resize_taps(in_size: int, out_size: int, start: int, stop: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs start..stop-1 of `jax.image.resize(method="linear", antialias=True)` along one
    axis of length in_size -> out_size, as taps: indices and weights, each (stop - start, K),
    output j = sum_k weights[j, k] * input[indices[j, k]].

    The resize matrix is banded (K = 2 taps when enlarging, about 2 x the shrink factor when
    shrinking), so gathering K taps costs out_size x K instead of the dense out_size x in_size
    product. The weights are jax.image.resize's own: its matrix, read off by resizing the
    identity."""
    with jax.ensure_compile_time_eval():
        matrix = np.asarray(jax.image.resize(jnp.eye(in_size, dtype=jnp.float32),
                                             (in_size, out_size), "linear", antialias=True))
    matrix = matrix[:, start:stop]  # [input i, output j]
    num_taps = max(1, int((matrix != 0).sum(axis=0).max()))
    indices = np.zeros((stop - start, num_taps), np.int32)
    weights = np.zeros((stop - start, num_taps), np.float32)
    for j in range(stop - start):
        rows = np.flatnonzero(matrix[:, j])
        indices[j, :len(rows)], weights[j, :len(rows)] = rows, matrix[rows, j]
    return indices, weights


def _resize_axis(pixels: jax.Array, axis: int, indices: np.ndarray, weights: np.ndarray
                 ) -> jax.Array:
    """`pixels` with `axis` resampled by the taps of `resize_taps`."""
    taps = jnp.take(pixels, jnp.asarray(indices), axis=axis)  # axis -> (output, tap)
    weights = weights.reshape(weights.shape + (1,) * (pixels.ndim - 1 - axis))
    return jnp.sum(taps * weights, axis=axis + 1)
