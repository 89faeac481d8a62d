"""Whole-body skill scenes (envs/scenes.py) and their tasks (envs/skill_tasks.py): each scene
loads for H1 and G1, its objects are simulated but left out of the body mask, the success
predicates and task rewards on hand-built states, and short C MuJoCo rollouts in which the scene
does its job (the chair carries the sitting robot, the grips hold the hanging one, the board
carries the standing one)."""

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from nil_jax import envs
from nil_jax.envs import backends, scenes, skill_tasks
from nil_jax.references import sim_frames
from nil_jax.reward import renderer


def physics(qpos: np.ndarray) -> backends.PhysicsState:
    qpos = jnp.asarray(qpos, jnp.float32)
    return backends.PhysicsState(time=jnp.zeros(()), qpos=qpos, qvel=jnp.zeros(0), act=jnp.zeros(0),
                                 qacc_warmstart=jnp.zeros(0))


@pytest.fixture(scope="module")
def measure():
    """measure(embodiment, task, qpos) -> (reward, success, failed) as floats, jitted per
    (embodiment, task)."""
    compiled = {}

    def run(embodiment, task, qpos):
        key = (id(embodiment), task)
        if key not in compiled:
            instance = envs.TASKS[task]()
            compiled[key] = jax.jit(lambda q: instance.measure(embodiment, physics(q)))
        return tuple(float(x) for x in compiled[key](qpos))

    return run


def with_root(embodiment, qpos, dx=0.0, dz=0.0, tilt=0.0):
    qpos = np.array(qpos, float)
    qpos[embodiment.root_xy_qpos[0]] += dx
    qpos[embodiment.root_height_qpos] += dz
    qpos[embodiment.root_qpos[3]] += tilt  # the root's first hinge (pitch for the humanoids)
    return qpos


def hold(embodiment, qpos, target, seconds):
    """C MuJoCo from `qpos`, PD torques (RobotEnv's gains) toward the joint angles of `target`."""
    env = envs.RobotEnv(embodiment, envs.TASKS["walk"](), backend="cpu", actuation="pd")
    pd, model = env.pd, embodiment.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    for _ in range(int(seconds / model.opt.timestep)):
        torque = pd.kp * (target[pd.qpos] - data.qpos[pd.qpos]) - pd.kd * data.qvel[pd.qvel]
        data.ctrl[:] = np.clip(torque / pd.gear, embodiment.ctrl_low, embodiment.ctrl_high)
        mujoco.mj_step(model, data)
    return data.qpos.copy()


def scene_qpos(embodiment, robot_qpos):
    return np.concatenate([robot_qpos, embodiment.init_qpos[embodiment.robot_nq:]])


@pytest.mark.parametrize("name", ["h1", "g1"])
@pytest.mark.parametrize("skill", scenes.SKILLS)
def test_scene_loads_and_stays_out_of_the_mask(name, skill):
    plain, scene = envs.load(name), envs.load(name, skill=skill)
    model = scene.mj_model
    assert scene.scene.skill == skill and scene.robot_nq == plain.nq
    assert scene.nq == plain.nq + (14 if skill == "balance" else 0)  # board + pivot free joints
    assert scene.nu == plain.nu
    assert model.body(scene.root_body).name == plain.mj_model.body(plain.root_body).name == "pelvis"
    scene_bodies = [b for b in range(model.nbody) if scenes.is_scene_body(model, b)]
    assert scene_bodies and all(model.body(b).name.startswith("scene_") for b in scene_bodies)
    names = lambda m: sorted(m.geom(g).name for g in renderer.body_geoms(m))  # noqa: E731
    assert names(model) == names(plain.mj_model)
    assert [model.geom(g).name for g in scene.foot_geom_ids] == \
        [plain.mj_model.geom(g).name for g in plain.foot_geom_ids]
    # The start pose: the robot's part is valid, the scene's quaternions are unit.
    data = mujoco.MjData(model)
    data.qpos[:] = scene.init_qpos
    mujoco.mj_forward(model, data)
    assert np.all(np.isfinite(data.qacc))
    if skill == "balance":
        quats = scene.init_qpos[scene.robot_nq:].reshape(2, 7)[:, 3:]
        np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0)
    with pytest.raises(ValueError, match="Unknown skill"):
        envs.load(name, skill="juggle")


def test_skills_need_a_humanoid_with_known_limbs():
    with pytest.raises(ValueError, match="humanoid with known limbs"):
        envs.load("a1", skill="sit")
    with pytest.raises(ValueError, match="needs the sit scene"):
        envs.TASKS["sit"]().measure(envs.load("h1"), physics(envs.load("h1").init_qpos))


def test_scene_objects_are_drawn_but_not_masked():
    plain, chair = envs.load("h1"), envs.load("h1", skill="sit")
    qpos = chair.scene.key_qpos[None]
    frames, masks = sim_frames.render(chair, qpos, 64, 64)
    plain_frames, plain_masks = sim_frames.render(plain, qpos, 64, 64)
    # The same robot pixels, but where the seat's near face hides a sliver of the thighs.
    assert not np.any(masks & ~plain_masks) and np.mean(masks != plain_masks) < 0.002
    assert masks.mean() > 0.03
    changed = np.any(frames != plain_frames, axis=-1)[0]
    assert changed[~masks[0]].mean() > 0.01  # the chair, outside the robot


def test_sit_predicate_and_reward(measure):
    e = envs.load("h1", skill="sit")
    scene = e.scene
    # H1 sits a little lower than on HumanoidBench's seat (0.68-0.72 m): 0.645 m.
    assert 0.6 <= scene.sit_height <= 0.72
    assert scene.seat_top < scene.sit_height and scene.seat_x[0] < scene.seat_x[1] < 0
    sitting = measure(e, "sit", scene.key_qpos)
    assert sitting == pytest.approx((1.0, 1.0, 0.0))
    standing = measure(e, "sit", e.init_qpos)
    assert standing[1] == 0.0 and standing[2] == 0.0 and standing[0] < 0.5
    for changed in (with_root(e, scene.key_qpos, dx=0.8),  # in front of the chair
                    with_root(e, scene.key_qpos, dz=0.1),  # above the seat
                    with_root(e, scene.key_qpos, tilt=0.9)):  # leaning far back
        reward, success, _ = measure(e, "sit", changed)
        assert success == 0.0 and reward < 1.0
    assert measure(e, "sit", with_root(e, scene.key_qpos, dz=-0.5))[2] == 1.0  # on the floor


def test_the_chair_carries_the_sitting_robot(measure):
    """Holding the sitting pose, H1 stays seated on the chair for 1 s; without the chair the
    same pose falls (its centre of mass is behind the feet)."""
    e = envs.load("h1", skill="sit")
    seated = hold(e, e.scene.key_qpos, e.scene.key_qpos, 1.0)
    assert measure(e, "sit", seated)[1] == 1.0
    plain = envs.load("h1")
    unsupported = hold(plain, e.scene.key_qpos, e.scene.key_qpos, 1.0)
    assert unsupported[plain.root_height_qpos] < seated[e.root_height_qpos] - 0.1


def test_hang_predicate_and_grip(measure):
    e = envs.load("h1", skill="hang")
    scene = e.scene
    np.testing.assert_allclose(scene.bar_anchors[:, 2], scenes.BAR_HEIGHT)
    assert measure(e, "hang", e.init_qpos) == pytest.approx((1.0, 1.0, 0.0), abs=1e-4)
    lowered = measure(e, "hang", with_root(e, e.init_qpos, dz=-1.0))  # standing under the bar
    assert lowered[1] == 0.0 and lowered[2] == 1.0
    # Held by the grips alone (PD keeps the start pose), H1 still hangs after 1 s: the
    # connect constraints hold the hands within the tolerance and the feet stay up. Without
    # them it drops.
    hanging = hold(e, e.init_qpos, e.init_qpos, 1.0)
    assert measure(e, "hang", hanging)[1] == 1.0
    free = envs.load("h1")
    dropped = hold(free, e.init_qpos, e.init_qpos, 1.0)
    assert dropped[free.root_height_qpos] < hanging[e.root_height_qpos] - 0.5  # to the floor


def test_balance_predicate_and_board(measure):
    e = envs.load("h1", skill="balance")
    start = e.init_qpos
    assert measure(e, "balance", start)[1:] == (1.0, 0.0)
    off_board = scene_qpos(e, with_root(e, start[:e.robot_nq], dx=1.0))  # feet in the air
    assert measure(e, "balance", off_board)[1] == 0.0
    on_floor = scene_qpos(e, with_root(e, start[:e.robot_nq], dx=1.0, dz=-0.38))
    reward, success, failed = measure(e, "balance", on_floor)
    assert (reward, success, failed) == (0.0, 0.0, 1.0)
    # The board carries the robot: after 0.2 s of holding the pose it stands on it still.
    after = hold(e, start, start, 0.2)
    assert measure(e, "balance", after)[1] == 1.0
    board_z = after[e.robot_nq + 7 + 2]
    assert board_z > 2 * scenes.PIVOT_RADIUS


def test_held_needs_consecutive_steps():
    success = jnp.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], jnp.float32)
    np.testing.assert_array_equal(skill_tasks.held(success, 3), [True, False])
    np.testing.assert_array_equal(skill_tasks.held(success, 1), [True, True])


def test_tolerance_shapes():
    x = jnp.array([0.5, 1.0, 1.5, 2.0, 3.0])
    gaussian = skill_tasks.tolerance(x, 1.0, 2.0, margin=1.0)
    np.testing.assert_allclose(gaussian, [np.exp(-0.25 * np.log(10)), 1, 1, 1, 0.1], rtol=1e-6)
    linear = skill_tasks.tolerance(x, 1.0, 2.0, margin=1.0, value_at_margin=0.0, shape="linear")
    np.testing.assert_allclose(linear, [0.5, 1, 1, 1, 0])


def test_skill_env_steps_on_mjx():
    """A skill env is jittable on MJX (free bodies, box contacts, equality constraints): a few
    steps from a reset stay finite and report the task's metrics."""
    env = envs.make("h1", task="balance", backend="mjx", actuation="pd")
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    # The scene's free bodies start where the scene put them (no reset noise on them).
    np.testing.assert_allclose(state.pipeline_state.qpos[env.embodiment.robot_nq:],
                               env.embodiment.init_qpos[env.embodiment.robot_nq:], atol=1e-6)
    # The sphere's and the board's horizontal positions are observed relative to the root.
    assert state.obs.shape == (env.observation_size,)
    model, data = env.embodiment.mj_model, mujoco.MjData(env.embodiment.mj_model)
    data.qpos[:] = state.pipeline_state.qpos
    mujoco.mj_kinematics(model, data)
    root = data.xpos[1, :2]  # the pelvis, the robot's root body
    bodies = [model.body(f"scene_{n}").id for n in ("pivot", "board")]
    start = len(env._obs_qpos)
    np.testing.assert_allclose(state.obs[start:start + 4], (data.xpos[bodies, :2] - root).ravel(),
                               atol=1e-5)
    step = jax.jit(env.step)
    for _ in range(3):
        state = step(state, jnp.zeros(env.action_size))
    assert bool(state.pipeline_state.is_finite())
    assert set(state.metrics) >= {"reward/balance", "success", "fallen"}
    assert float(state.metrics["success"]) == 1.0 and float(state.done) == 0.0


@pytest.mark.parametrize("skill", scenes.SKILLS)
def test_synthetic_skill_reference(tmp_path, skill):
    """Each skill's key-pose motion goes through the reference pipeline: rendered with its
    scene (the objects in the picture), ingested with the simulator's robot masks, with ground
    truth that starts at the scene's start pose and reaches the skill's pose."""
    from nil_jax.references import ingest, synthetic

    e = envs.load("h1", skill=skill)
    config = synthetic.SyntheticConfig(seconds=2.0, video_size=64)
    fast = ingest.IngestConfig(segmenter="background", interpolator="linear", encoder="none",
                               resolution=64)
    bundle, video = synthetic.make(e, tmp_path, config, fast)
    assert video.name == f"h1_{skill}.mp4"
    metadata = bundle.metadata
    assert metadata["skill"] == skill and metadata["segmenter"]["name"] == "given"
    assert "chair" in metadata["prompt"] or "bar" in metadata["prompt"] \
        or "board" in metadata["prompt"]
    assert metadata["synthetic"]["mask_iou_mean"] > 0.8
    truth = bundle.ground_truth_qpos
    assert truth.shape == (bundle.num_frames, e.nq)
    np.testing.assert_allclose(truth[0], e.init_qpos, atol=1e-6)
    # The video shows the scene's objects: more non-background pixels than the robot's mask.
    first = iio.imread(video)[0]
    shown = np.any(np.abs(first.astype(int) - 255) > 30, axis=-1)
    robot = sim_frames.agent_masks(e, e.init_qpos[None], 64, 64)[0]
    assert shown.sum() > robot.sum() * 1.1
    if skill == "sit":  # it ends seated on the chair
        np.testing.assert_allclose(truth[-1, :e.robot_nq], e.scene.key_qpos, atol=0.02)


def test_evaluation_reports_success_and_normalized_task_reward():
    """The evaluation protocol on a skill (C MuJoCo): a zero action holds the hanging start pose
    (PD), which succeeds once held for HOLD_STEPS; a shorter episode cannot."""
    from nil_jax.envs import evaluation

    env = envs.make("h1", task="hang", backend="cpu", actuation="pd")
    policy = evaluation.zero_policy(env.action_size)
    key = jax.random.PRNGKey(0)
    long = evaluation.evaluate(env, policy, key, num_episodes=2,
                               episode_length=skill_tasks.HOLD_STEPS + 20)
    np.testing.assert_array_equal(long["success"], [1.0, 1.0])
    assert np.all(long["longest_success_steps"] >= skill_tasks.HOLD_STEPS)
    assert np.all((long["normalized_task_reward"] > 0.5) & (long["normalized_task_reward"] <= 1))
    short = evaluation.evaluate(env, policy, key, num_episodes=2,
                                episode_length=skill_tasks.HOLD_STEPS - 1)
    np.testing.assert_array_equal(short["success"], [0.0, 0.0])
    summary = evaluation.summarize(long)
    assert summary["success_rate"] == 1.0 and 0.5 < summary["normalized_task_reward_mean"] <= 1
