"""On-device circular replay buffer: a pytree of fixed-size arrays, pure functions over it.

    init(capacity, example)         zeros of shape (capacity, ...) for every field of `example`
    insert(replay, transitions)     N transitions written at rows (position + 0..N-1) % capacity:
                                    one scatter of N rows, O(N), never a copy or roll of the buffer
    sample(replay, key, batch)      rows drawn uniformly, with replacement, from the filled ones

The buffer stores whatever pytree it is given (`Transition` for BRO); all that it assumes is
a leading batch axis on every leaf. Like brax's replay buffers, it holds no state of its own.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Transition:
    obs: jax.Array  # (..., obs_size)
    action: jax.Array  # (..., action_size), the action applied, in [-1, 1]
    reward: jax.Array  # (...)
    mask: jax.Array  # (...) 1 - termination: 0 only where the episode ended in a terminal state
    next_obs: jax.Array  # (..., obs_size) the true last observation, never an auto-reset one


@flax.struct.dataclass
class ReplayState:
    data: Transition  # every leaf (capacity, ...)
    position: jax.Array  # () int32, the row the next insert starts at
    size: jax.Array  # () int32, filled rows: min(inserted, capacity)

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def init(capacity: int, example) -> ReplayState:
    """An empty buffer for transitions shaped like `example` (one transition, no batch axis)."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
                        example)
    return ReplayState(data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def insert(replay: ReplayState, transitions, valid: Optional[jax.Array] = None) -> ReplayState:
    """Writes a batch of N <= capacity transitions, overwriting the oldest rows once full.

    `valid` (N,) bool: only those transitions are stored (e.g. not those of a diverged step).
    They are moved to the front of the N rows; the rows after them keep their old contents,
    and the position and size advance by the number stored."""
    count = jax.tree.leaves(transitions)[0].shape[0]
    capacity = replay.capacity
    if count > capacity:  # static shapes: checked while tracing
        raise ValueError(f"Cannot insert {count} transitions into a buffer of {capacity}.")
    rows = (replay.position + jnp.arange(count, dtype=jnp.int32)) % capacity
    stored = jnp.asarray(count, jnp.int32)
    if valid is not None:
        order = jnp.argsort(~valid, stable=True)  # valid ones first, in their order
        transitions = jax.tree.map(lambda x: x[order], transitions)
        stored = jnp.sum(valid, dtype=jnp.int32)
        keep = jnp.arange(count) < stored

        def merge(buffer, x):
            x = x.astype(buffer.dtype)
            return jnp.where(keep.reshape((count,) + (1,) * (x.ndim - 1)), x, buffer[rows])

        transitions = jax.tree.map(merge, replay.data, transitions)
    data = jax.tree.map(lambda buffer, x: buffer.at[rows].set(x.astype(buffer.dtype),
                                                                unique_indices=True),
                        replay.data, transitions)
    return ReplayState(data=data, position=(replay.position + stored) % capacity,
                       size=jnp.minimum(replay.size + stored, capacity))


def sample(replay: ReplayState, key: jax.Array, batch_size: int):
    """`batch_size` transitions drawn uniformly from the filled rows (the buffer must not be
    empty)."""
    rows = jax.random.randint(key, (batch_size,), 0, replay.size)
    return jax.tree.map(lambda buffer: buffer[rows], replay.data)
