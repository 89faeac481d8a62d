"""The reward-landscape suite of experiments/benchmark.py on a short H1 walk at 32 px: the wrong
motions really are wrong, the IoU stream ranks the true motion first by a clear margin, and the
centered I3D stream tells the walk from standing still."""

import numpy as np
import pytest

from nil_jax import envs
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import synthetic


@pytest.fixture(scope="module")
def reward_benchmark(experiment_scripts):
    return experiment_scripts("reward_benchmark")


def test_wrong_motions_differ_from_the_true_one_where_they_should(reward_benchmark):
    h1 = envs.load("h1")
    model = h1.mj_model
    times = np.arange(40, 140, 10) * h1.control_dt
    poses = reward_benchmark.motions(h1, times)
    assert tuple(poses) == reward_benchmark.MOTIONS
    true = poses["true"]
    for name, qpos in poses.items():
        assert qpos.shape == true.shape
        if name != "true":
            assert np.abs(qpos - true).max() > 0.1, name
    knee_l, knee_r = (model.joint(j).qposadr[0] for j in ("knee_angle_l", "knee_angle_r"))
    np.testing.assert_array_equal(poses["in phase"][:, knee_r], true[:, knee_l])
    # Swapped: the right leg does what the left did (half a cycle is exact after the ramp).
    np.testing.assert_allclose(poses["swapped"][:, knee_r], true[:, knee_l], atol=1e-9)
    # Sideways moves exactly the out-of-plane joints: hip rotation, not hip flexion.
    moved = set(np.flatnonzero(np.abs(poses["sideways"] - true).max(0) > 0).tolist())
    joints = reward_benchmark.sideways_joints(h1)
    assert moved == set(model.jnt_qposadr[joints].tolist())
    names = {model.joint(int(j)).name for j in joints}
    assert {"hip_rotation_l", "hip_adduction_r", "l_arm_shx", "back_bkz"} <= names
    assert not names & {"hip_flexion_l", "knee_angle_r", "left_elbow"}


def test_rank_streams_names_the_best_wrong_motion_and_the_rank(reward_benchmark):
    ranking = reward_benchmark.rank_streams({
        "good": {"true": 0.9, "late": 0.5, "standing": 0.6},
        "bad": {"true": 0.5, "late": 0.7, "standing": 0.6, "swapped": 0.4}})
    assert ranking["good"] == dict(true=0.9, best_wrong="standing", best_wrong_score=0.6,
                                   margin=pytest.approx(0.3), rank=1)
    assert ranking["bad"]["best_wrong"] == "late" and ranking["bad"]["rank"] == 3
    assert ranking["bad"]["margin"] == pytest.approx(-0.2)


def test_iou_ranks_the_true_motion_first(reward_benchmark, tmp_path):
    h1 = envs.load("h1")
    ingest = ingest_lib.IngestConfig(segmenter="background", interpolator="linear",
                                     encoder="none", resolution=64)
    bundle, _ = synthetic.make(h1, tmp_path, synthetic.SyntheticConfig(
        seconds=1.0, video_size=128), ingest)
    video = dict(encoders=["i3d"], endpoints=["Mixed_5c"], sizes=[32],
                 inputs=["shade"], render_size=32)
    result = reward_benchmark.landscape(h1, bundle, sizes=[32], frame_stride=10, video=video)
    assert result["frames"] == 7  # control steps 40, 50, ..., 100 (after the 0.4 s ramp)
    stream, rank = next(iter(result["ranking"].items()))
    assert stream == "IoU 32 px"
    scores = result["scores"][stream]
    assert rank["rank"] == 1 and rank["true"] == scores["true"] > 0.7
    assert rank["margin"] > 0.1 and rank["best_wrong_score"] == max(
        s for m, s in scores.items() if m != "true")
    # Pose errors: zero for the true motion; standing's is its mean offset from the walk.
    pose_error = result["pose_error_rad"]
    assert pose_error["true"] == 0.0 and set(pose_error) == set(reward_benchmark.MOTIONS)
    angles = envs.embodiments.angle_qpos(h1)
    truth = bundle.ground_truth_qpos[40:101:10][:, angles]
    np.testing.assert_allclose(pose_error["standing"],
                               np.abs(truth - h1.init_qpos[angles]).mean(), rtol=1e-6)
    assert all(error > 0.02 for motion, error in pose_error.items() if motion != "true")
    assert "| h1 | 0.000 |" in reward_benchmark.table([dict(
        result, embodiment="h1", camera="side")], dict(cpu_count=2, processor="x", jax="j",
                                                       mujoco="m"), dict(render_size=32))
    # The video streams: the pretrained I3D, centered, tells the walk from standing still;
    # uncentered cosines sit near 1 (measured: true 0.183, standing -0.043; raw 0.98 for all).
    video_scores = {s: v for s, v in result["scores"].items() if s.startswith("I3D")}
    assert len(video_scores) == 4
    centered = video_scores["I3D Mixed_5c mean centered shade 32px"]
    assert centered["true"] > centered["standing"] + 0.1
    assert min(video_scores["I3D Mixed_5c mean shade 32px"].values()) > 0.8
