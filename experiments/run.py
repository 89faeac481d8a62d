"""The single command: `python experiments/run.py [--preset NAME] [--field value ...]`.

Until the NIL training program lands (issue 7) the default preset runs the most complete
pipeline that exists: it builds the embodiment's environment on the default physics backend,
evaluates the zero-action and random policies with the walk evaluation protocol
(`nil_jax.envs.evaluation`), renders a rollout from the tracking camera with MuJoCo's renderer,
and writes everything into one run folder:

    runs/<run_name>/config.json     the resolved configuration
    runs/<run_name>/metrics.json    walk return, reward per step, fall rate per policy
    runs/<run_name>/rollout.mp4     the zero-action rollout until the robot falls
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from typing import Optional

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede `import mujoco`

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nil_jax import envs  # noqa: E402
from nil_jax.envs import evaluation  # noqa: E402
from nil_jax.io_utils import write_json  # noqa: E402
from nil_jax.video import render_trajectory, write_video  # noqa: E402


@dataclasses.dataclass(frozen=True)
class RunConfig:
    embodiment: str = "h1"  # one of nil_jax.envs.EMBODIMENTS
    task: str = "walk"
    backend: Optional[str] = None  # "cpu" or "mjx"; None: cpu when JAX runs on the CPU
    mjcf_path: Optional[str] = None  # your own MJCF file for the embodiment
    seed: int = 0
    num_episodes: int = 5
    episode_length: int = evaluation.EPISODE_LENGTH
    video_seconds: float = 3.0
    video_fps: int = 25
    video_size: int = 224
    runs_dir: str = "runs"
    run_name: Optional[str] = None  # default: <embodiment>-<task>-<timestamp>


PRESETS = {
    "default": RunConfig(),
}


def parse_config(argv: list[str]) -> tuple[str, RunConfig]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    known, rest = parser.parse_known_args(argv)
    config = tyro.cli(RunConfig, default=PRESETS[known.preset], args=rest,
                      description=__doc__.split("\n")[0])
    if config.embodiment not in envs.EMBODIMENTS:
        raise SystemExit(f"Unknown --embodiment {config.embodiment!r}; "
                         f"choose one of {sorted(envs.EMBODIMENTS)}.")
    return known.preset, config


def rollout_qpos(env, key: jax.Array, steps: int) -> np.ndarray:
    """Joint positions of one zero-action rollout, up to and including the step it ends."""
    def step(state, _):
        state = env.step(state, jax.numpy.zeros(env.action_size))
        return state, (state.pipeline_state.qpos, state.done)

    state = env.reset(key)
    _, (qpos, done) = jax.jit(lambda s: jax.lax.scan(step, s, None, length=steps))(state)
    done = np.asarray(done)
    end = int(np.argmax(done)) + 1 if done.any() else steps
    return np.concatenate([np.asarray(state.pipeline_state.qpos)[None], np.asarray(qpos)[:end]])


def main(argv: Optional[list[str]] = None) -> dict:
    preset, config = parse_config(sys.argv[1:] if argv is None else argv)
    name = config.run_name or f"{config.embodiment}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = pathlib.Path(config.runs_dir) / name
    env = envs.make(config.embodiment, config.task, backend=config.backend,
                    mjcf_path=config.mjcf_path)
    write_json(run_dir / "config.json", {"preset": preset, **dataclasses.asdict(config),
                                         "resolved_backend": env.backend,
                                         "jax_platform": jax.default_backend()})
    print(f"[nil_jax] {config.embodiment}/{config.task} on the {env.backend} backend "
          f"-> {run_dir}")

    key = jax.random.PRNGKey(config.seed)
    policies = {"zero": evaluation.zero_policy(env.action_size),
                "random": evaluation.random_policy(env.action_size)}
    metrics = {"protocol": {"episodes": config.num_episodes,
                            "episode_length": config.episode_length,
                            "control_dt": env.embodiment.control_dt}}
    for name_, policy in tqdm(policies.items(), desc="evaluating policies"):
        results = evaluation.evaluate(env, policy, key, config.num_episodes,
                                      config.episode_length)
        metrics[name_] = evaluation.summarize(results)
    write_json(run_dir / "metrics.json", metrics)

    steps = int(round(config.video_seconds / env.embodiment.control_dt))
    qpos = rollout_qpos(env, key, steps)
    stride = max(1, int(round(1.0 / (config.video_fps * env.embodiment.control_dt))))
    frames = render_trajectory(env.embodiment.mj_model, qpos[::stride], env.embodiment.camera_id,
                               config.video_size, config.video_size)
    write_video(run_dir / "rollout.mp4", frames, fps=config.video_fps)

    for name_ in policies:
        m = metrics[name_]
        print(f"  {name_:>6} policy: return {m['return_mean']:.1f} +- {m['return_std']:.1f}, "
              f"reward/step {m['reward_per_step_mean']:.3f}, fall rate {m['fall_rate']:.2f}")
    print(f"[nil_jax] wrote {run_dir}/config.json, metrics.json, rollout.mp4")
    return metrics


if __name__ == "__main__":
    main()
