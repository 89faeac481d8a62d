"""The program suite of experiments/benchmark.py on a tiny configuration: every stage, the
sequential baseline and the table come out (rates are not asserted: speed is the benchmark's
business, not the tests')."""

import argparse

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(experiment_scripts):
    return experiment_scripts("benchmark")


def tiny_args(bench, *argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.program_benchmark.add_arguments(parser)
    bench.agent_benchmark.add_arguments(parser)
    parser.add_argument("--target-seconds", type=float, default=0.05)
    return parser.parse_args(["--program-size", "32", "--program-cases", "tiny:2:2",
                              "--program-baseline", "tiny", "--agent-rounds", "1", *argv])


def test_program_suite_measures_every_stage_and_the_baseline(bench):
    record, table = bench.program_benchmark.run_program(
        tiny_args(bench), bench.machine_info())
    [result] = record["results"]
    for name in ("physics_env_steps_per_s", "render_frames_per_s", "encoder_clips_per_s",
                 "env_steps_per_s", "learner_updates_per_s", "training_env_steps_per_s",
                 "baseline_env_steps_per_s"):
        assert np.isfinite(result[name]) and result[name] > 0, name
    assert 0 < result["encoder_share"]
    assert (result["encoder"], result["stride"], result["num_envs"]) == ("tiny", 2, 2)
    assert result["iterations_per_call"] == 10
    assert "| tiny | 2 | 2 |" in table and "x |" in table
    assert record["scaling"] == []


def test_cases_are_read_and_checked(bench):
    parse = bench.program_benchmark.parse_case
    assert parse("base:8:4") == ("base", 8, 4)
    with pytest.raises(ValueError, match="encoder:k:N"):
        parse("tiny:64")
    with pytest.raises(ValueError, match="one of none"):
        parse("huge:1:4")


def test_every_timed_call_runs_the_encoder_equally_often(bench):
    per_call = bench.program_benchmark.iterations_per_call
    assert [per_call(k) for k in (1, 2, 3, 4, 8, 16)] == [10, 10, 12, 12, 16, 16]
    for k in range(1, 20):
        assert per_call(k) % k == 0 and per_call(k) >= bench.program_benchmark.ITERATIONS
