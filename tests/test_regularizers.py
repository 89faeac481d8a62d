"""The physical regularizers of the NIL reward on hand-computed values."""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from nil_jax import envs
from nil_jax.reward import regularizers


@pytest.fixture(scope="module")
def h1():
    embodiment = envs.embodiments.load("h1")
    return embodiment, regularizers.BodyIndices.of(embodiment)


def home_kinematics(embodiment, qpos=None):
    model = embodiment.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = embodiment.init_qpos if qpos is None else qpos
    mujoco.mj_kinematics(model, data)
    return data.xpos.copy(), data.xmat.reshape(-1, 3, 3).copy()


def test_indices_find_roll_pitch_hinges_and_feet(h1):
    embodiment, indices = h1
    np.testing.assert_array_equal(indices.tilt_qvel, [3, 4])  # pelvis tilt and list, not yaw
    assert len(indices.foot_bodies) == 2
    assert indices.control_dt == pytest.approx(0.01)
    a1 = regularizers.BodyIndices.of(envs.embodiments.load("a1"))
    np.testing.assert_array_equal(a1.tilt_qvel, [3, 4])
    assert len(a1.foot_bodies) == 4


def test_torques_are_normalized_by_the_actuator_range(h1):
    _, indices = h1
    nu = len(indices.ctrl_low)
    assert float(regularizers.torques(indices, jnp.zeros(nu))) == pytest.approx(0.0, abs=1e-7)
    assert float(regularizers.torques(indices, jnp.ones(nu))) == pytest.approx(-1.0)
    half = jnp.zeros(nu).at[0].set(0.5)  # one actuator at half its torque
    assert float(regularizers.torques(indices, half)) == pytest.approx(-0.25 / nu)


def test_action_rate_and_angular_velocity_values(h1):
    embodiment, indices = h1
    a = jnp.array([0.5, -0.5, 0.0, 1.0])
    b = jnp.array([0.0, 0.5, 0.0, 1.0])
    assert float(regularizers.action_rate(a, b)) == pytest.approx(-(0.25 + 1.0) / 4)
    qvel = jnp.zeros(embodiment.nv).at[3].set(2.0).at[4].set(-1.0).at[5].set(10.0)
    assert float(regularizers.angular_velocity(indices, qvel)) == pytest.approx(-5.0)


def test_foot_slip_counts_only_feet_on_the_ground(h1):
    embodiment, indices = h1
    xpos, _ = home_kinematics(embodiment)
    feet = xpos[indices.foot_bodies]
    moved = feet + np.array([0.01, 0.0, 0.0])  # 1 m/s over the 10 ms control step
    assert float(regularizers.foot_slip(indices, moved, feet, 0.03)) == pytest.approx(-2.0)
    lifted = moved.copy()
    lifted[0, 2] += 0.1  # the first foot swings above the contact height
    assert float(regularizers.foot_slip(indices, lifted, feet, 0.03)) == pytest.approx(-1.0)
    assert float(regularizers.foot_slip(indices, feet, feet, 0.03)) == 0.0


def test_torso_tilt_is_the_horizontal_gravity_squared(h1):
    embodiment, indices = h1
    theta = 0.3
    qpos = embodiment.init_qpos.copy()
    qpos[embodiment.root_qpos[4]] += theta  # lean sideways (list)
    _, xmat_home = home_kinematics(embodiment)
    _, xmat = home_kinematics(embodiment, qpos)
    home = float(regularizers.torso_tilt(xmat_home[indices.root_body]))
    tilted = float(regularizers.torso_tilt(xmat[indices.root_body]))
    # The home pose may lean a little; leaning by theta more adds about sin^2(theta).
    assert tilted < home <= 0.0
    r_zz = xmat[indices.root_body, 2, 2]
    assert tilted == pytest.approx(-(1 - r_zz ** 2))
    upright = np.eye(3)
    assert float(regularizers.torso_tilt(upright)) == 0.0
    rotation = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)],
                         [0, np.sin(theta), np.cos(theta)]])
    assert float(regularizers.torso_tilt(rotation)) == pytest.approx(-np.sin(theta) ** 2)


def test_penalties_scale_sum_and_switch_off(h1):
    embodiment, indices = h1
    xpos, xmat = home_kinematics(embodiment)
    nu, nv = len(indices.ctrl_low), embodiment.nv
    inputs = dict(action=jnp.ones(nu), previous_action=jnp.zeros(nu),
                  qvel=jnp.zeros(nv).at[3].set(1.0), xpos=xpos, previous_xpos=xpos, xmat=xmat)
    scales = regularizers.RegularizerScales()
    terms = jax.jit(lambda **k: regularizers.penalties(scales, indices, **k))(**inputs)
    assert float(terms["penalty/torques"]) == pytest.approx(-scales.torques)
    assert float(terms["penalty/action_rate"]) == pytest.approx(-scales.action_rate)
    assert float(terms["penalty/angular_velocity"]) == pytest.approx(-scales.angular_velocity)
    assert float(terms["penalty/foot_slip"]) == 0.0
    parts = sum(float(v) for k, v in terms.items() if k != "penalty/total")
    assert float(terms["penalty/total"]) == pytest.approx(parts)
    assert all(float(v) <= 0 for v in terms.values())

    only_torques = regularizers.RegularizerScales(action_rate=0, angular_velocity=0,
                                                  foot_slip=0, torso_tilt=0)
    terms = regularizers.penalties(only_torques, indices, **inputs)
    assert set(terms) == {"penalty/torques", "penalty/total"}
    with pytest.raises(ValueError, match="torques must be >= 0"):
        regularizers.RegularizerScales(torques=-1.0)
