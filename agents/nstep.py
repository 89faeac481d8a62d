"""n-step returns: each env's last n transitions, folded into one transition for the replay.

    window: the N envs' last n transitions (leaves (N, n, ...), newest last), their episode ends
            and validity, and how many iterations have filled it
    push(window, transition, done, valid, discount) -> (window, folded (N,), emit (N,))

The folded transition starts at the window's oldest step i = t - n + 1 and runs m steps, up to
the first episode end inside the window (m = n when there is none):

    reward   = sum_{k < m} discount^k r_{i+k}
    mask     = discount^(m-1) (1 - termination_{i+m-1})
    next_obs = next_obs_{i+m-1}    (the true last observation when the episode ended there)

so the critic's one-step target `r + discount * mask * (Q(next_obs) - alpha log pi)` becomes the
m-step one; a fall stops the sum and does not bootstrap, a time-limit truncation bootstraps.
The intermediate steps' entropy bonuses are left out, as n-step SAC implementations do.
`emit` is false until n iterations have been pushed and where a folded step was not valid
(a diverged step: its episode ends there, and the m <= n transitions before it are dropped).
A transition therefore enters the replay n - 1 iterations after it happened; the last n - 1 of
a run never do. With n = 1 the folded transition is the transition itself.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from nil_jax.agents.replay import Transition


@flax.struct.dataclass
class Window:
    transitions: Transition  # leaves (N, n, ...), the newest step last
    done: jax.Array  # (N, n) float: the step ended its episode (termination or truncation)
    valid: jax.Array  # (N, n) bool
    filled: jax.Array  # () int32: steps pushed, at most n


def init(transitions: Transition, n: int) -> Window:
    """An empty window of `n` steps for a batch shaped like `transitions` (leaves (N, ...))."""
    num_envs = transitions.reward.shape[0]
    return Window(
        transitions=jax.tree.map(lambda x: jnp.zeros((num_envs, n) + x.shape[1:], x.dtype),
                                 transitions),
        done=jnp.zeros((num_envs, n), jnp.float32), valid=jnp.zeros((num_envs, n), bool),
        filled=jnp.zeros((), jnp.int32))


def push(window: Window, transition: Transition, done: jax.Array, valid: jax.Array,
         discount: float) -> tuple[Window, Transition, jax.Array]:
    """Adds the N envs' newest step; returns the window, the folded transitions of its oldest
    step and which of them to store (see the module docstring)."""
    def shift(old, new):
        return jnp.concatenate([old[:, 1:], new[:, None].astype(old.dtype)], axis=1)

    steps = jax.tree.map(shift, window.transitions, transition)
    done = shift(window.done, done)
    valid = shift(window.valid, valid)
    n = done.shape[1]
    # Step k of the oldest step's return counts when no earlier step of the window ended.
    counted = (jnp.cumsum(done, axis=1) - done) == 0  # (N, n)
    last = jnp.sum(counted, axis=1) - 1  # (N,) index of the return's last step, m - 1

    def at_last(x):
        index = last.reshape((-1, 1) + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)[:, 0]

    powers = discount ** jnp.arange(n, dtype=jnp.float32)
    folded = Transition(obs=steps.obs[:, 0], action=steps.action[:, 0],
                        reward=jnp.sum(steps.reward * powers * counted, axis=1),
                        mask=discount ** last.astype(jnp.float32) * at_last(steps.mask),
                        next_obs=at_last(steps.next_obs))
    filled = jnp.minimum(window.filled + 1, n)
    emit = (filled >= n) & jnp.all(valid | ~counted, axis=1)
    return Window(steps, done, valid, filled), folded, emit
