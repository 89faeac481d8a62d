"""The learning suite's bookkeeping (experiments/learning_benchmark.py): per-seed evaluations
become mean, std, min and max per point, the table's last row per case and the baselines, and a
readable PNG. Training itself is the suite's (it is run for real; see benchmarks/learning.md):
here a hand-made record of two cases, three seeds, two points."""

import imageio.v2 as imageio
import numpy as np
import pytest


@pytest.fixture(scope="module")
def suite(experiment_scripts):
    return experiment_scripts("learning_benchmark")


def seed_metrics(iou, pose):
    return dict(mean_iou=iou, pose_error_rad=pose, env_return_mean=10 * iou,
                steps_to_fall_mean=100 * iou, fall_rate=1.0)


def case(ious, poses, seeds=(0, 1, 2)):
    points = [dict(env_steps=0, wall_s=0.0, seeds=[seed_metrics(0.3, 0.2)] * len(seeds)),
              dict(env_steps=3200, wall_s=30.0,
                   seeds=[seed_metrics(i, p) for i, p in zip(ious, poses)])]
    return dict(seeds=list(seeds), env_steps=3200, train_wall_s=30.0, points=points)


def test_points_summarize_seeds_and_the_table_shows_the_end(suite, tmp_path):
    record = dict(
        machine=dict(devices=["cpu"], cpu_count=2, processor="x86_64", jax="0", mujoco="0"),
        command="python experiments/benchmark.py --suite learning", notes=["a note"],
        episode_length=300, baselines=dict(zero=seed_metrics(0.35, 0.158),
                                           random=seed_metrics(0.344, 0.195)),
        settings=dict(preset="quick", embodiment="h1", skill="walk", actuation="pd", seeds=3,
                      eval_every=1600, eval_episodes=5,
                      agent=dict(num_envs=16, updates_per_step=2, batch_size=128,
                                 critic_width=128, num_quantiles=16, actor_width=64, tau=0.005,
                                 init_temperature=0.1, reset_steps=[])),
        cases=dict(nil=case([0.4, 0.5, 0.6], [0.3, 0.2, 0.1]),
                   pose=case([0.1, 0.1, 0.4], [0.1, 0.1, 0.1])))
    for result in record["cases"].values():
        suite.summarize_points(result)
    final = record["cases"]["nil"]["points"][-1]["summary"]
    np.testing.assert_allclose([final["mean_iou"][k] for k in ("mean", "min", "max")],
                               [0.5, 0.4, 0.6])
    np.testing.assert_allclose(final["mean_iou"]["std"], np.std([0.4, 0.5, 0.6]))
    np.testing.assert_allclose(final["pose_error_rad"]["mean"], 0.2)
    assert record["cases"]["pose"]["points"][0]["summary"]["mean_iou"]["std"] == 0

    suite.write_record(record, tmp_path)
    table = (tmp_path / "learning.md").read_text()
    assert "| nil | 3 | 3,200 | 0.5 | 0.500 ± 0.082 [0.400, 0.600] | 0.200 ± 0.082" in table
    assert "| zero action | - | - | - | 0.350 | 0.158 |" in table
    assert "resets at none" in table and "Note: a note" in table
    # The curve table has one column per evaluation point.
    assert "| pose | 0.300 | 0.200 |" in table
    image = imageio.imread(tmp_path / "learning.png")
    assert image.shape[0] >= 600 and image.shape[1] >= 1200  # 2 rows x 4 readable panels
    assert (tmp_path / "learning.json").is_file()


def test_cases_set_what_is_trained_on(suite):
    import run as run_script  # experiments/, on the path through the fixture
    base = run_script.PRESETS["quick"]
    pose = suite.case_config(base, "pose", 1600)
    assert (pose.reward_source, pose.env_steps, pose.reward) == ("pose", 1600, base.reward)
    iou = suite.case_config(base, "iou_only", 1600).reward
    assert (iou.iou_weight, iou.video_weight, iou.regularizer_weight) == (1.0, 0.0, 0.0)
    assert suite.case_config(base, "video_only", 1600).reward.iou_weight == 0.0
    assert set(suite.DEFAULT_CASES) == set(suite.CASES)


def test_settings_change_nested_fields_and_bad_ones_say_why(suite):
    import run as run_script
    base = run_script.PRESETS["gpu"]
    config = suite.with_settings(base, ["agent.num_envs=16", "agent.reset_steps=15001,50001",
                                        "reward.iou_weight=2", "backend=cpu",
                                        "observe_phase=false", "render_size=32"])
    assert (config.agent.num_envs, config.agent.reset_steps) == (16, (15_001, 50_001))
    assert (config.reward.iou_weight, config.backend, config.observe_phase,
            config.render_size) == (2.0, "cpu", False, 32)
    assert suite.with_settings(base, ["agent.reset_steps="]).agent.reset_steps == ()
    # Repeated flags add up (argparse's default would keep only the last one).
    import argparse
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser.add_argument_group())
    assignments = parser.parse_args(["--learning-set", "pd_action_scale=0.2",
                                     "--learning-set", "early_termination.iou=0.4",
                                     "early_termination.steps=20"]).learning_set
    config = suite.with_settings(base, assignments)
    assert (config.pd_action_scale, config.early_termination.iou,
            config.early_termination.steps) == (0.2, 0.4, 20)
    for bad, message in (("agent.num_env=4", "BroConfig has no field 'num_env'"),
                         ("agent.num_envs=four", "a value like 1024"),
                         ("agent.num_envs=0", "must be positive"),
                         ("reward.iou_weight=-1", "iou_weight must be >= 0"),
                         ("seed.x=1", "seed.x=1"), ("agent.tau", "FIELD=VALUE"),
                         ("early_termination.iou=1.5", "must be in")):
        with pytest.raises(SystemExit, match=message):
            suite.with_settings(base, [bad])


def test_seeds_with_a_strided_video_stream_keep_the_stride_a_cond(suite):
    """Under vmap over seeds a cond on a seed's clock is a select (both branches run every
    step); the suite maps such seeds with lax.map, where it stays a cond, with the same values."""
    import types

    import jax
    import jax.numpy as jnp

    from nil_jax.reward import nil_reward

    def one_seed(clock, x):
        return jax.lax.cond(clock % 4 == 0, jnp.sin, lambda y: y, x)

    clocks, xs = jnp.arange(3), jnp.linspace(0.0, 1.0, 6).reshape(3, 2)
    primitives = {}
    for stride in (1, 4):
        setup = types.SimpleNamespace(reward=nil_reward.RewardConfig(video_stride=stride))
        mapped = suite.over_seeds(setup, one_seed)
        np.testing.assert_allclose(mapped(clocks, xs), jax.vmap(one_seed)(clocks, xs))
        primitives[stride] = str(jax.make_jaxpr(mapped)(clocks, xs))
    assert " cond[" in primitives[4] and " cond[" not in primitives[1]


def test_learn_gpu_script_runs_its_cpu_twin(h1_reference, tmp_path):
    """experiments/learn_gpu.sh as on the accelerator (the gpu preset: MJX physics, the suite,
    files under $OUT), at tiny sizes on a short synthetic walk: one case, two seeds, two
    evaluations after the start."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    out = tmp_path / "out"
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, OUT=str(out),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    finished = subprocess.run(
        ["bash", str(root / "experiments" / "learn_gpu.sh"), "--learning-cases", "nil",
         "--learning-seeds", "2", "--learning-env-steps", "64", "--learning-eval-every", "32",
         "--learning-eval-episodes", "2", "--learning-set", f"reference={h1_reference}",
         "render_size=32", "chunk_iterations=4", "agent.num_envs=8", "agent.batch_size=16",
         "agent.warmup_steps=16", "agent.replay_capacity=512", "agent.critic_width=16",
         "agent.num_quantiles=4", "agent.actor_width=16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    record = json.loads((out / "learning.json").read_text())
    settings = record["settings"]
    assert (settings["preset"], settings["backend"], settings["seeds"]) == ("gpu", "mjx", 2)
    assert settings["agent"]["num_envs"] == 8 and settings["agent"]["n_step"] == 3
    assert settings["agent"]["normalize_observations"]
    nil = record["cases"]["nil"]
    assert [p["env_steps"] for p in nil["points"]] == [0, 32, 64]
    final = nil["points"][-1]
    length = record["episode_length"]
    assert len(final["seeds"]) == 2 and length == 40  # the 41 frames of the reference
    for metrics in final["seeds"] + list(record["baselines"].values()):
        assert 0 <= metrics["mean_iou"] <= 1 and 0 < metrics["pose_error_rad"] < 3
        assert 1 <= metrics["steps_to_fall_mean"] <= length
        by_angle = metrics["pose_error_by_angle"]  # H1: 3 root rotations and 19 joints
        assert len(by_angle) == 22 and "knee_angle_l" in by_angle
        assert np.mean(list(by_angle.values())) == pytest.approx(metrics["pose_error_rad"])
    knee = final["summary"]["pose_error_by_angle"]["knee_angle_l"]
    assert knee["mean"] == pytest.approx(np.mean([m["pose_error_by_angle"]["knee_angle_l"]
                                                  for m in final["seeds"]]))
    assert "learning: nil (nil reward), 2 seeds" in (out / "learning_log.txt").read_text()
    assert f"--out-dir {out}" in record["command"]
    assert record["angles"][:4] == ["pelvis_tilt", "pelvis_list", "pelvis_rotation",
                                    "hip_rotation_l"]  # the robot's order, not JSON's
    assert "| knee_angle_l | " in (out / "learning.md").read_text()  # the angle table
    assert (out / "learning.png").is_file()
