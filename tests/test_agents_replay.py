"""The on-device circular replay buffer (agents/replay.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nil_jax.agents import replay


def _rows(values):
    values = jnp.asarray(values, jnp.float32)
    return {"x": values, "y": jnp.stack([values, -values], -1)}


def test_insert_wraps_around():
    buffer = replay.init(5, {"x": jnp.zeros(()), "y": jnp.zeros(2)})
    assert buffer.capacity == 5 and int(buffer.size) == 0
    buffer = replay.insert(buffer, _rows([1, 2, 3]))
    assert int(buffer.position) == 3 and int(buffer.size) == 3
    buffer = replay.insert(buffer, _rows([4, 5, 6]))  # rows 3, 4, then 0
    assert int(buffer.position) == 1 and int(buffer.size) == 5
    np.testing.assert_array_equal(buffer.data["x"], [6, 2, 3, 4, 5])
    np.testing.assert_array_equal(buffer.data["y"][:, 1], [-6, -2, -3, -4, -5])
    buffer = replay.insert(buffer, _rows([7, 8, 9, 10, 11]))  # a whole lap
    np.testing.assert_array_equal(buffer.data["x"], [11, 7, 8, 9, 10])  # rows 1..4, 0
    assert int(buffer.position) == 1 and int(buffer.size) == 5


def test_insert_stores_only_valid_transitions():
    """Invalid rows (a diverged step) never enter the buffer, not even in a full one."""
    buffer = replay.init(5, {"x": jnp.zeros(()), "y": jnp.zeros(2)})
    buffer = replay.insert(buffer, _rows([1, 2, 3]), jnp.array([True, False, True]))
    assert int(buffer.position) == 2 and int(buffer.size) == 2
    np.testing.assert_array_equal(buffer.data["x"][:2], [1, 3])
    buffer = replay.insert(buffer, _rows([4, 5, 6, 7]), jnp.array([True, True, True, True]))
    np.testing.assert_array_equal(buffer.data["x"], [7, 3, 4, 5, 6])  # full, wrapped
    buffer = replay.insert(buffer, _rows([np.nan, 8, np.nan]), jnp.array([False, True, False]))
    assert int(buffer.position) == 2 and int(buffer.size) == 5
    np.testing.assert_array_equal(buffer.data["x"], [7, 8, 4, 5, 6])  # only row 1 replaced
    np.testing.assert_array_equal(buffer.data["y"][:, 1], [-7, -8, -4, -5, -6])
    insert = jax.jit(replay.insert, donate_argnums=0)
    buffer = insert(buffer, _rows([9, 10]), jnp.array([False, False]))
    np.testing.assert_array_equal(buffer.data["x"], [7, 8, 4, 5, 6])
    assert int(buffer.position) == 2


def test_insert_more_than_capacity_raises():
    buffer = replay.init(2, {"x": jnp.zeros(())})
    with pytest.raises(ValueError):
        replay.insert(buffer, {"x": jnp.zeros(3)})


def test_insert_is_a_scatter_of_the_batch_only():
    """O(batch): one scatter of N rows into the donated buffer, no copy, roll or concatenate
    of the whole buffer."""
    buffer = replay.init(100_000, {"x": jnp.zeros(()), "y": jnp.zeros(2)})
    jaxpr = str(jax.make_jaxpr(replay.insert)(buffer, _rows(np.arange(8))))
    assert "scatter" in jaxpr
    for op in ("concatenate", "dynamic_update_slice", "gather", "rev", "pad"):
        assert op not in jaxpr, op
    insert = jax.jit(replay.insert, donate_argnums=0)
    compiled = insert.lower(buffer, _rows(np.arange(8))).compile()
    # In place: the compiled program needs no second buffer-sized allocation.
    buffer_bytes = 100_000 * 3 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < buffer_bytes / 10


def test_sample_draws_only_filled_rows_uniformly():
    buffer = replay.init(1000, {"x": jnp.zeros(())})
    buffer = replay.insert(buffer, {"x": jnp.arange(1, 11, dtype=jnp.float32)})  # rows 0..9
    batch = replay.sample(buffer, jax.random.PRNGKey(0), 20_000)
    values = np.asarray(batch["x"])
    assert set(np.unique(values)) == set(range(1, 11))  # never an empty (zero) row
    counts = np.bincount(values.astype(int), minlength=11)[1:]
    assert np.all(np.abs(counts / 20_000 - 0.1) < 0.01)


def test_sample_is_jittable_and_batch_shaped():
    buffer = replay.init(16, {"x": jnp.zeros(3)})
    buffer = replay.insert(buffer, {"x": jnp.ones((4, 3))})
    batch = jax.jit(replay.sample, static_argnums=2)(buffer, jax.random.PRNGKey(1), 7)
    assert batch["x"].shape == (7, 3) and np.all(np.asarray(batch["x"]) == 1)
