"""Test set-up: headless MuJoCo rendering (Mesa or NVIDIA EGL) before mujoco is imported, and
fixtures shared by several test files."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402  (after MUJOCO_GL)


@pytest.fixture(scope="session")
def tiny_video_encoder():
    """`build(size, *, num_hidden_layers, seed)` -> a `nil_reward.VideoEncoder`: a tiny
    TimeSformer with random weights for clips of eight `size` x `size` frames, preprocessed
    at that size (no resizing), so that the video reward is cheap to compile and run."""
    # Imported here, not above: collecting tests that do not use it needs no JAX.
    from nil_jax.reward import nil_reward, timesformer, timesformer_weights, video_preprocess

    def build(size: int, *, num_hidden_layers: int, seed: int) -> nil_reward.VideoEncoder:
        config = timesformer.TimesformerConfig(
            image_size=size, patch_size=16, num_frames=nil_reward.CLIP_FRAMES, hidden_size=48,
            num_hidden_layers=num_hidden_layers, num_attention_heads=3, intermediate_size=96)
        return nil_reward.VideoEncoder(
            model=timesformer.TimesformerModel(config),
            params=timesformer_weights.random_params(config, seed=seed),
            preprocessing=video_preprocess.VideoPreprocessing(shortest_edge=size,
                                                              crop_size=(size, size)))

    return build


@pytest.fixture(scope="module")
def experiment_scripts():
    """`import name` of a script in experiments/ (the benchmark suites import each other as
    siblings, as they do when run): `experiment_scripts("benchmark")`."""
    import importlib
    import pathlib
    import sys

    folder = str(pathlib.Path(__file__).resolve().parents[1] / "experiments")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="session")
def h1_reference(tmp_path_factory):
    """Path of a saved 0.4 s synthetic H1 walk (41 frames at 100 Hz, 64 px masks, no
    embeddings) with its ground truth: the reference of the run and learning-suite tests."""
    from nil_jax import envs
    from nil_jax.references import bundle as bundle_lib
    from nil_jax.references import ingest as ingest_lib
    from nil_jax.references import synthetic

    folder = tmp_path_factory.mktemp("references")
    ingest = ingest_lib.IngestConfig(segmenter="background", interpolator="linear",
                                     encoder="none", resolution=64)
    bundle, _ = synthetic.make(envs.load("h1"), folder,
                               synthetic.SyntheticConfig(seconds=0.4, video_size=64), ingest)
    return bundle_lib.save(bundle, folder / "h1_walk.npz")
