"""The NIL reward streams: clip buffer, video similarity with a tiny TimeSformer, IoU, weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nil_jax.reward import nil_reward

SIZE = 32


@pytest.fixture(scope="module")
def encoder(tiny_video_encoder):
    return tiny_video_encoder(SIZE, num_hidden_layers=2, seed=1)


def random_masks(rng, count):
    masks = np.zeros((count, SIZE, SIZE), bool)
    for m in masks:
        r, c = rng.integers(0, SIZE - 12, 2)
        m[r:r + rng.integers(6, 12), c:c + rng.integers(6, 12)] = True
    return masks


def test_push_frame_shifts_and_pads_new_episodes():
    clips = jnp.arange(2 * 8, dtype=jnp.uint8).reshape(2, 8, 1, 1) * jnp.ones((1, 1, 2, 2),
                                                                              jnp.uint8)
    frame = jnp.full((2, 2, 2), 99, jnp.uint8)
    out = np.asarray(nil_reward.push_frame(clips, frame, jnp.array([False, True])))
    np.testing.assert_array_equal(out[0, :, 0, 0], [1, 2, 3, 4, 5, 6, 7, 99])
    np.testing.assert_array_equal(out[1, :, 0, 0], [99] * 8)  # a new episode: frame 0 repeated


def test_encoder_frame_inputs():
    mask = jnp.array([[[True, False]]])
    shade = jnp.array([[[128 / 255, 0.0]]])
    frames = {"mask": mask, "shade": shade}
    shaded = nil_reward.encoder_frame(nil_reward.RewardConfig(), frames)
    silhouette = nil_reward.encoder_frame(nil_reward.RewardConfig(encoder_input="silhouette"),
                                          frames)
    np.testing.assert_array_equal(shaded, [[[128, 0]]])
    np.testing.assert_array_equal(silhouette, [[[255, 0]]])


def test_streams_iou_and_video_similarity(encoder):
    rng = np.random.default_rng(0)
    length, batch = 12, 3
    ref_masks = random_masks(rng, length)
    ref_clips = rng.integers(0, 256, (length, 8, SIZE, SIZE)).astype(np.uint8)
    ref_z = jax.jit(lambda c: nil_reward.embed_clips(encoder, c))(ref_clips)
    reference = nil_reward.Reference(masks=jnp.asarray(ref_masks), embeddings=ref_z)
    config = nil_reward.RewardConfig()
    step = jnp.array([0, 5, 30])  # the last is past the end: the last reference frame
    sim_masks = np.stack([ref_masks[0], ~ref_masks[5], ref_masks[-1]])
    # Env 0 shows exactly the reference clip of its step, env 1 another one.
    clips = jnp.asarray(np.stack([ref_clips[0], ref_clips[9], ref_clips[-1]]))
    frames = {"mask": jnp.asarray(sim_masks)}
    fn = jax.jit(lambda step, frames, clips, prev, run: nil_reward.streams(
        config, reference, encoder, step=step, frames=frames, clips=clips,
        previous_similarity=prev, run_video=run))
    out = fn(step, frames, clips, jnp.full(batch, -7.0), jnp.array(True))
    np.testing.assert_allclose(out["reward/iou"], [1.0, 0.0, 1.0], atol=1e-6)
    video = np.asarray(out["reward/video"])
    assert video[0] == pytest.approx(1.0, abs=1e-5) and video[2] == pytest.approx(1.0, abs=1e-5)
    z9 = np.asarray(ref_z[9]), np.asarray(ref_z[5])
    expected = z9[0] @ z9[1] / np.linalg.norm(z9[0]) / np.linalg.norm(z9[1])
    assert video[1] == pytest.approx(expected, abs=1e-5) and video[1] < 0.999
    # Between strides the previous similarity is held.
    held = fn(step, frames, clips, jnp.full(batch, -7.0), jnp.array(False))
    np.testing.assert_array_equal(held["reward/video"], [-7.0] * batch)


def test_combine_weights_and_switches():
    terms = {"reward/iou": jnp.array([0.5]), "reward/video": jnp.array([0.8]),
             "penalty/total": jnp.array([-0.2])}
    assert float(nil_reward.combine(nil_reward.RewardConfig(), terms)[0]) == pytest.approx(1.1)
    no_video = nil_reward.RewardConfig(video_weight=0.0, iou_weight=2.0)
    assert float(nil_reward.combine(no_video, terms)[0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="video_stride"):
        nil_reward.RewardConfig(video_stride=0)
    with pytest.raises(ValueError, match="encoder_input"):
        nil_reward.RewardConfig(encoder_input="rgb")


def test_video_stream_without_embeddings_says_how_to_fix():
    reference = nil_reward.Reference(masks=jnp.zeros((4, SIZE, SIZE), bool), embeddings=None)
    with pytest.raises(ValueError, match="video_weight=0"):
        nil_reward.streams(nil_reward.RewardConfig(), reference, None, step=jnp.zeros(1, int),
                           frames={"mask": jnp.zeros((1, SIZE, SIZE), bool)},
                           clips=jnp.zeros((1, 8, SIZE, SIZE), jnp.uint8),
                           previous_similarity=jnp.zeros(1), run_video=jnp.array(True))
