"""Reference clip embeddings z_F: the Flax TimeSformer over the clip ending at every frame.

    frames (T, 224, 224, 3) uint8, masked RGB on black
      --clip t = frames t-7..t (frame 0 repeated before the start; `bundle.clip_indices`)-->
      --reward.video_preprocess (the checkpoint's normalization)--> TimeSformer --> z (T, D)

This is the reference half of NIL's video reward S_v,t = cos(z_F_t, z_E_t),
precomputed once. Encoders (ENCODERS):
  "pretrained"  a Hugging Face checkpoint through `reward.timesformer_weights.load_pretrained`
                (default facebook/timesformer-base-finetuned-k400; never downloaded)
  "auto"        pretrained when its weights are here; otherwise no embeddings (frames only),
                with a warning and `encoder.note` in the metadata
  "random"      random weights (tests, smoke runs): id "random", flagged in the metadata
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
from nil_jax.reward import timesformer, timesformer_weights, video_preprocess

logger = logging.getLogger(__name__)

ENCODERS = ("auto", "pretrained", "random", "none")
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
    id: str  # checkpoint (hub id or folder), or "random"
    config: timesformer.TimesformerConfig
    params: dict
    preprocessing: video_preprocess.VideoPreprocessing
    info: dict  # metadata: id, checkpoint digest or random seed, preprocessing


def load(name: str, checkpoint: Optional[str] = None, random_config: str = "base",
         seed: int = 0) -> tuple[Optional[Encoder], dict]:
    """(encoder or None, metadata). `random_config`: the random encoder's architecture, a name
    in RANDOM_CONFIGS."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {ENCODERS}.")
    if name == "none":
        return None, {"id": None, "note": "no embeddings requested (frames only)"}
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
        if name == "pretrained":
            raise
        note = ("TimeSformer weights not available: frames and masks only, no embeddings. "
                "Add them later with `experiments/prepare_reference.py embed`.")
        logger.warning("%s\n%s", note, e)
        return None, {"id": None, "note": note}
    encoder_id = str(checkpoint or timesformer_weights.DEFAULT_CHECKPOINT)
    preprocessing = video_preprocess.VideoPreprocessing.from_checkpoint(folder)
    info = {"id": encoder_id, "checkpoint_sha256": timesformer_weights.checkpoint_key(folder),
            "config": dataclasses.asdict(config)}
    return Encoder(encoder_id, config, params, preprocessing, info), info


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed_clips(config: timesformer.TimesformerConfig,
                 preprocessing: video_preprocess.VideoPreprocessing, params: dict,
                 clips: jax.Array) -> jax.Array:
    """(B, T, 224, 224, 3) uint8 clips -> (B, D); compiled once per config and batch size."""
    model = timesformer.TimesformerModel(config)
    return timesformer.embed(model, params, video_preprocess.preprocess(clips, preprocessing))


def embed_frames(encoder: Encoder, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(T, D) float32 embeddings of the clips ending at each of the T frames. Not jitted
    itself; runs one jitted batch of clips at a time."""
    clip_frames = encoder.config.num_frames
    if clip_frames != CLIP_FRAMES:
        logger.warning("Encoder clips have %d frames, NIL uses %d.", clip_frames, CLIP_FRAMES)
    indices = clip_indices(len(frames), clip_frames)
    out = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])
        embeddings = _embed_clips(encoder.config, encoder.preprocessing, encoder.params,
                                  jnp.asarray(frames[padded]))
        out.append(np.asarray(embeddings)[:len(batch)])
    return np.concatenate(out).astype(np.float32)
