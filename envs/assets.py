"""Robot model files: fetched once from the `loco-mujoco==0.4.1` sdist into a user cache.

The four embodiments (Unitree H1, Talos, Unitree G1, Unitree A1) are the MJCF models that
LocoMujoco 0.4.1 ships and that the NIL paper's baselines used. That package pins an old MuJoCo,
so it is never installed: its source archive is fetched with `pip download --no-deps`, its
sha256 is checked, and only the model folders are extracted into

    $NIL_JAX_CACHE/robots/loco-mujoco-0.4.1/<folder>/      (default ~/.cache/nil_jax)

Every folder has a pinned content digest (file names + file hashes). A folder whose digest does
not match (a partial extraction, an edited or truncated file) is deleted and extracted again from
the archive, which is kept beside the folders and re-downloaded if it is itself bad. Extraction
goes to a temporary folder that is renamed into place, so a killed process never leaves a
half-written folder that looks complete.

Offline machines: set NIL_JAX_LOCO_MUJOCO_SDIST to a copy of `loco-mujoco-0.4.1.tar.gz`, or run
`python -m nil_jax.envs.assets --sdist PATH` once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

from nil_jax.io_utils import cache_base, sha256_file

LOCO_MUJOCO_VERSION = "0.4.1"
SDIST_NAME = f"loco-mujoco-{LOCO_MUJOCO_VERSION}.tar.gz"
SDIST_SHA256 = "44776fdd4e4d504a4dc933c90f0ccc68816e91efb5ffb2bcea7d06dbc5daa940"
_DATA_PREFIX = f"loco-mujoco-{LOCO_MUJOCO_VERSION}/loco_mujoco/environments/data/"

# Content digest of each model folder, see `folder_digest`.
MODEL_FOLDERS = {
    "unitree_h1": "0982b4902ae3891a298888f94f49fbadab073c172d624d0a2d5d9d2164b3be3e",
    "talos": "de310b70dac778d2cf0b6ba489743f3fdc3cf71289c087923e0af9f47d977fd6",
    "unitree_g1": "55b4dc779f933c8296cd972bceed030a53265ff76f8f1f792b66af0cf888b4ba",
    "quadrupeds": "d100511602dda4472d1b8f809232a206e040437d81fad57b9ff3a44235407196",
}

FIX_HINT = (
    "To fix: on a machine with access to PyPI run\n"
    f"    pip download --no-deps loco-mujoco=={LOCO_MUJOCO_VERSION} -d DIR\n"
    "then either set NIL_JAX_LOCO_MUJOCO_SDIST=DIR/" + SDIST_NAME + " or run\n"
    "    python -m nil_jax.envs.assets --sdist DIR/" + SDIST_NAME + "\n"
    "Alternatively pass your own MJCF file (mjcf_path=...) to the embodiment."
)


class RobotAssetsError(RuntimeError):
    """The robot model files could not be fetched, verified or extracted."""


def cache_root() -> pathlib.Path:
    return cache_base() / "robots" / f"loco-mujoco-{LOCO_MUJOCO_VERSION}"


def folder_digest(folder: pathlib.Path) -> str:
    """sha256 over the sorted relative file names and the sha256 of each file."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = pathlib.Path(root) / name
            h.update(os.path.relpath(path, folder).encode())
            h.update(b"\0")
            h.update(bytes.fromhex(sha256_file(path)))
    return h.hexdigest()


def download_sdist(requirement: str, name: str, dest_dir: pathlib.Path, fix_hint: str,
                   error: type[Exception] = RobotAssetsError) -> pathlib.Path:
    """`pip download --no-deps` of the sdist `requirement` ("pkg==version") into dest_dir, which
    must then hold the file `name` (never installs it)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "-q", "-d", str(dest_dir), requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise error(f"Could not run `{' '.join(cmd)}`: {e}\n{fix_hint}") from e
    path = dest_dir / name
    if proc.returncode != 0 or not path.exists():
        raise error(
            f"Downloading {requirement} failed (`{' '.join(cmd)}` exited {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\n{fix_hint}"
        )
    return path


def verified_sdist(requirement: str, name: str, sha256: str, source_env: str,
                   root: pathlib.Path, fix_hint: str,
                   error: type[Exception] = RobotAssetsError) -> pathlib.Path:
    """The sdist `name` kept in `root`, checked against its pinned sha256; copied from the
    file $`source_env` names (offline machines) or downloaded with pip if absent or bad."""
    kept = root / name
    if kept.exists() and sha256_file(kept) == sha256:
        return kept
    root.mkdir(parents=True, exist_ok=True)
    source = os.environ.get(source_env)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        if source:
            if not os.path.isfile(source):
                raise error(f"{source_env}={source} is not a file.\n{fix_hint}")
            candidate = pathlib.Path(tmp) / name
            shutil.copyfile(source, candidate)
        else:
            candidate = download_sdist(requirement, name, pathlib.Path(tmp), fix_hint, error)
        digest = sha256_file(candidate)
        if digest != sha256:
            raise error(
                f"{name} has sha256 {digest}, expected {sha256}: the archive is corrupt or not "
                f"the official release.\n{fix_hint}"
            )
        os.replace(candidate, kept)
    return kept


def _verified_sdist(root: pathlib.Path) -> pathlib.Path:
    return verified_sdist(f"loco-mujoco=={LOCO_MUJOCO_VERSION}", SDIST_NAME, SDIST_SHA256,
                          "NIL_JAX_LOCO_MUJOCO_SDIST", root, FIX_HINT)


def _extract_folder(sdist: pathlib.Path, folder: str, dest: pathlib.Path) -> None:
    prefix = _DATA_PREFIX + folder + "/"
    with tarfile.open(sdist, "r:gz") as tar, tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not members:
            raise RobotAssetsError(f"{sdist} has no folder {prefix}.\n{FIX_HINT}")
        staged = pathlib.Path(tmp) / folder
        for member in members:
            target = staged / member.name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        got = folder_digest(staged)
        if got != MODEL_FOLDERS[folder]:
            raise RobotAssetsError(
                f"Extracted {folder} has digest {got}, expected {MODEL_FOLDERS[folder]}.\n"
                f"{FIX_HINT}"
            )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)


def model_folder(folder: str) -> pathlib.Path:
    """Path of a verified model folder in the cache, fetching and extracting it if needed."""
    if folder not in MODEL_FOLDERS:
        raise ValueError(f"Unknown model folder {folder!r}; known: {sorted(MODEL_FOLDERS)}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / folder
    if dest.is_dir() and folder_digest(dest) == MODEL_FOLDERS[folder]:
        return dest
    if dest.exists():
        print(f"[nil_jax] cached robot folder {dest} is incomplete or modified; re-extracting.",
              file=sys.stderr)
    _extract_folder(_verified_sdist(root), folder, dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", help=f"local copy of {SDIST_NAME} (else downloaded with pip)")
    args = parser.parse_args()
    if args.sdist:
        os.environ["NIL_JAX_LOCO_MUJOCO_SDIST"] = args.sdist
    for folder in MODEL_FOLDERS:
        print(folder, model_folder(folder))


if __name__ == "__main__":
    main()
