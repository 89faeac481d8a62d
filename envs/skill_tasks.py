"""Whole-body skills as tasks: success predicates and the task reward of the RL upper bound.

Each task reads body and geom poses (`mjx.kinematics` of the state, the same on both physics
backends) and the skill's `scenes.Scene`. Per control step it gives:

    success   the skill's predicate, 0/1 (metrics["success"]); an episode succeeds when it holds
              for HOLD_STEPS consecutive steps (1 s at 100 Hz), see `held`
    reward    a hand-written task reward in [0, 1] (HumanoidBench's shapes), the reward of the
              RL upper bound that NIL is compared against; its mean per step over an episode is
              the normalized task reward
    done      the skill has clearly failed (fallen off the chair, off the board, or the grip
              broke)

Predicates (m, rad; "root" is the robot's root body, "hips" the mean of the thigh bodies):
    sit      |root height - sitting height| <= 0.05, hips over the seat (x within the seat,
             |y| <= seat half width), root upright (its z axis within ~37 deg of vertical)
    hang     every foot >= 0.05 above the floor, each hand within 0.05 of its point on the bar
    balance  no foot below 0.02 (nothing but the board touches the feet), every foot has a sole
             on the board (within its top face, <= 0.03 above it), root height >= start - 0.3;
             the board may touch the floor on one side
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

from nil_jax.envs.backends import PhysicsState
from nil_jax.envs.embodiments import Embodiment

HOLD_STEPS = 100  # consecutive control steps a predicate must hold (1 s at 100 Hz)
UPRIGHT_MIN = 0.8  # cos of the largest tilt of the root's z axis that counts as upright
SIT_HEIGHT_TOLERANCE = 0.05
HANG_FOOT_CLEARANCE = 0.05
GRIP_TOLERANCE = 0.05
GRIP_BROKEN = 0.3  # a hand this far from the bar: the episode ends
FLOOR_CONTACT = 0.02  # a foot sole lower than this touches the floor
BOARD_CONTACT = 0.03  # a foot sole within this above the board's top face stands on it
BOARD_MARGIN = 0.02
BALANCE_DROP = 0.3  # root lower than start - this: not standing
FALL_DROP = 0.5


def tolerance(x: jax.Array, low: float, high: float, margin: float,
              value_at_margin: float = 0.1, shape: str = "gaussian") -> jax.Array:
    """1 inside [low, high]; outside, decays with the distance d: gaussian
    exp(-d^2 ln(1/v) / margin^2) or linear max(0, 1 - (1 - v) d / margin), v = value_at_margin
    (dm_control's `rewards.tolerance`, whose shapes HumanoidBench's rewards use)."""
    distance = jnp.maximum(low - x, 0.0) + jnp.maximum(x - high, 0.0)
    if shape == "gaussian":
        return jnp.exp(-jnp.square(distance / margin) * np.log(1.0 / value_at_margin))
    if shape == "linear":
        return jnp.maximum(0.0, 1.0 - (1.0 - value_at_margin) * distance / margin)
    raise ValueError(f"Unknown tolerance shape {shape!r}")


def held(success: jax.Array, hold_steps: int = HOLD_STEPS) -> jax.Array:
    """Whether `success` (..., T) of 0/1 holds for `hold_steps` consecutive steps somewhere."""
    def step(run, ok):
        run = jnp.where(ok > 0, run + 1, 0)
        return run, run
    _, runs = jax.lax.scan(step, jnp.zeros(success.shape[:-1], jnp.int32),
                           jnp.moveaxis(success, -1, 0))
    return jnp.max(runs, axis=0) >= hold_steps


@functools.lru_cache(maxsize=None)
def _mjx_model(embodiment: Embodiment) -> mjx.Model:
    # Concrete arrays even when first asked for inside a trace (the cache outlives it).
    with jax.ensure_compile_time_eval():
        return mjx.put_model(embodiment.mj_model, impl="jax")


@dataclasses.dataclass(frozen=True)
class Pose:
    """The quantities the skill tasks read, of one state."""

    root_pos: jax.Array  # (3,)
    root_up: jax.Array  # () z component of the root's z axis: 1 upright
    hips: jax.Array  # (3,) mean position of the thigh bodies
    sole_low: jax.Array  # (F,) lowest point (z) of each foot geom
    sole_pos: jax.Array  # (F, 3) that lowest point
    data: mjx.Data


def pose(embodiment: Embodiment, state: PhysicsState) -> Pose:
    model = embodiment.mj_model
    mx = _mjx_model(embodiment)
    data = mjx.kinematics(mx, mjx.make_data(mx).replace(qpos=state.qpos))
    root = embodiment.root_body
    feet = embodiment.foot_geom_ids
    # Feet are capsules along their z axis, or spheres (embodiments): the lowest point.
    radius = jnp.asarray(model.geom_size[feet, 0])
    capsule = model.geom_type[feet] == mujoco.mjtGeom.mjGEOM_CAPSULE
    half_length = jnp.asarray(np.where(capsule, model.geom_size[feet, 1], 0))
    axis = data.geom_xmat[feet][:, :, 2]  # (F, 3)
    end = data.geom_xpos[feet] - jnp.sign(axis[:, 2:3] + 1e-12) * axis * half_length[:, None]
    sole_pos = end - jnp.array([0.0, 0.0, 1.0]) * radius[:, None]
    scene = embodiment.scene
    thighs = [model.body(n).id for n in _limbs(embodiment).thigh_bodies] if scene else [root]
    return Pose(root_pos=data.xpos[root], root_up=data.xmat[root][2, 2],
                hips=data.xpos[np.array(thighs)].mean(axis=0), sole_low=sole_pos[:, 2],
                sole_pos=sole_pos, data=data)


def _limbs(embodiment: Embodiment):
    from nil_jax.envs import scenes  # noqa: PLC0415
    return scenes.LIMBS[embodiment.name]


def _scene(embodiment: Embodiment, skill: str):
    scene = embodiment.scene
    if scene is None or scene.skill != skill:
        raise ValueError(f"The {skill} task needs the {skill} scene: load the embodiment with "
                         f"envs.load({embodiment.name!r}, skill={skill!r}).")
    return scene


class SkillTask:
    """Shared plumbing: metrics, reward = task reward, success as a metric."""

    name = "skill"

    def metric_names(self) -> tuple[str, ...]:
        return (f"reward/{self.name}", "success")

    def measure(self, embodiment: Embodiment, state: PhysicsState
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(task reward, success 0/1, failed) of one state."""
        raise NotImplementedError

    def success(self, embodiment: Embodiment, state: PhysicsState) -> jax.Array:
        return self.measure(embodiment, state)[1]

    def reward(self, embodiment: Embodiment, previous: PhysicsState, state: PhysicsState,
               action: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        del previous, action
        reward, success, _ = self.measure(embodiment, state)
        return reward, {f"reward/{self.name}": reward, "success": success}

    def terminated(self, embodiment: Embodiment, state: PhysicsState) -> jax.Array:
        # A second `measure` of the same state in the same step: XLA merges the two traces (a
        # compiled sit reward with and without `terminated` costs the same FLOPs, 30.7k on H1).
        return self.measure(embodiment, state)[2]


class SitTask(SkillTask):
    """Sit on the chair behind the robot and stay seated."""

    name = "sit"

    def measure(self, embodiment, state):
        scene = _scene(embodiment, "sit")
        p = pose(embodiment, state)
        height = p.root_pos[2]
        on_seat_x = (p.hips[0] >= scene.seat_x[0]) & (p.hips[0] <= scene.seat_x[1])
        on_seat_y = jnp.abs(p.hips[1]) <= scene.seat_half_width
        upright = p.root_up >= UPRIGHT_MIN
        success = (jnp.abs(height - scene.sit_height) <= SIT_HEIGHT_TOLERANCE) & on_seat_x \
            & on_seat_y & upright
        sitting = tolerance(height, scene.sit_height - 0.02, scene.sit_height + 0.02, 0.2)
        on_chair = tolerance(p.hips[0], *scene.seat_x, 0.2) * tolerance(p.hips[1], -0.1, 0.1, 0.1)
        straight = tolerance(p.root_up, 0.9, 1.0, 0.9, value_at_margin=0.0, shape="linear")
        reward = (0.5 * sitting + 0.5 * on_chair) * straight
        failed = (height < 0.5 * scene.sit_height) | (p.root_up < 0.3)
        return reward, success.astype(reward.dtype), failed


class HangTask(SkillTask):
    """Hang from the bar, hands on it, feet off the ground."""

    name = "hang"

    def measure(self, embodiment, state):
        scene = _scene(embodiment, "hang")
        p = pose(embodiment, state)
        hands = scene.hand_body_ids
        grips = p.data.xpos[hands] + jnp.einsum("hij,hj->hi", p.data.xmat[hands],
                                                jnp.asarray(scene.hand_anchors, jnp.float32))
        gap = jnp.linalg.norm(grips - scene.bar_anchors, axis=-1).max()
        lowest_foot = p.sole_low.min()
        success = (lowest_foot >= HANG_FOOT_CLEARANCE) & (gap <= GRIP_TOLERANCE)
        feet_up = tolerance(lowest_foot, 2 * HANG_FOOT_CLEARANCE, jnp.inf, 0.1)
        gripping = tolerance(gap, 0.0, 0.02, 0.1)
        straight = tolerance(p.root_up, 0.9, 1.0, 0.9, value_at_margin=0.0, shape="linear")
        reward = feet_up * gripping * straight
        return reward, success.astype(reward.dtype), gap > GRIP_BROKEN


class BalanceTask(SkillTask):
    """Stand on the board balanced on its sphere; only the board touches the feet."""

    name = "balance"

    def measure(self, embodiment, state):
        scene = _scene(embodiment, "balance")
        p = pose(embodiment, state)
        board = scene.board_body_id
        rotation, centre = p.data.xmat[board], p.data.xpos[board]
        local = (p.sole_pos - centre) @ rotation  # (F, 3) soles in the board's frame
        half = np.asarray(scene.board_half_size)
        on_board = (jnp.abs(local[:, 0]) <= half[0] + BOARD_MARGIN) \
            & (jnp.abs(local[:, 1]) <= half[1] + BOARD_MARGIN) \
            & (local[:, 2] - half[2] <= BOARD_CONTACT) & (local[:, 2] - half[2] >= -BOARD_MARGIN)
        feet = embodiment.mj_model.geom_bodyid[embodiment.foot_geom_ids]
        foot_on_board = jnp.stack([jnp.any(on_board[feet == f]) for f in np.unique(feet)])
        off_floor = p.sole_low.min() >= FLOOR_CONTACT
        height = p.root_pos[2]
        standing_height = height >= scene.start_height - BALANCE_DROP
        success = off_floor & jnp.all(foot_on_board) & standing_height
        standing = tolerance(height, scene.start_height - 0.1, jnp.inf, scene.start_height / 4)
        straight = tolerance(p.root_up, 0.9, 1.0, 1.9, value_at_margin=0.0, shape="linear")
        reward = standing * straight * jnp.mean(foot_on_board) * off_floor
        failed = (height < scene.start_height - FALL_DROP) | ~off_floor
        return reward, success.astype(reward.dtype), failed


SKILL_TASKS = {"sit": SitTask, "hang": HangTask, "balance": BalanceTask}
