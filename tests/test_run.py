"""experiments/run.py end to end on a tiny configuration: the run folder and its files."""

import importlib.util
import json
import pathlib
import sys

import imageio.v2 as imageio
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_run_module():
    spec = importlib.util.spec_from_file_location("nil_run", ROOT / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_run_writes_config_metrics_and_video(tmp_path):
    run = _load_run_module()
    metrics = run.main(["--embodiment", "a1", "--num-episodes", "2", "--episode-length", "100",
                        "--video-seconds", "0.4", "--video-size", "64",
                        "--runs-dir", str(tmp_path), "--run-name", "smoke"])
    folder = tmp_path / "smoke"
    config = json.loads((folder / "config.json").read_text())
    assert config["embodiment"] == "a1" and config["resolved_backend"] == "cpu"
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for policy in ("zero", "random"):
        m = on_disk[policy]
        assert 0 < m["episode_steps_mean"] <= 100
        assert 0 <= m["reward_per_step_mean"] <= 1
        assert 0 < m["return_mean"] <= m["episode_steps_mean"]  # at most 1 per step
    frames = imageio.mimread(folder / "rollout.mp4")
    assert frames[0].shape == (64, 64, 3)
    assert 1 < len(frames) <= 11 and frames[0].std() > 5  # a real picture, not a blank frame
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_run_rejects_an_unknown_embodiment(tmp_path):
    run = _load_run_module()
    with pytest.raises(SystemExit, match="choose one of"):
        run.main(["--embodiment", "atlas", "--runs-dir", str(tmp_path)])
