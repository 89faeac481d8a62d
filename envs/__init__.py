"""Robots, tasks and physics backends (installed as `nil_jax.envs`).

    make("h1", task="walk", backend=None)  ->  RobotEnv (brax Env)
        embodiments.load("h1")  robot model from the loco-mujoco cache, MJX-friendly
        tasks.TASKS["walk"]     reward and termination
    make("h1", task="sit")  the same robot in the skill's scene (scenes.SKILLS: sit, hang,
                            balance), with its success predicate and task reward (skill_tasks)
        backends.make_backend   "cpu" (C MuJoCo, CPU default) or "mjx" (GPU/TPU default)
"""

from __future__ import annotations

from typing import Optional

from nil_jax.envs.backends import BACKENDS, default_backend
from nil_jax.envs.embodiments import EMBODIMENTS, load
from nil_jax.envs.robot_env import RobotEnv
from nil_jax.envs.scenes import SKILLS
from nil_jax.envs.tasks import TASKS


def make(embodiment: str = "h1", task: str = "walk", backend: Optional[str] = None,
         mjcf_path: Optional[str] = None, **env_kwargs) -> RobotEnv:
    """Builds an environment; `backend=None` picks the default for JAX's platform."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    skill = task if task in SKILLS else None  # skills come with their scene
    return RobotEnv(load(embodiment, mjcf_path, skill), TASKS[task](), backend=backend,
                    **env_kwargs)


__all__ = ["BACKENDS", "EMBODIMENTS", "SKILLS", "TASKS", "RobotEnv", "default_backend", "load",
           "make"]
