"""nil-jax: No-data Imitation Learning (NIL, CVPR 2026) as one jitted JAX program.

Subpackages: `nil_jax.envs` (robots, tasks, physics backends), `nil_jax.reward`,
`nil_jax.agents`. See README.md for the pipeline.
"""

import os

__version__ = "0.1.0"

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl-C from reaching it),
# which runs Python's fork handlers in a multithreaded process: JAX warns that this may
# deadlock, on every video read or written. Without it ffmpeg is a plain fork-exec; a Ctrl-C
# then stops a video being written too, which the run's interrupt handling expects anyway.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


def _import_mjx_without_the_warp_probe() -> None:
    """`mujoco.mjx` probes for NVIDIA Warp (an optional GPU backend nil-jax does not use) at
    import and prints "Failed to import warp: No module named 'warp'" twice when it is absent.
    That one message is dropped; any other line (a Warp that is installed but broken) is kept."""
    import contextlib
    import io
    import sys

    if "mujoco.mjx" in sys.modules:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import mujoco.mjx  # noqa: F401
    finally:
        for line in printed.getvalue().splitlines():
            if not (line.startswith(("Failed to import warp:", "Failed to import mujoco_warp:"))
                    and "No module named 'warp'" in line):
                print(line)


_import_mjx_without_the_warp_probe()
