"""The NIL reward of a batch of environments: video similarity + mask IoU + physical penalties.

    R_t = zeta * S_v + beta * S_M + eta * P_t                      (zeta = beta = eta = 1)

    sim frame at t (renderer: mask, shade) --push--> clip buffer (B, 8, H, W) uint8, frames
        t-7..t, the episode's first frame repeated before its start (as the reference's clips)
    S_v = cos(z_ref[t], TimeSformer(clip))    every `video_stride`-th step, held in between
    S_M = IoU(sim mask at t, reference mask at t)
    P_t = regularizers.penalties(...)          (each term <= 0)

t is each environment's own control step since its reset: the reference and the simulation
both run at the control rate, so reference frame t is the target at step t. Everything here is
jittable and batched over environments; the video stream is the expensive part, so it runs
for the whole batch or not at all (`video_stride`, one scalar condition), never per env.

The encoder sees the simulation as the masked shaded grey frame (`encoder_input="shade"`) or as
the bare silhouette (`"silhouette"`), in three equal channels, through the checkpoint's
preprocessing; the reference embeddings were computed by the same encoder from the reference's
masked frames (`nil_jax.references`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from nil_jax.references.bundle import CLIP_FRAMES  # n_T: the clips the bundles embed
from nil_jax.reward import i3d, regularizers, renderer, timesformer, video_preprocess

ENCODER_INPUTS = ("shade", "silhouette")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of the three streams (0 switches one off) and how the video stream runs."""

    video_weight: float = 1.0  # zeta
    iou_weight: float = 1.0  # beta
    regularizer_weight: float = 1.0  # eta
    regularizers: regularizers.RegularizerScales = regularizers.RegularizerScales()
    video_stride: int = 1  # the video stream runs every k-th control step, held in between
    encoder_input: str = "shade"

    def __post_init__(self):
        if self.video_stride < 1:
            raise ValueError(f"video_stride must be >= 1, got {self.video_stride}")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got "
                             f"{self.encoder_input!r}")
        for name in ("video_weight", "iou_weight", "regularizer_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@struct.dataclass
class Reference:
    """The reference on the device: masks (T, H, W) bool, embeddings (T, D) or None."""

    masks: jax.Array
    embeddings: Optional[jax.Array]

    @property
    def length(self) -> int:
        return self.masks.shape[0]


@dataclasses.dataclass(frozen=True)
class VideoEncoder:
    """The clip encoder and its weights (a model built with dtype bfloat16 runs in bf16 on
    accelerators): a TimeSformer, whose embedding is its CLS token, or an I3D, whose embedding
    is its feature map at the model's endpoint pooled by `pooling` (`i3d.POOLINGS`)."""

    model: timesformer.TimesformerModel | i3d.InceptionI3d
    params: Any  # TimeSformer params, or I3D variables {'params', 'batch_stats'}
    preprocessing: video_preprocess.VideoPreprocessing = video_preprocess.VideoPreprocessing()
    pooling: str = "mean"  # I3D only
    # Subtracted from the embeddings before the cosine (the reference's mean embedding, which
    # the reference embeddings handed to the reward already have subtracted), or None.
    center: Optional[jax.Array] = None


def embed_pixels(encoder: VideoEncoder, pixels: jax.Array) -> jax.Array:
    """Embeddings (B, D) float32 of preprocessed clips (B, T, H, W, 3)."""
    if isinstance(encoder.model, i3d.InceptionI3d):
        return i3d.pool(encoder.model.apply(encoder.params, pixels), encoder.pooling)
    return timesformer.embed(encoder.model, encoder.params, pixels)


def encoder_frame(config: RewardConfig, frames: dict[str, jax.Array]) -> jax.Array:
    """The uint8 (B, H, W) image the encoder will see of each environment's current frame."""
    if config.encoder_input == "silhouette":
        return frames["mask"].astype(jnp.uint8) * 255
    # The renderer's shade comes in 1/255 steps, so this is exact.
    return jnp.round(frames["shade"] * 255).astype(jnp.uint8)


def push_frame(clips: jax.Array, frame: jax.Array, first: jax.Array) -> jax.Array:
    """clips (B, 8, H, W) uint8 -> the same with `frame` (B, H, W) appended, the oldest dropped.

    Environments whose episode starts with this frame (`first`, (B,) bool) get a clip of
    eight copies of it: the padding the reference's first clips have."""
    shifted = jnp.concatenate([clips[:, 1:], frame[:, None]], axis=1)
    repeated = jnp.broadcast_to(frame[:, None], clips.shape)
    return jnp.where(first[:, None, None, None], repeated, shifted)


def embed_clips(encoder: VideoEncoder, clips: jax.Array) -> jax.Array:
    """Embeddings (B, D) of grey uint8 clips (B, 8, H, W): the grey in three equal channels,
    through the encoder's preprocessing (which resizes the one grey channel)."""
    return embed_pixels(encoder, video_preprocess.preprocess(clips[..., None],
                                                             encoder.preprocessing))


def video_similarity(encoder: VideoEncoder, clips: jax.Array,
                     reference_embeddings: jax.Array) -> jax.Array:
    """S_v (B,): cosine of the encoder's embeddings of uint8 clips (B, 8, H, W) and z_ref (B, D)."""
    z = embed_clips(encoder, clips)
    if encoder.center is not None:
        z = z - encoder.center.astype(z.dtype)
    return timesformer.cosine_similarity(z, reference_embeddings.astype(z.dtype))


def reference_index(reference: Reference, step: jax.Array) -> jax.Array:
    """Reference frame of control step `step` (B,); past the end, the last frame (episodes are
    truncated there, so this only guards the last transition)."""
    return jnp.clip(step, 0, reference.length - 1)


def streams(config: RewardConfig, reference: Reference, encoder: Optional[VideoEncoder], *,
            step: jax.Array, frames: dict[str, jax.Array], clips: jax.Array,
            previous_similarity: jax.Array, run_video: jax.Array) -> dict[str, jax.Array]:
    """The two similarity streams of a batch: `reward/iou` and `reward/video` (B,).

    step (B,) control step of each env; frames: the renderer's output for the batch; clips: the
    clip buffer after this frame was pushed; run_video (): whether the video stream runs now
    (else `previous_similarity` is held)."""
    index = reference_index(reference, step)
    out = {"reward/iou": renderer.mask_iou(frames["mask"], reference.masks[index])}
    if config.video_weight > 0:
        if encoder is None or reference.embeddings is None:
            raise ValueError("The video stream needs a video encoder and reference embeddings; "
                             "set video_weight=0 to train without it.")
        z_ref = reference.embeddings[index]
        out["reward/video"] = jax.lax.cond(
            run_video, lambda: video_similarity(encoder, clips, z_ref).astype(
                previous_similarity.dtype), lambda: previous_similarity)
    return out


def combine(config: RewardConfig, terms: dict[str, jax.Array]) -> jax.Array:
    """R_t from the streams (`reward/iou`, `reward/video`) and `penalty/total`."""
    reward = config.regularizer_weight * terms["penalty/total"]
    if config.iou_weight > 0:
        reward = reward + config.iou_weight * terms["reward/iou"]
    if config.video_weight > 0:
        reward = reward + config.video_weight * terms["reward/video"]
    return reward
