"""Small file helpers: the user cache, file digests, and writes that never leave half a file
(every file is written to a temporary name and renamed into place)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any


def cache_base() -> pathlib.Path:
    """The user cache of models, weights and compiled programs: $NIL_JAX_CACHE, default
    $XDG_CACHE_HOME/nil_jax (~/.cache/nil_jax)."""
    base = os.environ.get("NIL_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nil_jax")
    return pathlib.Path(base)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def publish(tmp: str, path: pathlib.Path) -> None:
    """Gives a finished temporary file the usual permissions and renames it to `path`."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
    os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent, prefix=f".{path.stem}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
