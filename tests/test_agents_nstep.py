"""n-step returns (agents/nstep.py): the learner's stored transitions are the Line env's own
one-step transitions folded by an explicit loop over time, across falls and time limits; a
diverged step drops the transitions whose return it would enter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nil_jax.agents import bro, nstep
from nil_jax.agents.replay import Transition

from test_agents_bro import SMALL, Line

ITERATIONS = 10


def fold(rewards, masks, dones, next_obs, n, discount):
    """The expected n-step transitions of steps 0..T-n, an explicit loop over time."""
    out = []
    for t in range(len(rewards) - n + 1):
        row = []
        for e in range(rewards.shape[1]):
            total, m = 0.0, n
            for k in range(n):
                total += discount ** k * rewards[t + k, e]
                if dones[t + k, e]:
                    m = k + 1
                    break
            row.append((total, discount ** (m - 1) * masks[t + m - 1, e],
                        next_obs[t + m - 1, e]))
        out.append(row)
    return out


def line_step(obs, action, episode_length):
    """The Line env's own transition from obs (position, steps) under `action`: reward, mask
    (1 - termination), episode end (fall or time limit), next observation."""
    position = obs[..., 0] + np.float32(0.4) * action[..., 0]
    steps = obs[..., 1] + 1
    fell = np.abs(position) > 1
    return (-np.abs(position), 1.0 - fell, fell | (steps >= episode_length),
            np.stack([position, steps], -1))


def test_learner_stores_folded_transitions_across_episode_ends():
    # Seed 2 and 8-step episodes: in 10 iterations of random (warm-up) actions one episode
    # falls and two reach the time limit.
    config = dataclasses.replace(SMALL, warmup_steps=3 * ITERATIONS, reset_steps=(),
                                 episode_length=8, n_step=3)
    n, envs = config.n_step, config.num_envs
    learner = bro.Bro(Line(), config)
    state = jax.jit(learner.init)(jax.random.PRNGKey(2))
    state, _ = jax.jit(learner.train, static_argnums=1)(state, ITERATIONS)
    stored = jax.tree.map(np.asarray, state.replay)
    rows = ITERATIONS - n + 1  # the window fills first
    assert int(stored.size) == rows * envs
    # Every step's observation and action: the stored rows start at steps 0..T-n, the window
    # holds the last n steps (T-n..T-1) as they happened.
    window = jax.tree.map(np.asarray, state.window.transitions)
    obs = np.concatenate([stored.data.obs[:rows * envs].reshape(rows, envs, 2)[:-1],
                          window.obs.transpose(1, 0, 2)])
    action = np.concatenate([stored.data.action[:rows * envs].reshape(rows, envs, 1)[:-1],
                             window.action.transpose(1, 0, 2)])
    rewards, masks, dones, next_obs = line_step(obs, action, config.episode_length)
    np.testing.assert_allclose(window.reward.T, rewards[-n:], rtol=1e-6)
    assert (masks == 0).any() and ((masks == 1) & dones).any()
    expected = fold(rewards, masks, dones, next_obs, n, config.discount)
    for t, row in enumerate(expected):
        for e, (reward, mask, next_ob) in enumerate(row):
            i = t * envs + e
            np.testing.assert_allclose(stored.data.reward[i], reward, rtol=1e-5)
            np.testing.assert_allclose(stored.data.mask[i], mask, rtol=1e-6)
            np.testing.assert_allclose(stored.data.next_obs[i], next_ob, rtol=1e-6)


def test_a_diverged_step_drops_the_returns_it_would_enter():
    def step(value, valid=True):
        transition = Transition(obs=jnp.full((1, 2), value), action=jnp.zeros((1, 1)),
                                reward=jnp.full((1,), value), mask=jnp.ones((1,)),
                                next_obs=jnp.full((1, 2), value + 1))
        return transition, jnp.zeros((1,)), jnp.asarray([valid])

    window = nstep.init(step(0.0)[0], 2)
    emitted = []
    for value, valid in ((1.0, True), (2.0, True), (3.0, False), (4.0, True), (5.0, True)):
        transition, done, ok = step(value, valid)
        done = done + (not valid)  # a diverged step ends its episode
        window, folded, emit = nstep.push(window, transition, done, ok, 0.5)
        emitted.append((bool(emit[0]), float(folded.reward[0])))
    # The window is not full at first; (1, 2) is stored; (2, 3) and (3), which ends its
    # episode, hold the diverged step; (4, 5) is stored.
    assert emitted == [(False, 0.5 * 1.0), (True, 1.0 + 0.5 * 2.0), (False, 2.0 + 0.5 * 3.0),
                       (False, 3.0), (True, 4.0 + 0.5 * 5.0)]


def test_n_step_must_be_positive():
    with np.testing.assert_raises_regex(ValueError, "n_step must be >= 1"):
        dataclasses.replace(SMALL, n_step=0)
