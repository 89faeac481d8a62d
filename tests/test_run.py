"""experiments/run.py end to end on a tiny configuration of the whole NIL program.

One H1 run (a short synthetic walk at 32x32, 2 envs, small BRO nets) is stopped by a Ctrl-C
request after its first chunk, resumed with `--resume`, and finished: the run folder must hold
every output, the logs must continue where the checkpoint left off, and the evaluation must
score the policy and both baselines. Its newest checkpoint is then damaged and the run
resumed again: the previous checkpoint is used, said loudly. Bad inputs fail before anything is
compiled.
"""

import csv
import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import imageio.v2 as imageio
import numpy as np
import pytest

from nil_jax import envs, training
from nil_jax.agents import bro
from nil_jax.references import bundle as bundle_lib
from nil_jax.references import ingest as ingest_lib
from nil_jax.references import synthetic
from nil_jax.reward import renderer

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = ingest_lib.IngestConfig(segmenter="background", interpolator="linear", encoder="none",
                               resolution=64)


def _load_run_module():
    spec = importlib.util.spec_from_file_location("nil_run", ROOT / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    return _load_run_module()


def tiny_args(reference, runs_dir, *extra):
    return ["--preset", "quick", "--reference", str(reference), "--render-size", "32",
            "--agent.num-envs", "2", "--agent.critic-width", "16", "--agent.actor-width", "16",
            "--agent.num-quantiles", "4", "--agent.batch-size", "8", "--agent.warmup-steps", "8",
            "--agent.replay-capacity", "256", "--env-steps", "60", "--chunk-iterations", "5",
            "--checkpoint-every", "1", "--eval-episodes", "2", "--video-size", "32",
            "--runs-dir", str(runs_dir), "--run-name", "smoke", "--no-progress", *extra]


class StopAfterFirstChunk(training.StopRequest):
    """Ctrl-C as the first chunk runs: `train` finishes that chunk, checkpoints and returns."""

    def __enter__(self):
        super().__enter__()
        os.kill(os.getpid(), signal.SIGINT)  # the real handler: it only sets the request
        return self


def test_run_stops_resumes_and_writes_every_output(run, h1_reference, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "StopRequest", StopAfterFirstChunk)
    assert run.main(tiny_args(h1_reference, tmp_path)) == {}  # stopped, not evaluated
    folder = tmp_path / "smoke"
    assert [p.name for p in training.checkpoints(folder)] == ["step_5"]
    assert not (folder / "metrics.json").exists()
    monkeypatch.undo()

    with pytest.raises(SystemExit, match="cannot change"):
        run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--resume",
                  "--render-size", "48"])
    metrics = run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--resume",
                        "--no-progress"])
    config = json.loads((folder / "config.json").read_text())
    assert config["preset"] == "quick" and config["config"]["resume"]
    assert config["config"]["render_size"] == 32 and config["config"]["encoder"] == "none"
    assert config["resolved"]["reward"]["video_weight"] == 0  # no TimeSformer weights here
    assert config["resolved"]["episode_length"] == 40
    with open(folder / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 60 env steps / 2 envs = 30 iterations = 6 chunks of 5, each logged once.
    assert [int(r["iteration"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert all(np.isfinite(float(r["env/reward/iou"])) for r in rows)
    assert [p.name for p in training.checkpoints(folder)] == ["step_20", "step_25", "step_30"]
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert (folder / "reward_curves.png").stat().st_size > 1000

    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["training"]["env_steps"] == 60
    for policy in training.POLICIES:
        m = metrics[policy]
        assert 0 <= m["mean_iou"] <= 1 and 0 <= m["fall_rate"] <= 1
        assert 0 < m["pose_error_rad"] < np.pi
        # Its parts: the root's three rotations and H1's 19 joints, by name.
        by_angle = m["pose_error_by_angle"]
        assert len(by_angle) == 22 and {"pelvis_tilt", "knee_angle_l"} <= set(by_angle)
        np.testing.assert_allclose(np.mean(list(by_angle.values())), m["pose_error_rad"],
                                   rtol=1e-5)
        assert 0 < m["steps_to_fall_mean"] <= 40
    # Zero action holds the home pose, which is not the walk's.
    assert metrics["zero"]["pose_error_rad"] > 0.01
    frames = imageio.mimread(folder / "evaluation.mp4")
    assert frames[0].shape == (32, 96, 3)  # reference | simulation | masks
    assert len(frames) == 10  # 40 control steps at 100 Hz shown at 25 fps
    assert not [p for p in folder.rglob(".*") if p.is_file()]  # no temporary files left
    # wall_s counts both sessions' training
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls) and metrics["training"]["train_wall_s"] == walls[-1]

    # A damaged newest checkpoint (a data file deleted): said, set aside, the previous one used.
    def damage(path):  # every data file (orbax's OCDBT d/ folders) truncated to half
        data = [p for p in path.rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data, sorted(p.relative_to(path) for p in path.rglob("*"))
        for file in data:
            os.truncate(file, file.stat().st_size // 2)

    notes = config["resolved"]["notes"]
    damage(folder / "checkpoints" / "step_30")
    metrics = run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--resume",
                        "--env-steps", "70", "--no-progress"])
    log = (folder / "log.txt").read_text()
    assert "step_30 cannot be restored" in log and "resumed from" in log
    # log.txt holds the whole run: its phases, the evaluation table, the files written.
    assert all(line in log for line in ("building:", "training:", "evaluating:", "| mean_iou",
                                        "wrote "))
    assert (folder / "checkpoints" / "step_30.damaged").is_dir()
    assert [p.name for p in training.checkpoints(folder)] == ["step_25", "step_30", "step_35"]
    with open(folder / "progress.csv", newline="") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [5, 10, 15, 20, 25, 30, 35]
    assert metrics["training"]["env_steps"] == 70
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["env_steps"] == 70 and set(notes) <= set(config["resolved"]["notes"])
    # None restores: one line that says so; config.json keeps what last ran.
    for path in training.checkpoints(folder):
        damage(path)
    with pytest.raises(SystemExit, match="none of the checkpoints"):
        run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--resume",
                  "--env-steps", "80", "--no-progress"])
    assert "stopped: --resume: none of the checkpoints" in (folder / "log.txt").read_text()
    assert json.loads((folder / "config.json").read_text())["config"]["env_steps"] == 70




def progress_rows(folder):
    """progress.csv without its clock."""
    with open(folder / "progress.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


def test_a_killed_run_resumes_to_the_uninterrupted_result(run, h1_reference, tmp_path):
    """kill -9 of a training child process once it has checkpointed, then --resume: the same
    logs and metrics as the same run uninterrupted."""
    args = tiny_args(h1_reference, tmp_path, "--env-steps", "200", "--checkpoint-every", "2")
    folder = tmp_path / "smoke"
    child = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not training.checkpoints(folder):
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not (folder / "metrics.json").exists()  # killed during training
    killed_at = int(training.checkpoints(folder)[-1].name.split("_")[1])
    assert killed_at < 100  # of 100 iterations

    resumed = run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--resume",
                        "--no-progress"])
    whole = run.main([*args, "--run-name", "whole"])  # the last --run-name counts
    assert progress_rows(folder) == progress_rows(tmp_path / "whole")
    for policy in training.POLICIES:
        assert resumed[policy] == whole[policy], policy


def test_stop_request_turns_ctrl_c_into_a_request():
    # Python's default handler, or SIG_IGN when the tests run in a background job.
    before = signal.getsignal(signal.SIGINT)
    with training.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler it replaced is back


def test_a_finished_run_is_not_overwritten(run, tmp_path):
    (tmp_path / "smoke" / "checkpoints" / "step_5").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--resume"):
        run.main(["--runs-dir", str(tmp_path), "--run-name", "smoke", "--no-progress"])


def test_bad_references_fail_clearly(run, h1_reference, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        run.main(tiny_args(tmp_path / "missing.npz", tmp_path))
    (tmp_path / "notes.npz").write_text("not a bundle")
    with pytest.raises(SystemExit, match="notes.npz is not an .npz reference bundle"):
        run.main(tiny_args(tmp_path / "notes.npz", tmp_path))
    with pytest.raises(SystemExit, match="(?i)embodiment"):
        run.main([*tiny_args(h1_reference, tmp_path), "--embodiment", "a1"])
    short = bundle_lib.load(h1_reference)
    short = dataclasses.replace(
        short, **{f.name: getattr(short, f.name)[:8] for f in dataclasses.fields(short)
                  if isinstance(getattr(short, f.name), np.ndarray)},
        metadata={**short.metadata, "num_frames": 8})
    path = bundle_lib.save(short, tmp_path / "short.npz")
    with pytest.raises(SystemExit, match="one clip"):
        run.main(tiny_args(path, tmp_path))
    with pytest.raises(SystemExit, match="from the 'side' camera view.*--camera side"):
        run.main([*tiny_args(h1_reference, tmp_path), "--camera", "oblique"])
    with pytest.raises(SystemExit, match="choose one of"):
        run.main(["--embodiment", "atlas", "--runs-dir", str(tmp_path)])
    assert not (tmp_path / "smoke").exists()  # a run that never started leaves no folder


def test_the_camera_view_reaches_reference_and_simulation(h1_reference, tmp_path):
    """An oblique reference trains with the oblique view: the simulation's first frame (the
    JAX renderer) matches the reference's (MuJoCo), and differs from the side view's."""
    # From a 224 px video: at 64 px the weight-free segmenter loses the thin limbs of this view.
    bundle, _ = synthetic.make(envs.load("h1", camera="oblique"), tmp_path,
                               synthetic.SyntheticConfig(seconds=0.4, video_size=224), FAST)
    assert bundle.camera == "oblique"
    assert (tmp_path / "h1_walk_oblique.mp4").is_file()  # the side view's video stays
    side_cache, oblique_cache = (synthetic.cache_path(envs.load("h1", camera=view), tmp_path)
                                 for view in ("side", "oblique"))
    assert side_cache.name.startswith("h1_walk_") and "oblique" not in side_cache.name
    assert oblique_cache.name.startswith("h1_walk_oblique_")
    path = bundle_lib.save(bundle, tmp_path / "h1_walk_oblique.npz")
    setup = training.build(training.TrainConfig(
        reference=str(path), camera="oblique", actuation="pd", render_size=64,
        action_l2_joints="unseen",
        agent=bro.preset("bro_fast", num_envs=2, critic_width=16, actor_width=16,
                         num_quantiles=4, batch_size=8, warmup_steps=8, replay_capacity=256)))
    assert setup.embodiment.camera == "oblique"
    # the action L2 prior holds the joints this view barely sees
    np.testing.assert_array_equal(setup.learner.action_l2_mask,
                                  envs.embodiments.unseen_actuators(setup.embodiment))
    side_first = bundle_lib.load(h1_reference).masks[0]
    same = float(renderer.mask_iou(setup.env.home_mask, bundle.masks[0]))
    other = float(renderer.mask_iou(setup.env.home_mask, side_first))
    assert same > 0.8 and other < 0.6, (same, other)


def test_bad_reward_sources_fail_clearly(run, h1_reference, tmp_path, capsys):
    """Before anything is compiled (or a video ingested): an unknown source, from a flag or a
    config file, and `pose` on a reference without ground-truth poses."""
    with pytest.raises(SystemExit):
        run.parse_config(["--reward-source", "mocap"])
    assert "nil" in capsys.readouterr().err  # tyro lists the choices
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"reward_source": "mocap"}))
    with pytest.raises(SystemExit, match="'mocap'; choose one of nil, task, pose"):
        run.parse_config(["--config-file", str(path)])
    path.write_text(json.dumps({"camera": "top"}))  # the camera view too
    with pytest.raises(SystemExit, match=r"Unknown camera view 'top'; choose one of"):
        run.parse_config(["--config-file", str(path)])
    bundle = dataclasses.replace(bundle_lib.load(h1_reference), ground_truth_qpos=None)
    video = tmp_path / "video.mp4"
    video.touch()  # never read: a video's bundle has no ground truth
    for reference in (bundle_lib.save(bundle, tmp_path / "no_truth.npz"), video):
        with pytest.raises(SystemExit, match=f"{reference.name} has none.*synthetic reference"):
            run.main([*tiny_args(reference, tmp_path), "--reward-source", "pose"])
    # A source other than NIL's names the run.
    _, config = run.parse_config(["--reward-source", "pose", "--runs-dir", str(tmp_path)])
    assert run.run_folder("default", config)[0].name.startswith("h1-walk-pose-reward-default-")


def test_bad_values_are_refused_before_anything_runs(run, tmp_path, capsys):
    """Out-of-range numbers and misspelt choices: one message, exit code 2, no run folder."""
    for flags, message in ((["--env-steps", "-5"], "env_steps must be >= 1, got -5"),
                           (["--encoder-dtype", "bf16"], "encoder_dtype must be float32 or "
                                                         "bfloat16, got 'bf16'"),
                           (["--encoder", "k400"], "encoder must be one of"),
                           (["--i3d.pooling", "max"], "I3D pooling must be one of"),
                           (["--action-l2-joints", "seen"], "invalid choice"),
                           (["--no-observe-phase", "--phase-harmonics", "4"],
                            "phase_harmonics=4 needs the phase observed"),
                           (["--ingest.initial-frames", "0"], "initial_frames must be >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            run.main([*flags, "--runs-dir", str(tmp_path)])
        assert exit_info.value.code == 2
        # tyro boxes and wraps the message to the terminal's width.
        assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not list(tmp_path.iterdir())


def test_help_opens_with_the_presets_and_the_common_flags(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    opening = out[:out.index("--embodiment STR")]  # before tyro's list of every field
    assert all(f"--preset {name}" in opening for name in run.PRESETS)
    assert "--reward-source nil|task|pose" in opening and "--resume" in opening


def test_config_file_and_flags_resolve_in_order(run, tmp_path):
    stored = {"config": {"embodiment": "g1", "env_steps": 123, "agent": {"num_envs": 3},
                         "reward": {"iou_weight": 0.5, "regularizers": {"foot_slip": 0.0}}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(stored))
    preset, config = run.parse_config(["--preset", "quick", "--config-file", str(path),
                                       "--env-steps", "7"])
    assert preset == "quick" and config.embodiment == "g1" and config.env_steps == 7
    assert config.agent.num_envs == 3 and config.agent.critic_width == run.CPU_AGENT.critic_width
    assert config.reward.iou_weight == 0.5 and config.reward.regularizers.foot_slip == 0
    assert config.render_size == run.PRESETS["quick"].render_size
    path.write_text(json.dumps({"embodyment": "h1"}))
    with pytest.raises(SystemExit, match="Unknown RunConfig fields"):
        run.parse_config(["--config-file", str(path)])
    for text, message in (("{'env_steps': 5", "is not valid JSON"), ("[1, 2]", "a JSON list")):
        path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            run.parse_config(["--config-file", str(path)])


def test_after_a_fall_the_fallen_state_is_scored():
    """Episode 0 falls at step 2 (of 4): steps 3 and 4 repeat its fallen record."""
    records = {"done": np.array([[0, 0], [1, 0], [0, 0], [0, 0]], np.float32),
               "qpos": np.arange(8, dtype=np.float32).reshape(4, 2, 1)}
    held, steps = training.after_falls_held(records)
    np.testing.assert_array_equal(steps, [2, 4])
    np.testing.assert_array_equal(held["qpos"][:, 0, 0], [0, 2, 2, 2])
    np.testing.assert_array_equal(held["qpos"][:, 1, 0], [1, 3, 5, 7])


@pytest.mark.parametrize("skill,source", [("sit", "nil"), ("hang", "nil"), ("balance", "task")])
def test_skill_runs_end_to_end(run, tmp_path, skill, source):
    """`run.py --skill` on each whole-body skill (its scene and synthetic key-pose reference);
    balance as the RL upper bound (`--reward-source task`): trained on the task reward, which
    the logs then show equal to the environment's. Every policy gets a success rate and a
    normalized task reward."""
    folder = tmp_path / "references"
    bundle, _ = synthetic.make(envs.load("h1", skill=skill), folder,
                               synthetic.SyntheticConfig(seconds=0.6, video_size=64), FAST)
    reference = bundle_lib.save(bundle, folder / f"h1_{skill}.npz")
    metrics = run.main(tiny_args(reference, tmp_path / "runs", "--skill", skill,
                                 "--reward-source", source))
    for policy in ("nil", "zero", "random"):
        assert 0.0 <= metrics[policy]["success_rate"] <= 1.0
        assert 0.0 <= metrics[policy]["normalized_task_reward"] <= 1.0
    # The reference is shorter than HOLD_STEPS: no policy can have held the skill.
    assert metrics["zero"]["success_rate"] == 0.0
    run_dir = tmp_path / "runs" / "smoke"
    notes = json.loads((run_dir / "config.json").read_text())["resolved"]["notes"]
    assert any("RL upper bound" in note for note in notes) == (source == "task")
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trained, task = (np.array([float(r[k]) for r in rows])
                     for k in ("env_reward", "env/reward/env"))
    if source == "task":
        np.testing.assert_allclose(trained, task, rtol=1e-4, atol=1e-6)
    else:
        assert not np.allclose(trained, task)
    assert "success_rate" in (run_dir / "metrics.json").read_text()


def test_bad_skill_flags_fail_clearly(run, h1_reference, tmp_path):
    # Free text names a --reference video's skill; without one there is nothing to imitate.
    with pytest.raises(SystemExit, match="no synthetic reference of skill 'juggling'"):
        run.main(["--skill", "juggling", "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="shows skill 'walking'; this run's scene is 'sit'"):
        run.main([*tiny_args(h1_reference, tmp_path), "--skill", "sit"])
    with pytest.raises(SystemExit, match="--skill sit needs a humanoid.*--embodiment g1 or h1"):
        run.main(["--skill", "sit", "--embodiment", "a1", "--runs-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # no run folder was left by any of them
