"""Backend parity: C MuJoCo on threads ("cpu") and MJX ("mjx") give the same trajectories.

Both backends integrate the same MjModel from the same state with the same controls. In
float64 with a converged constraint solver they agree to float precision (tolerance
X64_TOLERANCE over 15 control steps = 0.15 s of random torques; Talos, chaotic with its
frictionloss joints, grows a 4e-4 difference by step 18). The default solver settings
(4 Newton iterations) stop short of convergence on robots whose joints have frictionloss
(Talos, G1, A1), where MJX and C MuJoCo then land on slightly different points; H1 has no
frictionloss and agrees in float32 at the default settings (F32_TOLERANCE).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nil_jax import envs
from nil_jax.envs import embodiments, tasks
from nil_jax.envs.robot_env import RobotEnv

X64_TOLERANCE = 1e-6  # max |qpos difference| (m or rad), float64, converged solver
F32_TOLERANCE = 1e-4  # max |qpos difference|, float32, default settings, H1
STEPS = 15
NUM_ENVS = 4


def _trajectories(env_for_backend, steps=STEPS):
    out = {}
    for backend in envs.BACKENDS:
        env = env_for_backend(backend)
        keys = jax.random.split(jax.random.PRNGKey(0), NUM_ENVS)
        actions = 0.3 * jax.random.uniform(jax.random.PRNGKey(1), (steps, NUM_ENVS,
                                           env.action_size), minval=-1.0, maxval=1.0)

        def rollout(keys, actions):
            def step(state, action):
                state = jax.vmap(env.step)(state, action)
                return state, (state.pipeline_state.qpos, state.pipeline_state.qvel,
                               state.reward)
            return jax.lax.scan(step, jax.vmap(env.reset)(keys), actions)[1]

        out[backend] = [np.asarray(x) for x in jax.jit(rollout)(keys, actions)]
    return out


@pytest.fixture
def x64():
    """float64 everywhere, the host callback's thread included (a global, not a context)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", sorted(envs.EMBODIMENTS))
def test_backends_agree_in_float64_with_converged_solver(name, x64):
    spec = dataclasses.replace(embodiments.EMBODIMENTS[name], solver_iterations=50,
                               ls_iterations=50)
    embodiment = embodiments.build(spec)
    out = _trajectories(lambda b: RobotEnv(embodiment, tasks.WalkTask(), backend=b))
    (q_cpu, v_cpu, r_cpu), (q_mjx, v_mjx, r_mjx) = out["cpu"], out["mjx"]
    assert q_cpu.dtype == np.float64
    # The robots really move: the comparison is not between two resting states.
    assert np.abs(q_cpu[-1] - q_cpu[0]).max() > 0.05
    np.testing.assert_allclose(q_cpu, q_mjx, rtol=0, atol=X64_TOLERANCE)
    np.testing.assert_allclose(r_cpu, r_mjx, rtol=0, atol=X64_TOLERANCE)
    np.testing.assert_allclose(v_cpu, v_mjx, rtol=0, atol=100 * X64_TOLERANCE)


def test_backends_agree_in_float32_at_default_settings():
    out = _trajectories(lambda b: envs.make("h1", backend=b))
    (q_cpu, _, r_cpu), (q_mjx, _, r_mjx) = out["cpu"], out["mjx"]
    assert q_cpu.dtype == np.float32
    np.testing.assert_allclose(q_cpu, q_mjx, rtol=0, atol=F32_TOLERANCE)
    np.testing.assert_allclose(r_cpu, r_mjx, rtol=0, atol=F32_TOLERANCE)


def test_cpu_backend_is_a_pure_function():
    env = envs.make("g1", backend="cpu")
    state = env.reset(jax.random.PRNGKey(3))
    step = jax.jit(jax.vmap(env.step))
    batch = jax.tree.map(lambda x: jnp.stack([x, x, x]), state)
    actions = jnp.stack([jnp.zeros(env.action_size), jnp.ones(env.action_size),
                         jnp.zeros(env.action_size)])
    first = step(batch, actions)
    second = step(batch, actions)  # the batch objects were reused in between
    np.testing.assert_array_equal(first.pipeline_state.qpos, second.pipeline_state.qpos)
    np.testing.assert_array_equal(first.pipeline_state.qpos[0], first.pipeline_state.qpos[2])
    assert np.abs(first.pipeline_state.qpos[0] - first.pipeline_state.qpos[1]).max() > 1e-4
