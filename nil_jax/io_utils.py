"""Small file helpers: every file is written to a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


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
