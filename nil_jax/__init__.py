"""nil-jax: No-data Imitation Learning (NIL, CVPR 2026) as one jitted JAX program.

Subpackages: `nil_jax.envs` (robots, tasks, physics backends), `nil_jax.reward`,
`nil_jax.agents`. See README.md for the pipeline.
"""

__version__ = "0.1.0"
