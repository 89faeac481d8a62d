"""The NIL environment: physics -> renderer -> clip buffer -> NIL reward, batched, with BRO."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nil_jax import envs
from nil_jax.agents import bro
from nil_jax.nil_env import EarlyTermination, NilEnv
from nil_jax.references import synthetic
from nil_jax.reward import nil_reward, regularizers, renderer, silhouettes

SIZE = 32  # a small image keeps the renderer's compile and the tiny encoder cheap
NUM_ENVS = 2
LENGTH = 12


@pytest.fixture(scope="module")
def nil(tiny_video_encoder):
    embodiment = envs.embodiments.load("h1")
    robot = envs.make("h1", task="walk", backend="cpu")
    sil = silhouettes.make(embodiment, SIZE, SIZE, tiers=1)
    # The reference: the synthetic walk's poses, drawn by the same renderer.
    qpos = synthetic.walking_qpos(embodiment, np.arange(LENGTH) * 0.01)
    frames = jax.jit(lambda q: silhouettes.render(sil, q))(jnp.asarray(qpos, jnp.float32))
    encoder = tiny_video_encoder(SIZE, num_hidden_layers=1, seed=2)
    grey = np.round(np.asarray(frames["shade"]) * 255).astype(np.uint8)
    clips = grey[np.clip(np.arange(LENGTH)[:, None] + np.arange(-7, 1), 0, None)]
    # Embeddings of the reference clips (frame 0 repeated before the start), same encoder.
    z_ref = jax.jit(lambda c: nil_reward.embed_clips(encoder, c))(clips)
    reference = nil_reward.Reference(masks=frames["mask"], embeddings=z_ref)
    config = nil_reward.RewardConfig(video_stride=2)
    truth = jnp.asarray(qpos, jnp.float32)  # the reference's ground-truth poses
    env = NilEnv(robot, reference, sil, config, encoder, observe_phase=True,
                 pose_reference=truth)
    reset = jax.jit(env.reset)
    step = jax.jit(env.step)
    return dict(env=env, reset=reset, step=step, reference=reference, config=config,
                truth=qpos)


def expected_pose_reward(qpos, truth, t):
    """exp(-mean |q - q*_t| / 0.1) over H1's angles: every qpos but the x, y, z root slides
    (qpos 0-2; no scene bodies on the plain floor)."""
    error = np.abs(np.asarray(qpos)[:, 3:] - truth[t, 3:]).mean(-1)
    return np.exp(-error / 0.1)


def test_steps_give_the_nil_reward_of_each_term(nil):
    env = nil["env"]
    state = nil["reset"](jax.random.split(jax.random.PRNGKey(0), NUM_ENVS))
    np.testing.assert_array_equal(state.info["clip"][:, 0], np.broadcast_to(
        env.home_frame, (NUM_ENVS,) + env.home_frame.shape))
    video = []
    for k in range(4):
        action = jnp.full((NUM_ENVS, env.action_size), 0.1 * (-1) ** k)
        previous = state
        state = nil["step"](state, action)
        m = jax.device_get(state.metrics)
        assert np.all(state.info["t"] == k + 1)
        assert np.all((m["reward/iou"] >= 0) & (m["reward/iou"] <= 1))
        assert np.all(m["reward/iou"] > 0.3)  # the home pose overlaps the walk's first frames
        assert all(np.all(m[f"penalty/{t}"] <= 0) for t in regularizers.TERMS)
        total = sum(m[f"penalty/{t}"] for t in regularizers.TERMS)
        np.testing.assert_allclose(m["penalty/total"], total, rtol=1e-5)
        expected = m["reward/video"] + m["reward/iou"] + m["penalty/total"]
        np.testing.assert_allclose(state.reward, expected, rtol=1e-5, atol=1e-6)
        # The pose-tracking reward is logged, not trained on.
        np.testing.assert_allclose(m["reward/pose"], expected_pose_reward(
            state.pipeline_state.qpos, nil["truth"], k + 1), rtol=1e-5)
        assert np.all(m["nonfinite_reward"] == 0)
        # The clip buffer moved by one frame.
        np.testing.assert_array_equal(state.info["clip"][:, :-1], previous.info["clip"][:, 1:])
        video.append(np.asarray(m["reward/video"]))
    # video_stride 2: computed at global steps 0 and 2, held at 1 and 3.
    np.testing.assert_array_equal(video[1], video[0])
    np.testing.assert_array_equal(video[3], video[2])
    assert np.all(np.abs(video[0]) <= 1 + 1e-5)
    # The torque penalty of a constant action is known in closed form.
    indices = env.indices
    np.testing.assert_allclose(
        m["penalty/torques"],
        nil["config"].regularizers.torques * regularizers.torques(indices, action[0]), rtol=1e-5)
    # The IoU is the renderer's mask against the reference mask of step t.
    frames = jax.jit(lambda q: silhouettes.render(env.silhouette, q))(
        state.pipeline_state.qpos)
    np.testing.assert_allclose(m["reward/iou"], renderer.mask_iou(
        frames["mask"], nil["reference"].masks[4]), atol=1e-6)
    np.testing.assert_array_equal(state.info["mask"], frames["mask"])
    # The observation: the robot's, then the fraction of the reference played.
    assert state.obs.shape == (NUM_ENVS, env.robot.observation_size + 1)
    np.testing.assert_allclose(state.obs[:, -1], 4 / (LENGTH - 1), rtol=1e-6)
    # The stride's clock is the batch's: env 0 restarting its episode (the learner's auto-reset
    # gives it a fresh clock 0) neither restarts the clock nor moves its phase.
    restarted = state.replace(info=dict(state.info, global_step=state.info["global_step"].at[0]
                                        .set(0)))
    after = nil["step"](restarted, action)  # clock 4: computed
    np.testing.assert_array_equal(after.info["global_step"], np.full(NUM_ENVS, 5))
    held = nil["step"](after, -action)  # clock 5: held
    np.testing.assert_array_equal(held.metrics["reward/video"], after.metrics["reward/video"])
    assert not np.array_equal(after.metrics["reward/video"], m["reward/video"])


def test_phase_harmonics_extend_the_observation(nil):
    """With K harmonics the observation ends with tau, sin(2 pi k tau), cos(2 pi k tau) for
    k = 1..K, tau = t / (T - 1); they need the phase observed."""
    env = nil["env"]
    harmonic = NilEnv(env.robot, env.reference, env.silhouette, env.config, None,
                      observe_phase=True, phase_harmonics=3)
    assert harmonic.observation_size == env.robot.observation_size + 1 + 6
    robot_obs = jnp.ones((2, env.robot.observation_size))
    obs = np.asarray(harmonic._observe(robot_obs, jnp.array([0, 4])))
    tau = 4 / (LENGTH - 1)
    np.testing.assert_allclose(obs[0, -7:], [0, 0, 0, 0, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(obs[1, -7:], [tau] + [np.sin(2 * np.pi * k * tau) for k in (1, 2, 3)]
                               + [np.cos(2 * np.pi * k * tau) for k in (1, 2, 3)], atol=1e-6)
    np.testing.assert_array_equal(obs[:, :-7], robot_obs)
    with pytest.raises(ValueError, match="needs the phase observed"):
        NilEnv(env.robot, env.reference, env.silhouette, env.config, None, phase_harmonics=2)


def test_reward_sources_pick_the_reward_trained_on(nil):
    """`task` trains on the env's walk reward, `pose` on tracking the ground-truth poses; both
    still log the NIL terms. The NIL video stream is off here: it changes neither reward, and
    one TimeSformer less to compile."""
    env = nil["env"]
    config = dataclasses.replace(nil["config"], video_weight=0.0)
    # The fixture's reset (compiled once): the same robots at the same home pose.
    start = nil["reset"](jax.random.split(jax.random.PRNGKey(3), NUM_ENVS))
    action = jnp.full((NUM_ENVS, env.action_size), 0.2)
    for source in ("task", "pose"):
        sourced = NilEnv(env.robot, env.reference, env.silhouette, config, None,
                         reward_source=source, pose_reference=env.pose_reference)
        state = jax.jit(sourced.step)(start, action)
        m = jax.device_get(state.metrics)
        assert np.all(m["nonfinite_reward"] == 0) and np.all(m["reward/iou"] > 0)
        pose = expected_pose_reward(state.pipeline_state.qpos, nil["truth"], 1)
        np.testing.assert_allclose(m["reward/pose"], pose, rtol=1e-5)
        trained = m["reward/env"] if source == "task" else pose
        np.testing.assert_allclose(state.reward, trained, rtol=1e-5)
        assert not np.allclose(state.reward, m["reward/iou"] + m["penalty/total"])


def test_early_termination_ends_episodes_whose_iou_stays_low(nil):
    """IoU below the threshold for `steps` steps in a row ends the episode as a fall does; a
    step above it starts the count again; evaluation's copy of the env never ends one."""
    env = nil["env"]
    config = dataclasses.replace(nil["config"], video_weight=0.0)
    # Empty reference masks at steps 1, 3 and 4 (IoU 0), the walk's at step 2 (IoU near 1:
    # the robots stand at home, as the walk starts).
    masks = env.reference.masks.at[jnp.array([1, 3, 4])].set(False)
    reference = nil_reward.Reference(masks=masks, embeddings=None)
    strict = NilEnv(env.robot, reference, env.silhouette, config, None,
                    early_termination=EarlyTermination(iou=0.5, steps=2))
    assert "early_termination" in strict.metric_names()
    action = jnp.zeros((NUM_ENVS, env.action_size))

    def four_steps(state):
        def step(state, _):
            state = strict.step(state, action)
            return state, (state.info["low_iou_steps"], state.done,
                           state.metrics["early_termination"], state.metrics["fallen"],
                           state.metrics["reward/iou"])
        return jax.lax.scan(step, state, None, length=4)[1]

    low, done, early, fallen, iou = jax.device_get(jax.jit(four_steps)(
        strict.reset(jax.random.split(jax.random.PRNGKey(4), NUM_ENVS))))
    assert np.all(iou[[0, 2, 3]] == 0) and np.all(iou[1] > 0.9)
    np.testing.assert_array_equal(low, np.array([1, 0, 1, 2])[:, None].repeat(NUM_ENVS, 1))
    np.testing.assert_array_equal(done, np.array([0, 0, 0, 1])[:, None].repeat(NUM_ENVS, 1))
    np.testing.assert_array_equal(early, done)
    assert np.all(fallen == 0)  # not a fall: the robots stand
    relaxed = strict.without_early_termination()
    assert strict.early_termination.enabled and not relaxed.early_termination.enabled
    assert relaxed.reference is strict.reference
    assert "early_termination" not in relaxed.metric_names()
    with pytest.raises(ValueError, match="iou must be in"):
        EarlyTermination(iou=1.0)
    with pytest.raises(ValueError, match="steps must be an integer"):
        EarlyTermination(iou=0.4, steps=0)


def test_bro_trains_on_the_batched_nil_env(nil):
    config = bro.preset("bro_fast", num_envs=NUM_ENVS, critic_width=32, actor_width=32,
                        num_quantiles=8, batch_size=8, replay_capacity=64,
                        episode_length=LENGTH - 1, warmup_steps=4)
    learner = bro.Bro(nil["env"], config, batched=True)
    state = learner.init(jax.random.PRNGKey(1))
    step = jax.jit(learner.train_step)
    for _ in range(LENGTH + 2):  # warm-up, updates, and one truncation at the reference's end
        state, metrics = step(state)
    assert int(state.replay.size) == (LENGTH + 2) * NUM_ENVS
    assert np.all(np.isfinite(jax.tree.leaves(jax.device_get(metrics))))
    # Truncated at the reference's end: every env restarted at least once, t stays in range.
    assert np.all(np.asarray(state.env_state.info["t"]) < LENGTH)
