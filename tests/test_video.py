"""Videos in and out (nil_jax.video, references.video_io): ffmpeg through imageio, in a process
where JAX runs."""

import warnings

import jax
import numpy as np

from nil_jax import video
from nil_jax.references import video_io


def test_videos_round_trip_without_forking_a_jax_process(tmp_path):
    jax.devices()  # JAX's backend is up: from here on it warns at every fork
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (8, 4, 4, 3), np.uint8), 8, 1).repeat(8, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = video.write_video(tmp_path / "clip.mp4", frames, 25.0)
        read = video_io.read_video(path)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]
    assert read.num_frames == 8 and read.fps == 25.0
    # Lossy, but 8-pixel blocks of flat colour survive.
    assert np.abs(np.stack(read.frames).astype(int) - frames).mean() < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary left
