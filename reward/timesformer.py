"""TimeSformer video encoder (divided space-time attention) in Flax: the NIL reward's video stream.

A port of Hugging Face's `TimesformerModel` (Bertasius et al., "Is Space-Time Attention All You
Need for Video Understanding?", ICML 2021), parameter for parameter, so that the
`facebook/timesformer-base-finetuned-k400` checkpoint imports unchanged
(`reward.timesformer_weights`).

    clips (B, T, H, W, 3), already normalized (`reward.video_preprocess`)
      --16x16 patches, linear projection--> patches (B, P, T, D), P = (H/16)(W/16)
      --+ position embedding per patch, + time embedding per frame; a CLS token (B, D)
      --12 x [ temporal attention over T per patch      (residual on patches only)
               spatial attention over CLS + P per frame (CLS repeated per frame, averaged after)
               MLP on every token ]
      --final LayerNorm--> tokens; the embedding z is the CLS token (B, D)

The state between layers is kept as (CLS (B, D), patches (B, P, T, D)). Flattening the patches
to (B, P*T, D) gives Hugging Face's token order (patch-major, frame-minor), so
`last_hidden_state` matches HF's `last_hidden_state` token for token.

Other frame counts and resolutions than the checkpoint's work: the time and position
embeddings are resized with PyTorch's `nearest` rule, exactly as HF's
`TimesformerEmbeddings` does (`jax.image.resize('nearest')` rounds differently).

Numerics: parameters stay float32; `dtype=jnp.bfloat16` runs the matmuls and attention in
bf16 (LayerNorm statistics and softmax in float32), for accelerators.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TimesformerConfig:
    """Hugging Face's `TimesformerConfig` fields (same names, same defaults: the base model)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 8
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact (erf) GELU, as HF's ACT2FN["gelu"]
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    attention_type: str = "divided_space_time"
    drop_path_rate: float = 0.0

    def __post_init__(self):
        # Only what the K400 checkpoints use is implemented; anything else fails here, not later.
        if self.attention_type != "divided_space_time":
            raise ValueError(f"attention_type {self.attention_type!r} is not implemented "
                             "(only 'divided_space_time')")
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not implemented (only 'gelu')")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")

    @classmethod
    def from_hf(cls, hf_config: Any) -> "TimesformerConfig":
        """From a `transformers.TimesformerConfig` or its `config.json` dict; extra keys ignored.

        Dropout and drop-path rates are kept for the record; this port is inference only."""
        values = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in fields}
        for key in ("image_size", "patch_size"):  # HF allows (h, w); the checkpoints are square
            if isinstance(kwargs.get(key), (list, tuple)):
                if len(set(kwargs[key])) != 1:
                    raise ValueError(f"non-square {key} {kwargs[key]} is not supported")
                kwargs[key] = int(kwargs[key][0])
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """Keyword arguments for `transformers.TimesformerConfig` (tests, benchmarks).

        The training-only rates (dropout, drop path) are left at HF's defaults: recent
        transformers type-check them strictly (`drop_path_rate` must be an int there)."""
        training_only = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in training_only}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Named variants. "base" is the architecture of facebook/timesformer-base-finetuned-k400.
# "small" keeps the token grid (224 px, 16 px patches, 8 frames) at a ViT-S width.
CONFIGS = {
    "base": TimesformerConfig(),
    "small": TimesformerConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
}


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index under PyTorch's `interpolate(mode='nearest')`.

    PyTorch computes `min(floor(i * float32(in / out)), in - 1)` in float32; half-pixel rounding
    (`jax.image.resize`) picks different neighbours for most size pairs."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


class Embeddings(nn.Module):
    """Patch projection + position embedding (per patch) + time embedding (per frame)."""

    config: TimesformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, T, H, W, C) -> CLS (B, D), patches (B, P, T, D)."""
        cfg = self.config
        batch, frames = pixel_values.shape[:2]
        init = nn.initializers.normal(cfg.initializer_range)  # HF's init; real runs load weights
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        cls_token = self.param("cls_token", init, (cfg.hidden_size,))
        position_embeddings = self.param("position_embeddings", init,
                                         (1 + num_patches, cfg.hidden_size))
        time_embeddings = self.param("time_embeddings", nn.initializers.zeros,
                                     (cfg.num_frames, cfg.hidden_size))

        patches = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                          strides=(cfg.patch_size, cfg.patch_size), padding="VALID",
                          dtype=self.dtype, name="patch_embeddings")(pixel_values)
        grid_h, grid_w = patches.shape[2:4]  # (B, T, h, w, D)
        patch_positions = position_embeddings[1:]
        if grid_h * grid_w != num_patches:
            # HF resizes the (side x side) grid of position embeddings only when the number of
            # patches differs (a 7x28 grid of a 224 model would reuse the 14x14 table as is).
            side = int(num_patches ** 0.5)
            grid = patch_positions.reshape(side, side, cfg.hidden_size)
            grid = grid[torch_nearest_indices(side, grid_h)][:, torch_nearest_indices(side, grid_w)]
            patch_positions = grid.reshape(grid_h * grid_w, cfg.hidden_size)
        time_embeddings = time_embeddings[torch_nearest_indices(cfg.num_frames, frames)]

        patches = patches.reshape(batch, frames, grid_h * grid_w, cfg.hidden_size)
        patches = patches.transpose(0, 2, 1, 3)  # (B, P, T, D): HF's token order
        patches = patches + patch_positions[:, None] + time_embeddings
        # HF adds the CLS position embedding, but no time embedding, to the CLS token.
        cls = jnp.broadcast_to(cls_token + position_embeddings[0], (batch, cfg.hidden_size))
        return cls, patches


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over (N, S, heads, head_dim) inputs.

    Same result as `jax.nn.dot_product_attention`, arranged for the CPU, where the softmax
    passes over the (N, heads, S, S) logits cost as much as the attention matmuls: the scale is
    applied to q (S x d values instead of S x S), and the softmax denominator divides the
    context (S x d) instead of the probabilities. Logits and softmax are float32."""
    scale = np.float32(query.shape[-1] ** -0.5)
    logits = jnp.einsum("nshd,nzhd->nhsz", query * scale.astype(query.dtype), key,
                        preferred_element_type=jnp.float32)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    context = jnp.einsum("nhsz,nzhd->nshd", weights.astype(value.dtype), value,
                         preferred_element_type=jnp.float32)
    denominator = weights.sum(axis=-1).transpose(0, 2, 1)[..., None]  # (N, S, heads, 1)
    return (context / denominator).astype(value.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention along axis -2 of (..., S, D); HF's fused `qkv` projection."""

    config: TimesformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        *batch, length, width = x.shape
        qkv = nn.Dense(3 * width, use_bias=cfg.qkv_bias, dtype=self.dtype, name="qkv")(x)
        # HF's column layout: (3, heads, head_dim).
        qkv = qkv.reshape(-1, length, 3, cfg.num_attention_heads, cfg.head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, S, heads, head_dim)
        context = dot_product_attention(query, key, value)
        context = context.reshape(*batch, length, width)
        return nn.Dense(width, dtype=self.dtype, name="output")(context)


class Layer(nn.Module):
    """One divided space-time block (HF's `TimesformerLayer`, attention_type divided_space_time)."""

    config: TimesformerConfig
    dtype: Any = jnp.float32

    def _layer_norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, state: tuple[jax.Array, jax.Array], _=None):
        cls, patches = state  # (B, D), (B, P, T, D)
        cfg = self.config

        # Temporal attention: each patch attends over its own T frames; CLS does not take part.
        temporal = SelfAttention(cfg, self.dtype, name="temporal_attention")(
            self._layer_norm("temporal_layernorm")(patches))
        temporal = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="temporal_dense")(temporal)
        patches = patches + temporal

        # Spatial attention: per frame over [CLS, patches of that frame]; CLS is repeated into
        # every frame and its T outputs are averaged.
        frames = patches.shape[2]
        per_frame = patches.transpose(0, 2, 1, 3)  # (B, T, P, D)
        cls_per_frame = jnp.broadcast_to(cls[:, None, None], (cls.shape[0], frames, 1,
                                                              cls.shape[-1]))
        tokens = jnp.concatenate([cls_per_frame, per_frame], axis=2)  # (B, T, 1 + P, D)
        spatial = SelfAttention(cfg, self.dtype, name="attention")(
            self._layer_norm("layernorm_before")(tokens))
        cls = cls + spatial[:, :, 0].mean(axis=1)
        patches = patches + spatial[:, :, 1:].transpose(0, 2, 1, 3)

        # MLP on every token. CLS joins the patches for it: on its own, its (B, D) rows make a
        # matrix-vector product that streams the whole weight matrix for B rows (4% of the
        # forward pass on the CPU, measured).
        batch, num_patches, _, width = patches.shape
        tokens = jnp.concatenate([cls[:, None], patches.reshape(batch, -1, width)], axis=1)
        hidden = nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="intermediate")(
            self._layer_norm("layernorm_after")(tokens))
        hidden = jax.nn.gelu(hidden, approximate=False)  # exact erf GELU, as HF
        tokens = tokens + nn.Dense(cfg.hidden_size, dtype=self.dtype, name="output")(hidden)
        cls, patches = tokens[:, 0], tokens[:, 1:].reshape(batch, num_patches, frames, width)
        return (cls, patches), None


class TimesformerModel(nn.Module):
    """HF's `TimesformerModel`: `apply({'params': p}, clips (B, T, H, W, C))` -> (CLS, patches).

    Both are taken after the final LayerNorm, in float32: CLS (B, D), patches (B, P, T, D).
    `last_hidden_state` flattens them into HF's (B, 1 + P*T, D)."""

    config: TimesformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        state = Embeddings(cfg, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
        # The layers run under nn.scan: parameters stacked along a leading layer axis, one
        # compiled layer body (the unrolled 12-layer graph compiles several times slower).
        layers = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=cfg.num_hidden_layers)
        (cls, patches), _ = layers(cfg, self.dtype, name="encoder")(state, None)
        layernorm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name="layernorm")
        return layernorm(cls), layernorm(patches)


def last_hidden_state(model: TimesformerModel, params, clips: jax.Array) -> jax.Array:
    """HF's `last_hidden_state` (B, 1 + P*T, D): CLS, then patch-major, frame-minor tokens."""
    cls, patches = model.apply({"params": params}, clips)
    batch, _, _, width = patches.shape
    return jnp.concatenate([cls[:, None], patches.reshape(batch, -1, width)], axis=1)


def embed(model: TimesformerModel, params, clips: jax.Array) -> jax.Array:
    """Clip embeddings z (B, D): the final CLS token after the last LayerNorm (float32)."""
    cls, _ = model.apply({"params": params}, clips)
    return cls


def cosine_similarity(z_a: jax.Array, z_b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity of paired embeddings (..., D) x (..., D) -> (...)."""
    norms = jnp.linalg.norm(z_a, axis=-1) * jnp.linalg.norm(z_b, axis=-1)
    return jnp.sum(z_a * z_b, axis=-1) / jnp.maximum(norms, eps)
