"""Whole-body skill scenes: a chair, a bar, a balance board, added to a robot with `MjSpec`.

    robot MjSpec + home pose --SceneBuilder.add--> scene bodies, contact bits, start pose
                             --compile--> SceneBuilder.finish --> Scene (what the tasks measure)

    sit      a chair behind the robot. Its seat top is where the thighs rest in the robot's
             sitting key pose (feet where they stand, thighs forward, shins down) and its
             backrest touches the back there, so the sitting root height `sit_height` fits
             each robot (H1: 0.67 m; HumanoidBench asks 0.68-0.72 m of its H1). The robot
             starts standing in front of it.
    hang     a horizontal bar at 2.8 m. Each hand (the top of its arm's last body in the hanging
             key pose, arms raised and straight, the body pitched so its centre of mass hangs
             under the grips) is held on the bar by a `connect` equality constraint, as
             public humanoid benchmarks do; the robot starts hanging, feet off the ground.
    balance  a 0.3 x 1.1 m board (long side across the robot) resting on a free sphere of
             radius 0.17 m; the robot starts standing on the board's centre.

Scene bodies are named "scene_*" (SCENE_PREFIX): they are simulated but are not part of the
robot's body mask (`reward.renderer.body_geoms` leaves them out). Their free joints come after
the robot's in qpos/qvel (`Embodiment.robot_nq`).

Contacts stay sparse (the robot keeps its foot-only contacts, see `embodiments`), with bits:
    1  feet (conaffinity 1) touch the floor and the board (contype 1)
    2  thigh and back capsules (conaffinity 2, hidden) touch the chair (contype 2)
    4  the board (conaffinity 4) touches the floor (contype 1 | 4)
and the sphere (conaffinity 1) touches the floor and the board, not the feet.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import mujoco
import numpy as np

SKILLS = ("sit", "hang", "balance")
SCENE_PREFIX = "scene_"
BAR_HEIGHT = 2.8  # m, bar axis above the floor
BAR_RADIUS = 0.02
BAR_HALF_LENGTH = 0.6
BOARD_HALF_SIZE = (0.15, 0.55, 0.02)  # m: 0.3 along x (forward) x 1.1 along y x 0.04
PIVOT_RADIUS = 0.17
THIGH_RADIUS_FRACTION = 0.15  # thigh capsule radius / thigh length
SEAT_FRONT_FRACTION = 0.6  # the seat reaches this many thigh lengths in front of the hips
BACKREST_HEIGHT = 0.5  # m above the seat
_CHAIR_RGBA = (0.55, 0.38, 0.22, 1.0)
_BAR_RGBA = (0.6, 0.6, 0.65, 1.0)
_BOARD_RGBA = (0.7, 0.55, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class Limbs:
    """The joints and bodies the skill key poses and tasks use, left side first."""

    hip_pitch: tuple[str, str]
    knee: tuple[str, str]
    ankle_pitch: tuple[str, str]
    shoulder_pitch: tuple[str, str]
    elbow: tuple[str, str]
    thigh_bodies: tuple[str, str]  # the bodies between hip and knee
    torso_body: str  # leans on the backrest
    hand_bodies: tuple[str, str]  # the last body of each arm (with the bodies below it)
    # Key poses (rad). Sitting: thighs forward, about level, shins down (ankles keep the feet
    # flat); G1's links carry built-in rotations, so its thighs tilt ~5 deg up and its shins
    # ~9 deg back. Hanging: arms raised, elbows straight (both robots' forearms stand at right
    # angles to the upper arm at elbow 0).
    sit_hip: float = -1.57
    sit_knee: float = 1.57
    hang_shoulder: float = -2.8
    hang_elbow: float = 1.57


LIMBS = {
    "h1": Limbs(hip_pitch=("hip_flexion_l", "hip_flexion_r"),
                knee=("knee_angle_l", "knee_angle_r"),
                ankle_pitch=("ankle_angle_l", "ankle_angle_r"),
                shoulder_pitch=("l_arm_shy", "r_arm_shy"), elbow=("left_elbow", "right_elbow"),
                thigh_bodies=("left_hip_pitch_link", "right_hip_pitch_link"),
                torso_body="torso_link", hand_bodies=("left_elbow_link", "right_elbow_link")),
    "g1": Limbs(hip_pitch=("left_hip_pitch_joint", "right_hip_pitch_joint"),
                knee=("left_knee_joint", "right_knee_joint"),
                ankle_pitch=("left_ankle_pitch_joint", "right_ankle_pitch_joint"),
                shoulder_pitch=("left_shoulder_pitch_joint", "right_shoulder_pitch_joint"),
                elbow=("left_elbow_pitch_joint", "right_elbow_pitch_joint"),
                thigh_bodies=("left_hip_yaw_link", "right_hip_yaw_link"),
                torso_body="torso_link",
                hand_bodies=("left_elbow_roll_link", "right_elbow_roll_link")),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a skill's task and success predicate measure (world frame, metres; static)."""

    skill: str
    start_height: float  # root body height in the start pose
    feet_supported: bool  # the start pose stands on something (the floor, the board): not hang
    key_qpos: np.ndarray  # (robot_nq,) the skill's key pose: sitting, hanging, standing on board
    # sit: seat top, seat x range, seat half width (centred on y = 0), sitting root height
    seat_top: float = np.nan
    seat_x: tuple[float, float] = (np.nan, np.nan)
    seat_half_width: float = np.nan
    sit_height: float = np.nan
    # hang: hand bodies, anchor points in their frames (2, 3) and on the bar (2, 3)
    hand_body_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    hand_anchors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
    bar_anchors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
    # balance: the board's body and half sizes, the pivot's body
    board_body_id: int = -1
    board_half_size: tuple[float, float, float] = BOARD_HALF_SIZE
    pivot_body_id: int = -1


def is_scene_body(model: mujoco.MjModel, body: int) -> bool:
    """True for bodies of a skill scene (and everything attached below them)."""
    root = model.body_rootid[body]
    return (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, root) or "").startswith(
        SCENE_PREFIX)


def _kinematics(model: mujoco.MjModel, qpos: np.ndarray) -> mujoco.MjData:
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_kinematics(model, data)
    return data


def set_joints(model: mujoco.MjModel, qpos: np.ndarray, values: dict[str, float]) -> np.ndarray:
    """A copy of `qpos` with the named joints set (clipped to their ranges)."""
    qpos = qpos.copy()
    for name, value in values.items():
        joint = model.joint(name)
        qpos[joint.qposadr[0]] = np.clip(value, *joint.range) if model.jnt_limited[joint.id] \
            else value
    return qpos


def _feet_x(model: mujoco.MjModel, data: mujoco.MjData, foot_geoms) -> float:
    return float(np.mean(data.geom_xpos[list(foot_geoms), 0]))


def _visual_points(model: mujoco.MjModel, data: mujoco.MjData, body: int,
                   subtree: bool = True) -> np.ndarray:
    """World points of the visible geoms of `body` (and of the bodies below it, if `subtree`):
    mesh vertices, and for primitives the centre +- the bounding radius along each axis."""
    subtree = [b for b in range(model.nbody)
               if b == body or (subtree and _is_below(model, b, body))]
    points = []
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in subtree or model.geom_group[g] >= 3:
            continue
        pos, mat = data.geom_xpos[g], data.geom_xmat[g].reshape(3, 3)
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
            mesh = model.geom_dataid[g]
            start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
            points.append(model.mesh_vert[start:start + count] @ mat.T + pos)
        else:
            points.append(pos + model.geom_rbound[g] * np.concatenate([np.eye(3), -np.eye(3)]))
    if not points:
        raise ValueError(f"body {model.body(body).name!r} has no visible geoms")
    return np.concatenate(points)


def _is_below(model: mujoco.MjModel, body: int, ancestor: int) -> bool:
    while body > 0:
        body = model.body_parentid[body]
        if body == ancestor:
            return True
    return False


class SceneBuilder:
    """Adds one skill's scene to a robot's MjSpec (`embodiments.build(spec, scene=...)`)."""

    def __init__(self, skill: str, limbs: Limbs):
        if skill not in SKILLS:
            raise ValueError(f"Unknown skill {skill!r}; choose one of {SKILLS}.")
        self.skill, self.limbs = skill, limbs
        self._info: dict = {}

    def add(self, mj_spec: mujoco.MjSpec, model: mujoco.MjModel, home_qpos: np.ndarray,
            root: int, root_height_qpos: int, root_x_qpos: int, foot_geoms: np.ndarray,
            floor: mujoco.MjsGeom) -> tuple[np.ndarray, np.ndarray]:
        """Adds the scene to `mj_spec` (of the robot-only `model`). Returns the robot's start
        qpos (robot_nq,) and the scene's initial qpos (its free joints, appended)."""
        self._model, self._root = model, root
        self._height_qpos, self._x_qpos, self._feet = root_height_qpos, root_x_qpos, foot_geoms
        add = {"sit": self._add_chair, "hang": self._add_bar, "balance": self._add_board}
        return add[self.skill](mj_spec, home_qpos, floor)

    def _root_pitch_qpos(self) -> int:
        """qpos address of the root's hinge about the world y axis (LocoMujoco's tilt)."""
        model = self._model
        joints = range(model.body_jntadr[self._root],
                       model.body_jntadr[self._root] + model.body_jntnum[self._root])
        pitch = [j for j in joints if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
                 and abs(model.jnt_axis[j][1]) > 0.99]
        if len(pitch) != 1:
            raise ValueError("the robot's root needs one hinge about y (pitch) to hang at rest")
        return int(model.jnt_qposadr[pitch[0]])

    def _root_z(self, qpos: np.ndarray) -> float:
        return float(_kinematics(self._model, qpos).xpos[self._root, 2])

    def _on_height(self, qpos: np.ndarray, height: float) -> np.ndarray:
        """`qpos` raised or lowered so that the lowest foot touches `height`."""
        from nil_jax.envs.embodiments import feet_at  # noqa: PLC0415 (embodiments imports us)
        return feet_at(self._model, qpos[None], self._height_qpos, self._feet, height)[0]

    # --- sit ------------------------------------------------------------------------------

    def _add_chair(self, mj_spec, home, floor_geom):
        model, limbs = self._model, self.limbs
        feet_x = _feet_x(model, _kinematics(model, home), self._feet)
        sit = set_joints(model, home, {
            **{j: limbs.sit_hip for j in limbs.hip_pitch},
            **{j: limbs.sit_knee for j in limbs.knee},
            **{j: -(limbs.sit_hip + limbs.sit_knee) for j in limbs.ankle_pitch}})
        sit = self._on_height(sit, 0.0)
        # The feet stay where they stood: the pelvis moves back by about a thigh length.
        sit[self._x_qpos] += feet_x - _feet_x(model, _kinematics(model, sit), self._feet)
        data = _kinematics(model, sit)

        # Thigh capsules from hip to knee, hidden, touching only the chair.
        hips, knees, radius = [], [], 0.0
        for name in limbs.thigh_bodies:
            thigh = model.body(name).id
            knee_bodies = [b for b in range(model.nbody) if model.body_parentid[b] == thigh]
            if len(knee_bodies) != 1:
                raise ValueError(f"thigh body {name!r} must have exactly one child (the shin)")
            knee_local = model.body_pos[knee_bodies[0]]
            radius = THIGH_RADIUS_FRACTION * float(np.linalg.norm(knee_local))
            mj_spec.body(name).add_geom(
                name=f"{name}_seat_proxy", type=mujoco.mjtGeom.mjGEOM_CAPSULE,
                size=[radius, 0, 0], fromto=np.concatenate([np.zeros(3), knee_local]),
                contype=0, conaffinity=2, condim=3, group=3, mass=0, density=0)
            hips.append(data.xpos[thigh])
            knees.append(data.xpos[knee_bodies[0]])
        hips, knees = np.array(hips), np.array(knees)
        thigh_length = float(np.mean(np.linalg.norm(knees - hips, axis=1)))
        hip_x = float(hips[:, 0].mean())
        front_x = hip_x + SEAT_FRONT_FRACTION * thigh_length
        # The seat top: the lowest point of the thigh capsules over the seat (a thigh sloping
        # down toward the knee rests on the seat's front edge).
        along = np.clip((front_x - hips[:, 0]) / (knees[:, 0] - hips[:, 0]), 0.0, 1.0)
        seat_top = float(np.min(np.minimum(hips[:, 2], hips[:, 2] + along * (knees[:, 2]
                                                                             - hips[:, 2])))
                         - radius)
        # A capsule up the torso, as deep as its back, leans on the backrest; the backrest
        # touches it in the sitting pose (PD joints sag: without it the robot tips over).
        torso = model.body(limbs.torso_body).id
        rotation = data.xmat[torso].reshape(3, 3)
        local = (_visual_points(model, data, torso, subtree=False) - data.xpos[torso]) @ rotation
        back_depth, torso_top = float(-local[:, 0].min()), float(local[:, 2].max())
        mj_spec.body(limbs.torso_body).add_geom(
            name=f"{limbs.torso_body}_back_proxy", type=mujoco.mjtGeom.mjGEOM_CAPSULE,
            size=[back_depth, 0, 0], fromto=[0, 0, back_depth, 0, 0, torso_top],
            contype=0, conaffinity=2, condim=3, group=3, mass=0, density=0)
        back_x = float(data.xpos[torso, 0] - back_depth)
        seat_x = (back_x, front_x)
        half_width = float(np.abs(hips[:, 1]).max() + 2 * radius)
        centre_x = 0.5 * (seat_x[0] + seat_x[1])
        half_depth = 0.5 * (seat_x[1] - seat_x[0])
        chair = mj_spec.worldbody.add_body(name=f"{SCENE_PREFIX}chair", pos=[centre_x, 0, 0])
        chair.add_geom(name=f"{SCENE_PREFIX}chair_seat", type=mujoco.mjtGeom.mjGEOM_BOX,
                       size=[half_depth, half_width, 0.5 * seat_top], pos=[0, 0, 0.5 * seat_top],
                       contype=2, conaffinity=0, condim=3, rgba=_CHAIR_RGBA)
        chair.add_geom(name=f"{SCENE_PREFIX}chair_back", type=mujoco.mjtGeom.mjGEOM_BOX,
                       size=[0.02, half_width, 0.5 * BACKREST_HEIGHT],
                       pos=[back_x - 0.02 - centre_x, 0, seat_top + 0.5 * BACKREST_HEIGHT],
                       contype=2, conaffinity=0, condim=3, rgba=_CHAIR_RGBA)
        self._info = dict(key_qpos=sit, seat_top=seat_top, seat_x=seat_x, feet_supported=True,
                          seat_half_width=half_width, sit_height=self._root_z(sit),
                          start_height=self._root_z(home))
        return home, np.zeros(0)

    # --- hang -----------------------------------------------------------------------------

    def _add_bar(self, mj_spec, home, floor_geom):
        model, limbs = self._model, self.limbs
        hang = set_joints(model, home, {**{j: limbs.hang_shoulder for j in limbs.shoulder_pitch},
                                        **{j: limbs.hang_elbow for j in limbs.elbow}})
        hands = [model.body(name).id for name in limbs.hand_bodies]

        def grips_and_com(qpos):
            data = _kinematics(model, qpos)
            mujoco.mj_comPos(model, data)
            grips = []
            for hand in hands:  # the highest point of the raised arm's end
                points = _visual_points(model, data, hand)
                grips.append(points[np.argmax(points[:, 2])])
            return np.array(grips), data.subtree_com[self._root]

        # Pitch the whole body (the root's pitch hinge) until its centre of mass hangs under
        # the grips: the start pose is at rest, not a swing's top.
        pitch = self._root_pitch_qpos()
        offsets = np.linspace(-0.6, 0.6, 121)
        errors = []
        for offset in offsets:
            tilted = hang.copy()
            tilted[pitch] += offset
            grips, com = grips_and_com(tilted)
            errors.append(abs(com[0] - grips[:, 0].mean()))
        hang[pitch] += offsets[int(np.argmin(errors))]
        grips, _ = grips_and_com(hang)
        # Raise the robot so the grips' mean is on the bar axis; the bar passes through both.
        hang = hang.copy()
        hang[self._height_qpos] += BAR_HEIGHT - grips[:, 2].mean()
        data = _kinematics(model, hang)
        grips[:, 2] += BAR_HEIGHT - grips[:, 2].mean()
        bar_x = float(grips[:, 0].mean())
        bar_anchors = np.stack([np.array([bar_x, y, BAR_HEIGHT]) for y in grips[:, 1]])
        local = np.stack([data.xmat[h].reshape(3, 3).T @ (g - data.xpos[h])
                          for h, g in zip(hands, grips)])
        bar = mj_spec.worldbody.add_body(name=f"{SCENE_PREFIX}bar", pos=[bar_x, 0, BAR_HEIGHT])
        bar.add_geom(name=f"{SCENE_PREFIX}bar", type=mujoco.mjtGeom.mjGEOM_CAPSULE,
                     size=[BAR_RADIUS, 0, 0],
                     fromto=[0, -BAR_HALF_LENGTH, 0, 0, BAR_HALF_LENGTH, 0],
                     contype=0, conaffinity=0, rgba=_BAR_RGBA)
        # One post, at the far end: seen from the side camera (on -y) a near post would stand
        # in front of the robot.
        bar.add_geom(name=f"{SCENE_PREFIX}bar_post", type=mujoco.mjtGeom.mjGEOM_CAPSULE,
                     size=[BAR_RADIUS, 0, 0],
                     fromto=[0, BAR_HALF_LENGTH, 0, 0, BAR_HALF_LENGTH, -BAR_HEIGHT],
                     contype=0, conaffinity=0, rgba=_BAR_RGBA)
        for name, anchor in zip(limbs.hand_bodies, local):
            mj_spec.add_equality(type=mujoco.mjtEq.mjEQ_CONNECT,
                                 objtype=mujoco.mjtObj.mjOBJ_BODY, name1=name, name2="world",
                                 name=f"{SCENE_PREFIX}grip_{name}",
                                 data=np.concatenate([anchor, np.zeros(mujoco.mjNEQDATA - 3)]))
        self._info = dict(key_qpos=hang, hand_body_ids=np.array(hands), hand_anchors=local,
                          feet_supported=False,
                          bar_anchors=bar_anchors, start_height=self._root_z(hang))
        return hang, np.zeros(0)

    # --- balance --------------------------------------------------------------------------

    def _add_board(self, mj_spec, home, floor_geom: mujoco.MjsGeom):
        model = self._model
        half = np.array(BOARD_HALF_SIZE)
        board_z = 2 * PIVOT_RADIUS + half[2]
        stand = self._on_height(home, board_z + half[2])
        stand[self._x_qpos] -= _feet_x(model, _kinematics(model, stand), self._feet)
        floor_geom.contype, floor_geom.conaffinity = 1 | 4, 0
        pivot = mj_spec.worldbody.add_body(name=f"{SCENE_PREFIX}pivot")
        pivot.add_freejoint(name=f"{SCENE_PREFIX}pivot")
        pivot.add_geom(name=f"{SCENE_PREFIX}pivot", type=mujoco.mjtGeom.mjGEOM_SPHERE,
                       size=[PIVOT_RADIUS, 0, 0], contype=0, conaffinity=1, condim=3,
                       density=300, rgba=_BOARD_RGBA)
        board = mj_spec.worldbody.add_body(name=f"{SCENE_PREFIX}board")
        board.add_freejoint(name=f"{SCENE_PREFIX}board")
        board.add_geom(name=f"{SCENE_PREFIX}board", type=mujoco.mjtGeom.mjGEOM_BOX, size=half,
                       contype=1, conaffinity=4, condim=3, density=600, rgba=_BOARD_RGBA)
        identity = [1.0, 0.0, 0.0, 0.0]
        scene_qpos = np.array([0, 0, PIVOT_RADIUS, *identity, 0, 0, board_z, *identity], float)
        self._info = dict(key_qpos=stand, start_height=self._root_z(stand), feet_supported=True)
        return stand, scene_qpos

    def finish(self, model: mujoco.MjModel) -> Scene:
        """The Scene of the compiled model (with the scene)."""
        info = dict(self._info)
        if self.skill == "hang":
            # The compiler puts the world-side anchor where the hand is at qpos0; it belongs on
            # the bar (`connect` data: anchor in body1, then anchor in body2 = world).
            for name, bar_anchor in zip(self.limbs.hand_bodies, info["bar_anchors"]):
                eq = model.equality(f"{SCENE_PREFIX}grip_{name}").id
                model.eq_data[eq, 3:6] = bar_anchor
        if self.skill == "balance":
            info.update(board_body_id=model.body(f"{SCENE_PREFIX}board").id,
                        pivot_body_id=model.body(f"{SCENE_PREFIX}pivot").id)
        return Scene(skill=self.skill, **info)


def builder(embodiment_name: str, skill: str) -> SceneBuilder:
    if embodiment_name not in LIMBS:
        raise ValueError(f"Skill {skill!r} needs a humanoid with known limbs; {embodiment_name!r} "
                         f"is not one of {sorted(LIMBS)}.")
    return SceneBuilder(skill, LIMBS[embodiment_name])


def optional_skill(skill: Optional[str]) -> Optional[str]:
    """None for the plain floor ("walk" or None), else the checked skill name."""
    if skill in (None, "walk"):
        return None
    if skill not in SKILLS:
        raise ValueError(f"Unknown skill {skill!r}; choose one of {('walk',) + SKILLS}.")
    return skill
