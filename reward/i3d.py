"""Inflated 3D ConvNet (I3D, Inception-v1) in Flax: a Kinetics-400 video encoder for the video stream.

Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset"
(CVPR 2017), as DeepMind's `kinetics-i3d` builds it in Sonnet, so that its Kinetics-400 RGB
weights import unchanged (`reward.i3d_weights`). It is also the network behind FVD.

    clips (B, T, H, W, 3) in [-1, 1]  (`preprocessing(size)`: x / 127.5 - 1)
      --Conv3d_1a_7x7 stride 2--> MaxPool 1x3x3 /1,2,2 --> Conv3d_2b_1x1 --> Conv3d_2c_3x3
      --MaxPool 1x3x3 /1,2,2--> Mixed_3b, Mixed_3c --> MaxPool 3x3x3 /2
      --Mixed_4b..4f--> MaxPool 2x2x2 /2 --> Mixed_5b, Mixed_5c        (B, T/8, H/32, W/32, 1024)
      --[logits] AvgPool 2x7x7 VALID, 1x1x1 conv to 400 classes, mean over time--> (B, 400)

Every convolution is followed by BatchNorm (inference statistics, no scale, epsilon 1e-3, as
Sonnet v1) and a ReLU; every convolution and pooling pads `SAME` the TensorFlow way (more on
the high side), which is what `flax.linen` and `lax.reduce_window` do for "SAME".

Clips of 8 frames at the control rate work: the three temporal strides leave one time step at
Mixed_5c. The logits head needs at least 16 frames and 224 px (its 2x7x7 window); the clip
embedding (`embed`) uses an inner endpoint instead and works at any size >= 32 px.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nil_jax.reward import video_preprocess

# Output channels of the six convolutions of each Inception module: branch 0 1x1; branch 1
# 1x1 then 3x3x3; branch 2 1x1 then 3x3x3; branch 3 (after a 3x3x3 max pool) 1x1.
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
CONVS = {  # name: (features, kernel, stride)
    "Conv3d_1a_7x7": (64, (7, 7, 7), (2, 2, 2)),
    "Conv3d_2b_1x1": (64, (1, 1, 1), (1, 1, 1)),
    "Conv3d_2c_3x3": (192, (3, 3, 3), (1, 1, 1)),
}
POOLS = {  # name: (window, stride); time is pooled only from the third pool on
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}
ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
             "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
             "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b",
             "Mixed_5c", "Logits")
NUM_CLASSES = 400
POOLINGS = ("mean", "grid")  # the embedding: spatio-temporal mean, or the flattened feature map


@functools.cache
def labels() -> tuple[str, ...]:
    """The 400 Kinetics class names in the logits' order (DeepMind's `kinetics-i3d` label map)."""
    path = pathlib.Path(__file__).with_name("kinetics400_labels.txt")
    names = tuple(path.read_text().splitlines())
    assert len(names) == NUM_CLASSES, f"{path} must list {NUM_CLASSES} classes"
    return names


def preprocessing(size: int) -> video_preprocess.VideoPreprocessing:
    """uint8 frames -> [-1, 1] at `size` x `size` (x / 255 - 0.5) / 0.5, the checkpoint's range."""
    return video_preprocess.VideoPreprocessing(shortest_edge=size, crop_size=(size, size),
                                               image_mean=(0.5, 0.5, 0.5),
                                               image_std=(0.5, 0.5, 0.5))


class Unit3D(nn.Module):
    """Sonnet's Unit3D: convolution (no bias), BatchNorm (no scale), ReLU."""

    features: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding="SAME",
                    use_bias=False, dtype=self.dtype, name="conv_3d")(x)
        # Statistics and the normalization in float32: bf16 would round the variances.
        x = nn.BatchNorm(use_running_average=True, use_scale=False, epsilon=1e-3,
                         dtype=jnp.float32, name="batch_norm")(x)
        return nn.relu(x).astype(self.dtype)


def max_pool(x: jax.Array, window: tuple[int, int, int], stride: tuple[int, int, int]):
    return nn.max_pool(x, window_shape=window, strides=stride, padding="SAME")


class InceptionModule(nn.Module):
    features: tuple[int, int, int, int, int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f, dt = self.features, self.dtype
        branch_0 = Unit3D(f[0], dtype=dt, name="Branch_0_Conv3d_0a_1x1")(x)
        branch_1 = Unit3D(f[1], dtype=dt, name="Branch_1_Conv3d_0a_1x1")(x)
        branch_1 = Unit3D(f[2], (3, 3, 3), dtype=dt, name="Branch_1_Conv3d_0b_3x3")(branch_1)
        branch_2 = Unit3D(f[3], dtype=dt, name="Branch_2_Conv3d_0a_1x1")(x)
        branch_2 = Unit3D(f[4], (3, 3, 3), dtype=dt, name="Branch_2_Conv3d_0b_3x3")(branch_2)
        branch_3 = max_pool(x, (3, 3, 3), (1, 1, 1))
        branch_3 = Unit3D(f[5], dtype=dt, name="Branch_3_Conv3d_0b_1x1")(branch_3)
        return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


class InceptionI3d(nn.Module):
    """`apply(variables, clips (B, T, H, W, 3) in [-1, 1])` -> the features at `final_endpoint`
    ((B, T', H', W', C)), or the class logits (B, 400) when it is "Logits".

    `variables` holds `params` and `batch_stats` (mean, var of every BatchNorm)."""

    final_endpoint: str = "Mixed_5c"
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.final_endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown I3D endpoint {self.final_endpoint!r}; choose one of "
                             f"{ENDPOINTS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, clips: jax.Array) -> jax.Array:
        x = clips.astype(self.dtype)
        for name in ENDPOINTS[:-1]:
            x = self._layer(name)(x)
            if name == self.final_endpoint:
                return x.astype(jnp.float32)
        x = nn.avg_pool(x, window_shape=(2, 7, 7), strides=(1, 1, 1), padding="VALID")
        logits = nn.Conv(NUM_CLASSES, (1, 1, 1), use_bias=True, dtype=self.dtype,
                         name="Logits_Conv3d_0c_1x1")(x)
        # The original squeezes the (1, 1) spatial grid and averages the logits over time.
        return jnp.mean(logits.astype(jnp.float32), axis=(1, 2, 3))

    def _layer(self, name: str):
        if name in MIXED:
            return InceptionModule(MIXED[name], self.dtype, name=name)
        if name in POOLS:
            window, stride = POOLS[name]
            return lambda x: max_pool(x, window, stride)
        features, kernel, stride = CONVS[name]
        return Unit3D(features, kernel, stride, self.dtype, name=name)


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """How a clip becomes one embedding vector: the endpoint, pooling and input size; and
    whether the reward centers the embeddings (the reference's mean embedding subtracted from
    the simulation's and the reference's: ReLU features are non-negative, so raw cosines sit
    near 1 for any two clips and rank motions by margins of a few thousandths; the reward
    suite, benchmarks/reward.md)."""

    endpoint: str = "Mixed_5c"
    pooling: str = "mean"  # "mean" over time and space, or "grid": the flattened feature map
    size: int = 112  # frames are resized to size x size
    center: bool = True

    def __post_init__(self):
        if self.endpoint not in ENDPOINTS or self.endpoint == "Logits":
            raise ValueError(f"I3D embedding endpoint must be a feature endpoint, one of "
                             f"{ENDPOINTS[:-1]}; got {self.endpoint!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"I3D pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.size < 32:
            raise ValueError(f"I3D input size must be >= 32 px (five 2x downsamplings), got "
                             f"{self.size}")


def pool(features: jax.Array, pooling: str) -> jax.Array:
    """Feature maps (B, T', H', W', C) -> embeddings (B, D): their mean over time and space
    (D = C), or the flattened map ("grid", D = T' H' W' C: where the body is, not only what)."""
    if pooling == "mean":
        return jnp.mean(features, axis=(1, 2, 3))
    if pooling == "grid":
        return features.reshape(features.shape[0], -1)
    raise ValueError(f"I3D pooling must be one of {POOLINGS}, got {pooling!r}")


def embed(variables: dict, clips: jax.Array, config: EmbeddingConfig = EmbeddingConfig(),
          dtype: Any = jnp.float32) -> jax.Array:
    """Clip embeddings (B, D) float32 of preprocessed clips (B, T, size, size, 3) in [-1, 1]."""
    return pool(InceptionI3d(config.endpoint, dtype).apply(variables, clips), config.pooling)
