"""TimeSformer weights: a Hugging Face checkpoint converted to the Flax parameter tree, cached.

    checkpoint: a local folder, or a hub id found in the local Hugging Face cache
      (default facebook/timesformer-base-finetuned-k400; `NIL_JAX_TIMESFORMER` overrides)
      --config.json--> TimesformerConfig
      --model.safetensors (safetensors) or pytorch_model.bin (torch.load)--> state dict
      --drop the `timesformer.` prefix of the video-classification checkpoint, ignore the
        classifier head; rename, transpose, stack the 12 layers; check every shape-->
      Flax params
      --cached as $NIL_JAX_CACHE/timesformer/<sha256 of config + weight files>.msgpack

Nothing is downloaded here: a run never depends on the network. A missing checkpoint raises
`TimesformerWeightsError` saying how to fetch it. Random weights exist only through
`random_params`, which is asked for explicitly (tests, smoke runs) and logs a loud warning.

The cache file is written to a temporary name and renamed into place; a sidecar JSON records the
sha256 of the cache file itself, so a truncated, damaged or stale cache is detected at load and
converted again from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.io_utils import cache_base, write_bytes, write_json
from nil_jax.reward.timesformer import TimesformerConfig, TimesformerModel

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "facebook/timesformer-base-finetuned-k400"
CHECKPOINT_ENV = "NIL_JAX_TIMESFORMER"  # a local checkpoint folder or a hub id
CACHE_FORMAT = 1  # bump when the converted layout changes: old cache files are then ignored

SAFETENSORS_NAME, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PYTORCH_NAME, PYTORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
CLASSIFICATION_PREFIX = "timesformer."  # TimesformerForVideoClassification's base model
IGNORED_PREFIXES = ("classifier.",)  # the K400 classification head is not part of the encoder


class TimesformerWeightsError(RuntimeError):
    """A TimeSformer checkpoint is missing, unreadable or does not fit the model."""


def how_to_get(checkpoint: str) -> str:
    return (
        "nil-jax never downloads weights during a run. On a machine with internet access run\n"
        f"    hf download {checkpoint}        (huggingface_hub < 1.0: huggingface-cli download "
        f"{checkpoint})\n"
        "or\n"
        "    python -c \"from huggingface_hub import snapshot_download; "
        f"snapshot_download('{checkpoint}')\"\n"
        "then either keep that Hugging Face cache (HF_HOME / HF_HUB_CACHE) visible to this "
        f"machine, or copy the snapshot folder here and set {CHECKPOINT_ENV}=/path/to/folder "
        "(or pass checkpoint='/path/to/folder').\n"
        "Tests and smoke runs may use random weights instead, explicitly: "
        "timesformer_weights.random_params(config, seed)."
    )


def resolve_checkpoint(checkpoint: str | os.PathLike | None = None) -> pathlib.Path:
    """The local folder of `checkpoint` (default: $NIL_JAX_TIMESFORMER, else the K400 model).

    A hub id is looked up in the local Hugging Face cache only (`local_files_only=True`)."""
    checkpoint = str(checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)
    path = pathlib.Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return pathlib.Path(snapshot_download(checkpoint, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as e:
        from huggingface_hub import constants

        raise TimesformerWeightsError(
            f"TimeSformer checkpoint {checkpoint!r} not found: it is neither a local folder nor "
            f"in the Hugging Face cache ({constants.HF_HUB_CACHE}).\n" + how_to_get(checkpoint)
        ) from e


def read_config(folder: pathlib.Path) -> TimesformerConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TimesformerWeightsError(f"{folder} has no config.json, so it is not a Hugging Face "
                                      "checkpoint folder.\n" + how_to_get(DEFAULT_CHECKPOINT))
    return TimesformerConfig.from_hf(json.loads(config_file.read_text()))


def weight_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The checkpoint's weight files, safetensors preferred; shards through their index."""
    for single, index in ((SAFETENSORS_NAME, SAFETENSORS_INDEX), (PYTORCH_NAME, PYTORCH_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    raise TimesformerWeightsError(
        f"{folder} has no {SAFETENSORS_NAME} or {PYTORCH_NAME} (nor a sharded index).\n"
        + how_to_get(DEFAULT_CHECKPOINT))


def read_state_dict(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """Every tensor of the weight files as float32 numpy arrays, by Hugging Face name."""
    state_dict = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            # framework="flax" reads bfloat16 checkpoints too (numpy has no bfloat16).
            with safe_open(file, framework="flax") as f:
                for name in f.keys():
                    state_dict[name] = np.asarray(f.get_tensor(name), np.float32)
        else:
            try:
                import torch
            except ImportError as e:
                raise TimesformerWeightsError(
                    f"{file} is a PyTorch pickle, which only torch can read, and torch is not "
                    "installed. Install it (pip install torch, or pip install -e '.[dev]'), or "
                    "convert the checkpoint to safetensors once elsewhere (transformers: "
                    "TimesformerModel.from_pretrained(folder).save_pretrained(new_folder))."
                ) from e
            tensors = torch.load(file, map_location="cpu", weights_only=True)
            state_dict.update({k: v.float().numpy() for k, v in tensors.items()})
    return state_dict


# Per-layer modules: Hugging Face name inside `encoder.layer.{i}` -> Flax path inside `encoder`.
LAYER_MODULES = {
    "temporal_layernorm": ("temporal_layernorm",),
    "temporal_attention.attention.qkv": ("temporal_attention", "qkv"),
    "temporal_attention.output.dense": ("temporal_attention", "output"),
    "temporal_dense": ("temporal_dense",),
    "layernorm_before": ("layernorm_before",),
    "attention.attention.qkv": ("attention", "qkv"),
    "attention.output.dense": ("attention", "output"),
    "layernorm_after": ("layernorm_after",),
    "intermediate.dense": ("intermediate",),
    "output.dense": ("output",),
}


def _leaf(module_path: tuple[str, ...], hf_leaf: str, layernorm: bool) -> tuple[str, ...]:
    """torch LayerNorm weight -> Flax scale; torch Linear/Conv weight -> Flax kernel."""
    if hf_leaf == "bias":
        return module_path + ("bias",)
    return module_path + ("scale" if layernorm else "kernel",)


def _to_flax(value: np.ndarray, flax_path: tuple[str, ...]) -> np.ndarray:
    """A torch tensor in the layout of the Flax parameter at `flax_path`."""
    leaf = flax_path[-1]
    if leaf == "kernel" and value.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel":  # Linear (out, in) -> (in, out)
        return value.T
    if leaf == "cls_token":  # (1, 1, D) -> (D,)
        return value.reshape(value.shape[-1])
    if leaf in ("position_embeddings", "time_embeddings"):  # (1, N, D) -> (N, D)
        return value.reshape(value.shape[-2:])
    return value


def parameter_map(config: TimesformerConfig) -> dict[str, tuple[tuple[str, ...], int | None]]:
    """Every Hugging Face parameter name -> (Flax path, layer index or None)."""
    names = {
        "embeddings.cls_token": (("embeddings", "cls_token"), None),
        "embeddings.position_embeddings": (("embeddings", "position_embeddings"), None),
        "embeddings.time_embeddings": (("embeddings", "time_embeddings"), None),
        "embeddings.patch_embeddings.projection.weight":
            (("embeddings", "patch_embeddings", "kernel"), None),
        "embeddings.patch_embeddings.projection.bias":
            (("embeddings", "patch_embeddings", "bias"), None),
        "layernorm.weight": (("layernorm", "scale"), None),
        "layernorm.bias": (("layernorm", "bias"), None),
    }
    leaves = ("weight", "bias") if config.qkv_bias else ("weight",)
    for layer in range(config.num_hidden_layers):
        for hf_module, flax_module in LAYER_MODULES.items():
            is_layernorm = "layernorm" in hf_module
            for leaf in ("weight", "bias") if not hf_module.endswith("qkv") else leaves:
                names[f"encoder.layer.{layer}.{hf_module}.{leaf}"] = (
                    _leaf(("encoder",) + flax_module, leaf, is_layernorm), layer)
    return names


def expected_shapes(config: TimesformerConfig) -> dict:
    """The Flax parameter tree of `config` as ShapeDtypeStructs (traced, nothing computed)."""
    model = TimesformerModel(config)
    clip = jax.ShapeDtypeStruct((1, config.num_frames, config.image_size, config.image_size,
                                 config.num_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)["params"]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       config: TimesformerConfig) -> dict:
    """Hugging Face `TimesformerModel` (or ...ForVideoClassification) tensors -> Flax params.

    Raises TimesformerWeightsError listing missing and unexpected names and wrong shapes."""
    names = {}
    for name, value in state_dict.items():
        if name.startswith(CLASSIFICATION_PREFIX):
            name = name[len(CLASSIFICATION_PREFIX):]
        elif name.startswith(IGNORED_PREFIXES):
            continue
        names[name] = value
    mapping = parameter_map(config)
    missing = sorted(set(mapping) - set(names))
    unexpected = sorted(set(names) - set(mapping))
    if missing or unexpected:
        raise TimesformerWeightsError(
            f"The checkpoint does not fit TimesformerModel({config}):\n"
            f"  missing ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
            f"  unexpected ({len(unexpected)}): {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}")

    shapes = expected_shapes(config)
    per_layer: dict[tuple[str, ...], list] = {}
    params: dict = {}
    wrong = []
    for name, (path, layer) in mapping.items():
        value = _to_flax(np.asarray(names[name], np.float32), path)
        expected = _get(shapes, path).shape
        if layer is not None:
            expected = expected[1:]  # one layer of the stack
        if value.shape != expected:
            wrong.append(f"{name}: {names[name].shape} -> {value.shape} in Flax layout, "
                         f"expected {expected}")
        elif layer is None:
            _set(params, path, value)
        else:
            per_layer.setdefault(path, [None] * config.num_hidden_layers)[layer] = value
    if wrong:
        raise TimesformerWeightsError("Checkpoint shapes do not fit the config:\n  "
                                      + "\n  ".join(wrong))
    for path, layers in per_layer.items():  # nn.scan keeps the layers stacked on axis 0
        _set(params, path, np.stack(layers))
    return params


def random_params(config: TimesformerConfig, seed: int = 0) -> dict:
    """Random parameters, for tests and smoke runs only; says so loudly. Not jitted.

    HF's initialization (`TimesformerPreTrainedModel._init_weights`): weights and the CLS and
    position embeddings normal with std `initializer_range`, biases and time embeddings zero,
    LayerNorm scales one. Drawn with numpy: compiling `model.init` takes longer than a forward
    pass on the CPU."""
    logger.warning(
        "\n" + "!" * 78 + "\n!! TimeSformer with RANDOM weights (seed %d): video embeddings are "
        "meaningless.\n!! Use only for tests and smoke runs. Real weights: "
        "timesformer_weights.load_pretrained().\n" + "!" * 78, seed)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, jnp.float32)
        if name in ("bias", "time_embeddings"):
            return jnp.zeros(leaf.shape, jnp.float32)
        return jnp.asarray(rng.normal(0.0, config.initializer_range, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, expected_shapes(config))


# --- on-disk cache of converted parameters ------------------------------------------------------


def cache_dir() -> pathlib.Path:
    """$NIL_JAX_CACHE/timesformer (default ~/.cache/nil_jax/timesformer), as envs.assets."""
    return cache_base() / "timesformer"


def _sha256(paths: list[pathlib.Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def checkpoint_key(folder: pathlib.Path) -> str:
    """Content hash of config.json and the weight files (not of their paths or dates)."""
    return _sha256([folder / "config.json"] + weight_files(folder))


def _cache_paths(key: str, directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"{key}.v{CACHE_FORMAT}"
    return directory / f"{stem}.msgpack", directory / f"{stem}.json"


def _read_cache(key: str, directory: pathlib.Path, config: TimesformerConfig) -> dict | None:
    """Cached params if present and intact; None (and the bad files removed) otherwise."""
    params_file, record_file = _cache_paths(key, directory)
    if not params_file.exists():
        return None
    try:
        record = json.loads(record_file.read_text())
        payload = params_file.read_bytes()
        if hashlib.sha256(payload).hexdigest() != record["params_sha256"]:
            raise ValueError("sha256 of the cache file differs from its record")
        params = flax.serialization.msgpack_restore(payload)
        shapes = jax.tree.map(lambda s: s.shape, expected_shapes(config))
        if jax.tree.map(np.shape, params) != shapes:
            raise ValueError("parameter tree does not fit the config")
        return params
    except Exception as e:  # noqa: BLE001 - any damage means: convert again
        logger.warning("TimeSformer parameter cache %s is unusable (%s); converting the "
                       "checkpoint again.", params_file, e)
        params_file.unlink(missing_ok=True)
        record_file.unlink(missing_ok=True)
        return None


def _write_cache(key: str, directory: pathlib.Path, params: dict, source: pathlib.Path) -> None:
    params_file, record_file = _cache_paths(key, directory)
    payload = flax.serialization.msgpack_serialize(params)
    write_bytes(params_file, payload)
    # Written after the payload: a cache file without a matching record is never trusted.
    write_json(record_file, dict(params_sha256=hashlib.sha256(payload).hexdigest(),
                                 source=str(source), format=CACHE_FORMAT))


def load_pretrained(checkpoint: str | os.PathLike | None = None, *,
                    cache: str | os.PathLike | None = None,
                    use_cache: bool = True) -> tuple[TimesformerConfig, dict]:
    """(config, params) of a Hugging Face TimeSformer checkpoint; not jitted.

    `checkpoint`: local folder or hub id (default $NIL_JAX_TIMESFORMER, else
    facebook/timesformer-base-finetuned-k400), never downloaded. `cache`: the folder of converted
    parameters (default `cache_dir()`)."""
    folder = resolve_checkpoint(checkpoint)
    config = read_config(folder)
    directory = pathlib.Path(cache) if cache is not None else cache_dir()
    key = checkpoint_key(folder) if use_cache else None
    params = _read_cache(key, directory, config) if use_cache else None
    if params is None:
        params = convert_state_dict(read_state_dict(weight_files(folder)), config)
        if use_cache:
            _write_cache(key, directory, params, folder)
            logger.info("TimeSformer parameters of %s converted and cached in %s", folder,
                        directory)
    return config, jax.tree.map(jnp.asarray, params)
