"""Saving and restoring a whole BRO run (`bro.LearnerState`) with orbax.

    save(path, state)                       every array: agent, optimizer states, duals, the
                                            initial parameters, replay, environments, rng, step
    restore(path, learner, num_seeds=None, shardings=None)
                                            a state of the same shapes, read back exactly (into
                                            the given shardings: any number of devices)

A restored state continues bit-identically to the saved one on the same machine: nothing of the
run lives outside the state (the learner and its compiled functions are rebuilt from the
config). The layout to restore into comes from `jax.eval_shape` of `learner.init`, so no
throw-away state is built and no environment is stepped.

Orbax refuses zero-size arrays, which real states hold (MuJoCo's actuator activations `act`
of a robot without activation dynamics are (N, 0)). They carry nothing, so the checkpoint
holds the other leaves, by their position in the flattened state, and `restore` recreates the
empty ones from the layout.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from nil_jax.agents import bro


def abstract_state(learner: bro.Bro, num_seeds: Optional[int] = None):
    """Shapes and dtypes of `learner.init(key)`, or of its vmap over `num_seeds` keys."""
    key = jax.random.PRNGKey(0)
    if num_seeds is None:
        return jax.eval_shape(learner.init, key)
    return jax.eval_shape(jax.vmap(learner.init), jax.random.split(key, num_seeds))


def _nonempty(leaves) -> dict:
    return {str(i): leaf for i, leaf in enumerate(leaves) if math.prod(leaf.shape) > 0}


def save(path: str | os.PathLike, state: bro.LearnerState) -> None:
    """Writes `state` to the directory `path` (which must not exist yet) and waits for it."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(path), _nonempty(jax.tree.leaves(state)))
        checkpointer.wait_until_finished()


def restore(path: str | os.PathLike, learner: bro.Bro, num_seeds: Optional[int] = None,
            shardings=None) -> bro.LearnerState:
    """Reads a state saved by `save` for the same config (and number of seeds), into
    `shardings` (a pytree like the state, `nil_jax.parallel.state_shardings`) if given: a run
    saved on some number of devices restores onto any other."""
    leaves, treedef = jax.tree.flatten(abstract_state(learner, num_seeds))
    if shardings is not None:
        leaves = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
                  for leaf, sharding in zip(leaves, treedef.flatten_up_to(shardings))]
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.restore(os.path.abspath(path), _nonempty(leaves))

    def empty(leaf):
        zeros = jnp.zeros(leaf.shape, leaf.dtype)
        return zeros if leaf.sharding is None else jax.device_put(zeros, leaf.sharding)

    return treedef.unflatten([stored[str(i)] if str(i) in stored else empty(leaf)
                              for i, leaf in enumerate(leaves)])
