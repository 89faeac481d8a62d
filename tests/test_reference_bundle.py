"""ReferenceBundle: save/load round trip, atomic writes, and every way a bundle can be invalid."""

import json

import numpy as np
import pytest

from nil_jax.references import bundle as bundle_lib
from nil_jax.references.errors import BundleFormatError, EmbodimentMismatchError

T, SIZE, DIM = 12, 16, 5


def metadata(**overrides):
    meta = {
        "format": bundle_lib.FORMAT, "format_version": bundle_lib.FORMAT_VERSION,
        "embodiment": "g1", "skill": "walking",
        "prompt": "The Unitree G1 humanoid robot agent is walking, camera follows the agent.",
        "control_dt": 0.01, "fps_out": 100.0, "resolution": [SIZE, SIZE], "num_frames": T,
        "source": {"sha256": "0" * 64}, "segmenter": {"name": "background"},
        "interpolator": {"name": "linear"}, "encoder": {"id": "random"},
    }
    meta.update(overrides)
    return meta


def make_bundle(**overrides):
    rng = np.random.default_rng(0)
    masks = rng.random((T, SIZE, SIZE)) > 0.5
    arrays = dict(
        frames=(rng.integers(0, 256, (T, SIZE, SIZE, 3)) * masks[..., None]).astype(np.uint8),
        masks=masks, embeddings=rng.normal(size=(T, DIM)).astype(np.float32),
        ground_truth_qpos=rng.normal(size=(T, 29)), metadata=metadata())
    arrays.update(overrides)
    return bundle_lib.ReferenceBundle(**arrays)


def test_save_load_round_trip(tmp_path):
    bundle = make_bundle()
    path = bundle_lib.save(bundle, tmp_path / "refs" / "g1.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["g1.npz"]  # no temporary left
    loaded = bundle_lib.load(path, embodiment="g1", encoder_id="random", nq=29)
    for name in ("frames", "masks", "embeddings", "ground_truth_qpos"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bundle, name))
        assert getattr(loaded, name).dtype == getattr(bundle, name).dtype
    assert loaded.ground_truth_masks is None
    assert loaded.metadata == bundle.metadata
    assert (loaded.num_frames, loaded.embodiment, loaded.control_dt, loaded.encoder_id) == \
        (T, "g1", 0.01, "random")


def test_embodiment_mismatch_on_load(tmp_path):
    path = bundle_lib.save(make_bundle(), tmp_path / "g1.npz")
    with pytest.raises(EmbodimentMismatchError, match=r"made for embodiment 'g1' \(.*\), not 'h1'"):
        bundle_lib.load(path, embodiment="h1")
    with pytest.raises(EmbodimentMismatchError, match="nq=25"):
        bundle_lib.load(path, embodiment="g1", nq=25)


def test_camera_view_mismatch_on_load(tmp_path):
    side = bundle_lib.save(make_bundle(), tmp_path / "side.npz")  # says no view: the side one
    assert bundle_lib.load(side, embodiment="g1", camera="side").camera == "side"
    with pytest.raises(EmbodimentMismatchError, match=r"from the 'side' camera view; this run "
                       r"renders the simulation from the 'oblique' view.*--camera side"):
        bundle_lib.load(side, embodiment="g1", camera="oblique")
    oblique = bundle_lib.save(make_bundle(metadata=metadata(camera="oblique")),
                              tmp_path / "oblique.npz")
    assert bundle_lib.load(oblique, embodiment="g1", camera="oblique").camera == "oblique"
    with pytest.raises(EmbodimentMismatchError, match="'oblique' camera view"):
        bundle_lib.load(oblique, embodiment="g1", camera="side")


def test_encoder_mismatch_on_load(tmp_path):
    path = bundle_lib.save(make_bundle(), tmp_path / "g1.npz")
    with pytest.raises(BundleFormatError, match="encoder 'random'"):
        bundle_lib.load(path, encoder_id="facebook/timesformer-base-finetuned-k400")


@pytest.mark.parametrize("overrides, problem", [
    (dict(metadata=metadata(format_version=bundle_lib.FORMAT_VERSION + 1)), "format version"),
    (dict(metadata=metadata(format="something-else")), "format"),
    (dict(metadata={k: v for k, v in metadata().items() if k != "prompt"}), "lacks"),
    (dict(metadata=metadata(num_frames=T + 1)), "metadata says"),
    (dict(metadata=metadata(resolution=[SIZE, SIZE + 1])), "metadata says"),
    (dict(metadata=metadata(fps_out=30.0)), "1 / control_dt"),
    (dict(frames=np.zeros((T, SIZE, SIZE, 3), np.float32)), "dtype float32"),
    (dict(frames=np.zeros((T, SIZE, SIZE, 4), np.uint8)), "4 channels"),
    (dict(masks=np.zeros((T, SIZE, SIZE), np.uint8)), "dtype uint8"),
    (dict(masks=np.zeros((T - 1, SIZE, SIZE), bool)), "masks have shape"),
    (dict(embeddings=np.zeros((T - 1, DIM), np.float32)), "embeddings for"),
    (dict(embeddings=np.full((T, DIM), np.nan, np.float32)), "NaN"),
    (dict(embeddings=np.zeros((T, DIM))), "dtype float64"),
    (dict(embeddings=None), "no embeddings"),
    (dict(ground_truth_qpos=np.zeros((T + 2, 29))), "ground-truth poses"),
    (dict(ground_truth_masks=np.zeros((T, SIZE, 3), bool)), "ground_truth_masks"),
])
def test_invalid_bundles_are_refused(tmp_path, overrides, problem):
    overrides = dict(overrides)
    with pytest.raises(BundleFormatError, match=problem):
        make_bundle(**overrides)
    # The same problem in a file (written around the constructor's check) fails on load.
    good = make_bundle()
    arrays = {k: getattr(good, k) for k in ("frames", "masks", "embeddings", "ground_truth_qpos")}
    meta = overrides.pop("metadata", good.metadata)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    arrays["metadata_json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BundleFormatError, match=problem):
        bundle_lib.load(tmp_path / "bad.npz")


def test_unreadable_bundle_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(BundleFormatError, match="not an .npz reference bundle"):
        bundle_lib.load(tmp_path / "junk.npz")
    good = make_bundle()
    np.savez(tmp_path / "nometa.npz", frames=good.frames, masks=good.masks)
    with pytest.raises(BundleFormatError, match="metadata_json"):
        bundle_lib.load(tmp_path / "nometa.npz")
    np.savez(tmp_path / "badjson.npz", frames=good.frames, masks=good.masks,
             metadata_json=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        bundle_lib.load(tmp_path / "badjson.npz")
    with pytest.raises(FileNotFoundError):
        bundle_lib.load(tmp_path / "missing.npz")


def test_clip_indices_end_at_each_frame():
    indices = bundle_lib.clip_indices(10)
    assert indices.shape == (10, bundle_lib.CLIP_FRAMES)
    np.testing.assert_array_equal(indices[0], np.zeros(8))
    np.testing.assert_array_equal(indices[3], [0, 0, 0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(indices[9], np.arange(2, 10))
