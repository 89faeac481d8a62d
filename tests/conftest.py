"""Test set-up: headless MuJoCo rendering (Mesa or NVIDIA EGL) before mujoco is imported."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
