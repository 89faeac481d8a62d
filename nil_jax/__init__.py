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
