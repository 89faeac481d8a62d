"""Embodiments: the four robots, made MJX-friendly at load with `mujoco.MjSpec`.

    EmbodimentSpec (name, MJCF, feet, fall limits)  --load()-->  Embodiment
        MJCF from the loco-mujoco cache (or the user's own file)
        -> contacts only between primitive foot proxies and the floor
           (mesh feet are replaced by two capsules fitted to the sole)
        -> Newton solver with few iterations, 0.002 s x 5 substeps = 100 Hz control
        -> a tracking camera `nil_track` (trackcom) framing the whole robot: from the side
           (`camera="side"`, the default) or a three-quarter view (`camera="oblique"`)
        -> home pose (keyframe "home"): qpos0 clipped to joint limits, per-robot overrides,
           lowered or raised so that the lowest foot touches the floor

The robots keep LocoMujoco's root: three slide joints (x, y, z) and three hinges, so the fall
limits of LocoMujoco 0.4.1 (`_has_fallen`) apply to qpos unchanged. An `Embodiment` is static,
host-side data (numpy arrays and an MjModel) that the environments close over.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from typing import Optional

import mujoco
import numpy as np

from nil_jax.envs import assets, scenes

CAMERA_NAME = "nil_track"
CAMERA_FOVY = 45.0
# Views of the tracking camera: (azimuth, elevation) in degrees. Azimuth 0 is the side view
# (the camera on -y looking along +y, the robot walking along +x across the image); positive
# azimuth turns the camera towards the robot's front, positive elevation raises it to look
# down. From the side, sideways motions (hip rotation and adduction, shoulder abduction)
# barely change the silhouette; the oblique view (about VIL's HumanoidBench camera) shows them.
CAMERA_VIEWS = {"side": (0.0, 0.0), "oblique": (35.0, 15.0)}
NEAR_CLIP = 0.01  # m, MuJoCo renderer's near clipping distance
PHYSICS_TIMESTEP = 0.002
N_SUBSTEPS = 5  # 100 Hz control, the rate of the reference videos after resampling
HOME_KEY = "home"
# Enum members are compared as ints: `np.int32 in (enum, ...)` is always False.
_SCALAR_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))

# Sphere and capsule feet touch the floor as they are. Mesh and box feet get two capsules along
# the sole: MJX and C MuJoCo produce identical capsule-plane contacts, while their box-plane
# contacts differ when a tilted box touches with fewer than four corners.
_PRIMITIVE_FEET = (int(mujoco.mjtGeom.mjGEOM_SPHERE), int(mujoco.mjtGeom.mjGEOM_CAPSULE))


@dataclasses.dataclass(frozen=True)
class EmbodimentSpec:
    """What the loader needs to know about a robot beyond its MJCF."""

    name: str
    display_name: str  # used in the generator prompt: "The {display_name} agent is ..."
    kind: str  # "humanoid" or "quadruped": selects the walk reward
    model_folder: str  # folder in the loco-mujoco cache
    model_file: str
    foot_geoms: tuple[str, ...]  # geoms that touch the floor; meshes get capsule proxies
    # (joint name, low, high): the robot has fallen when a joint's qpos leaves [low, high].
    fall_limits: tuple[tuple[str, float, float], ...]
    walk_speed: float  # m/s along +x, LocoMujoco's walk task
    home_pose: tuple[tuple[str, float], ...] = ()
    mjcf_path: Optional[str] = None  # the user's own MJCF instead of the cached one
    # Few Newton iterations for speed. Joints with frictionloss make the problem nonsmooth, and
    # MJX and C MuJoCo then stop at slightly different points: more iterations (e.g. 50) make the
    # two backends agree to float precision (tests/test_backends.py).
    solver_iterations: int = 4
    ls_iterations: int = 8

    def resolve_mjcf(self) -> pathlib.Path:
        if self.mjcf_path is not None:
            path = pathlib.Path(self.mjcf_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"MJCF file {path} for embodiment {self.name!r} does not exist."
                )
            return path
        return assets.model_folder(self.model_folder) / self.model_file


_PI = math.pi
# LocoMujoco 0.4.1 `_has_fallen` of UnitreeH1 / UnitreeG1 (pelvis_ty is the height slide).
_HUMANOID_FALL = (
    ("pelvis_ty", -0.3, 0.1),
    ("pelvis_tilt", -_PI / 4.5, _PI / 12),
    ("pelvis_list", -_PI / 12, _PI / 8),
    ("pelvis_rotation", -_PI / 8, _PI / 8),
)

EMBODIMENTS: dict[str, EmbodimentSpec] = {
    "h1": EmbodimentSpec(
        name="h1", display_name="Unitree H1 humanoid robot", kind="humanoid",
        model_folder="unitree_h1", model_file="h1.xml",
        foot_geoms=("left_foot", "right_foot"),
        fall_limits=_HUMANOID_FALL, walk_speed=1.25,
    ),
    "talos": EmbodimentSpec(
        name="talos", display_name="Talos humanoid robot", kind="humanoid",
        model_folder="talos", model_file="talos.xml",
        foot_geoms=("left_foot", "right_foot"),
        fall_limits=(
            ("pelvis_ty", -0.3, 0.1),
            ("pelvis_tilt", -_PI / 4.5, _PI / 12),
            ("pelvis_list", -_PI / 12, _PI / 8),
            ("pelvis_rotation", -_PI / 10, _PI / 10),
            ("back_bky", -_PI / 4, _PI / 10),
            ("back_bkz", -_PI / 10, _PI / 10),
        ),
        walk_speed=1.25,
    ),
    "g1": EmbodimentSpec(
        name="g1", display_name="Unitree G1 humanoid robot", kind="humanoid",
        model_folder="unitree_g1", model_file="g1.xml",
        foot_geoms=tuple(f"{side}_foot_{i}_col" for side in ("left", "right") for i in range(1, 5)),
        fall_limits=_HUMANOID_FALL, walk_speed=1.25,
    ),
    "a1": EmbodimentSpec(
        name="a1", display_name="Unitree A1 quadruped robot", kind="quadruped",
        model_folder="quadrupeds", model_file="unitree_a1_torque.xml",
        foot_geoms=("FR_foot", "FL_foot", "RR_foot", "RL_foot"),
        # LocoMujoco 0.4.1 UnitreeA1._has_fallen
        fall_limits=(
            ("trunk_list", -0.2793, 0.2793),
            ("trunk_tilt", -0.192, 0.192),
            ("trunk_tz", -0.24, math.inf),
        ),
        walk_speed=0.5,  # LocoMujoco's "simple" A1 task: forward at 0.5 m/s
        home_pose=tuple(
            (f"{leg}_{joint}_joint", value)
            for leg in ("FR", "FL", "RR", "RL")
            for joint, value in (("hip", 0.0), ("thigh", 0.9), ("calf", -1.8))
        ),
    ),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Embodiment:
    """A loaded robot: the MJX-friendly MjModel plus the indices the tasks read."""

    spec: EmbodimentSpec
    mj_model: mujoco.MjModel
    n_substeps: int
    init_qpos: np.ndarray  # (nq,) home pose: feet on the floor, or a skill scene's start pose
    ctrl_low: np.ndarray  # (nu,) actuator ctrlrange; actions in [-1, 1] map onto it
    ctrl_high: np.ndarray
    root_body: int  # the body the root joints move (pelvis, trunk)
    root_qpos: np.ndarray  # (6,) the root body's joints: x, y, z slides and three hinges
    root_xy_qpos: np.ndarray  # (2,) horizontal root slides, left out of observations
    root_height_qpos: int
    root_vel_xy_qvel: np.ndarray  # (2,) world-frame root velocity (slide joints come first)
    fall_qpos: np.ndarray  # (k,) qpos index of each fall limit
    fall_low: np.ndarray
    fall_high: np.ndarray
    foot_geom_ids: np.ndarray  # contact geoms of the feet (primitives)
    foot_body_ids: np.ndarray  # one body per foot
    camera_id: int
    robot_nq: int  # the robot's qpos come first; a skill scene's free joints follow
    scene: Optional[scenes.Scene] = None  # the skill scene (sit, hang, balance), if any
    camera: str = "side"  # the view of the tracking camera (CAMERA_VIEWS)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def control_dt(self) -> float:
        return self.mj_model.opt.timestep * self.n_substeps

    @property
    def nq(self) -> int:
        return self.mj_model.nq

    @property
    def nv(self) -> int:
        return self.mj_model.nv

    @property
    def nu(self) -> int:
        return self.mj_model.nu


def angle_qpos(embodiment: Embodiment) -> np.ndarray:
    """qpos indices of every angle of the robot: the root's three rotations and the joints (not
    the slides, nor a skill scene's free bodies). The pose error of the evaluation and the pose
    reward (`reward.sources`) average over these."""
    slides = [*embodiment.root_xy_qpos, embodiment.root_height_qpos]
    return np.setdiff1d(np.arange(embodiment.robot_nq), slides)


def _name(model: mujoco.MjModel, obj: mujoco.mjtObj, idx: int) -> str:
    return mujoco.mj_id2name(model, obj, idx) or f"#{idx}"


def _root_body(model: mujoco.MjModel) -> int:
    roots = [b for b in range(1, model.nbody) if model.body_parentid[b] == 0
             and model.body_jntnum[b] > 0]
    if len(roots) != 1:
        raise ValueError(f"Expected one jointed child of the world body, found {len(roots)}.")
    return roots[0]


def _foot_vertices_in_body(model: mujoco.MjModel, geom: int) -> np.ndarray:
    """Vertices of a mesh or box geom in its body's frame."""
    if model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_BOX:
        corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        verts = corners * model.geom_size[geom]
    elif model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_MESH:
        mesh = model.geom_dataid[geom]
        start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        verts = model.mesh_vert[start:start + count].astype(np.float64)
    else:
        name = _name(model, mujoco.mjtObj.mjOBJ_GEOM, geom)
        raise ValueError(f"Foot geom {name} has type {model.geom_type[geom]}; feet must be "
                         "spheres, capsules, boxes or meshes.")
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, model.geom_quat[geom])
    return verts @ rot.reshape(3, 3).T + model.geom_pos[geom]


def _sole_capsules(verts: np.ndarray, sole_height: float = 0.02):
    """Two capsules along x at the outer edges of the sole (the lowest 2 cm of the foot)."""
    z_min = verts[:, 2].min()
    sole = verts[verts[:, 2] < z_min + sole_height]
    (x0, y0), (x1, y1) = sole[:, :2].min(0), sole[:, :2].max(0)
    radius = min(0.02, 0.25 * (y1 - y0))
    z = z_min + radius
    return radius, [
        np.array([x0 + radius, y, z, x1 - radius, y, z]) for y in (y0 + radius, y1 - radius)
    ]


def _is_visual(model: mujoco.MjModel, geom: int) -> bool:
    return model.geom_contype[geom] == 0 and model.geom_conaffinity[geom] == 0 \
        and model.geom_group[geom] < 3


def _build_spec(spec: EmbodimentSpec) -> mujoco.MjSpec:
    path = spec.resolve_mjcf()
    mj_spec = mujoco.MjSpec.from_file(str(path))
    original = mj_spec.compile()
    floor = [g for g in range(original.ngeom) if original.geom_bodyid[g] == 0
             and original.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE]
    if len(floor) != 1:
        raise ValueError(f"{path}: expected one plane geom in the world body (the floor), "
                         f"found {len(floor)}.")
    foot_ids = []
    for name in spec.foot_geoms:
        gid = mujoco.mj_name2id(original, mujoco.mjtObj.mjOBJ_GEOM, name)
        if gid < 0:
            raise ValueError(f"{path}: foot geom {name!r} of embodiment {spec.name!r} not found.")
        foot_ids.append(gid)
    bodies_with_visuals = {original.geom_bodyid[g] for g in range(original.ngeom)
                           if _is_visual(original, g)}

    # Feet: spheres and capsules keep their shape; meshes and boxes become two capsules.
    proxies = []  # (body name, capsule radius, fromto)
    for gid in foot_ids:
        body = _name(original, mujoco.mjtObj.mjOBJ_BODY, original.geom_bodyid[gid])
        if original.geom_type[gid] in _PRIMITIVE_FEET:
            continue
        radius, segments = _sole_capsules(_foot_vertices_in_body(original, gid))
        proxies += [(body, radius, seg) for seg in segments]

    # Contacts only between foot proxies (conaffinity 1) and the floor (contype 1).
    for geom in mj_spec.geoms:
        gid = geom.id
        if gid == floor[0]:
            geom.contype, geom.conaffinity = 1, 0
            continue
        primitive_foot = gid in foot_ids and original.geom_type[gid] in _PRIMITIVE_FEET
        was_collision = original.geom_contype[gid] or original.geom_conaffinity[gid]
        geom.contype, geom.conaffinity = 0, (1 if primitive_foot else 0)
        if primitive_foot:
            geom.condim = 3
        # Collision shapes that duplicate a visual mesh are hidden from renderers (group 3).
        if was_collision and original.geom_bodyid[gid] in bodies_with_visuals:
            geom.group = 3
    for i, (body_name, radius, fromto) in enumerate(proxies):
        mj_spec.body(body_name).add_geom(
            name=f"{body_name}_sole_{i}",
            type=mujoco.mjtGeom.mjGEOM_CAPSULE, size=[radius, 0, 0], fromto=fromto,
            contype=0, conaffinity=1, condim=3, group=3, mass=0, density=0,
        )

    opt = mj_spec.option
    opt.timestep = PHYSICS_TIMESTEP
    opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
    opt.iterations = spec.solver_iterations
    opt.ls_iterations = spec.ls_iterations
    opt.cone = mujoco.mjtCone.mjCONE_PYRAMIDAL
    opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
    # No auto-reset: a diverged state must stay NaN so the env can see it and end the episode.
    opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
    opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    return mj_spec


def geom_lowest_z(model: mujoco.MjModel, data: mujoco.MjData, geom: int) -> float:
    kind, size = model.geom_type[geom], model.geom_size[geom]
    pos, mat = data.geom_xpos[geom], data.geom_xmat[geom].reshape(3, 3)
    if kind == mujoco.mjtGeom.mjGEOM_SPHERE:
        return pos[2] - size[0]
    if kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
        return pos[2] - abs(mat[2, 2]) * size[1] - size[0]
    if kind == mujoco.mjtGeom.mjGEOM_BOX:
        return pos[2] - np.abs(mat[2, :]) @ size
    raise ValueError(f"Unsupported foot geom type {kind}.")


def feet_at(model: mujoco.MjModel, qpos: np.ndarray, height_qpos: int, foot_geoms,
            height: float) -> np.ndarray:
    """A copy of the poses `qpos` (T, nq), each raised or lowered (its root's vertical slide at
    `height_qpos`) so that its lowest foot geom touches `height`."""
    qpos = np.array(qpos, float)
    data = mujoco.MjData(model)
    for q in qpos:
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        q[height_qpos] += height - min(geom_lowest_z(model, data, g) for g in foot_geoms)
    return qpos


def check_camera(camera: str) -> str:
    if camera not in CAMERA_VIEWS:
        raise ValueError(f"Unknown camera view {camera!r}; choose one of {sorted(CAMERA_VIEWS)}.")
    return camera


# A hinge is seen by the tracking camera when its axis lies within 45 degrees of the line of
# sight: it then turns its limb in the image plane (hip flexion, knee, elbow from the side).
# Further off, the limb moves largely along the line of sight or turns about its own length
# (hip rotation and adduction, shoulder roll and yaw, torso yaw from the side), which barely
# changes the silhouette.
SEEN_AXIS_ALIGNMENT = math.cos(math.radians(45.0))


def unseen_actuators(embodiment: Embodiment) -> np.ndarray:
    """(nu,) bool: the actuators whose joint the tracking camera barely sees at the home pose:
    |joint axis . line of sight| < SEEN_AXIS_ALIGNMENT, both in the world frame. A video
    constrains these joints little, so a reward from it leaves them free (the policy prior
    `TrainConfig.action_l2_joints="unseen"` holds them at home instead)."""
    model = embodiment.mj_model
    data = mujoco.MjData(model)
    data.qpos[:] = embodiment.init_qpos
    mujoco.mj_kinematics(model, data)
    mujoco.mj_camlight(model, data)
    line_of_sight = -data.cam_xmat[embodiment.camera_id].reshape(3, 3)[:, 2]  # camera's -z
    if np.any(model.actuator_trntype != int(mujoco.mjtTrn.mjTRN_JOINT)):
        raise ValueError(f"{embodiment.name}: every actuator must drive a joint to tell which "
                         "ones the camera sees.")
    joints = model.actuator_trnid[:, 0]
    alignment = np.abs(data.xaxis[joints] @ line_of_sight)
    return alignment < SEEN_AXIS_ALIGNMENT


def _add_tracking_camera(mj_spec: mujoco.MjSpec, model: mujoco.MjModel, root: int,
                         home_qpos: np.ndarray, camera: str) -> None:
    """A camera of view `camera` (CAMERA_VIEWS) that keeps the whole robot in view, +z up.

    A trackcom camera keeps the world-frame offset to the subtree CoM that it has at qpos0
    (MuJoCo's `cam_pos0`) and its world orientation. The offset is chosen at the home pose so
    that the robot is centred and fits with a margin, then expressed in the root body's frame
    at qpos0.
    """
    azimuth, elevation = (math.radians(a) for a in CAMERA_VIEWS[camera])
    # The view direction (from the camera to the robot) and the camera's right and up axes.
    forward = np.array([-math.sin(azimuth) * math.cos(elevation),
                        math.cos(azimuth) * math.cos(elevation), -math.sin(elevation)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)

    home = mujoco.MjData(model)
    home.qpos[:] = home_qpos
    mujoco.mj_forward(model, home)
    body_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0
                  and model.geom_group[g] < 3]
    centers = home.geom_xpos[body_geoms]
    radius = model.geom_rbound[body_geoms][:, None]
    low, high = (centers - radius).min(0), (centers + radius).max(0)
    # The robot's extent across the image, along the camera's right and up axes.
    extent = max(np.max(centers @ axis + radius[:, 0]) - np.min(centers @ axis - radius[:, 0])
                 for axis in (right, up))
    distance = 1.15 * extent / (2 * math.tan(math.radians(CAMERA_FOVY) / 2))
    cam_offset = 0.5 * (low + high) - distance * forward - home.subtree_com[root]

    default = mujoco.MjData(model)  # qpos0: the root frame is world-aligned there
    mujoco.mj_forward(model, default)
    local = cam_offset + default.subtree_com[root] - default.xpos[root]
    # MuJoCo's camera looks along its -z (+x right, +y up): tilt it about x until it looks
    # along `forward` seen from the side, then turn it about the vertical by the azimuth.
    # (Half-angle square roots keep the side view's quaternion exactly sqrt(1/2).)
    cos_tilt = math.sin(elevation)  # cos(90 degrees - elevation)
    tilt = np.array([math.sqrt(0.5 * (1 + cos_tilt)), math.sqrt(0.5 * (1 - cos_tilt)), 0, 0])
    turn = np.array([math.cos(azimuth / 2), 0.0, 0.0, math.sin(azimuth / 2)])
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, turn, tilt)
    mj_spec.body(_name(model, mujoco.mjtObj.mjOBJ_BODY, root)).add_camera(
        name=CAMERA_NAME, mode=mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM,
        pos=local, quat=quat, fovy=CAMERA_FOVY,
    )


def load(name: str, mjcf_path: Optional[str] = None, skill: Optional[str] = None,
         camera: str = "side") -> Embodiment:
    """Loads a registered embodiment (optionally from the user's own MJCF file), in the scene
    of `skill` (`scenes.SKILLS`; None or "walk": the plain floor), seen by the tracking camera
    from view `camera` (CAMERA_VIEWS). One model per distinct (name, file, scene, camera),
    however the arguments are passed."""
    return _load(name, None if mjcf_path is None else os.fspath(mjcf_path),
                 scenes.optional_skill(skill), camera)


@functools.lru_cache(maxsize=None)
def _load(name: str, mjcf_path: Optional[str], skill: Optional[str], camera: str) -> Embodiment:
    if name not in EMBODIMENTS:
        raise ValueError(f"Unknown embodiment {name!r}; choose one of {sorted(EMBODIMENTS)}.")
    spec = EMBODIMENTS[name]
    if mjcf_path is not None:
        spec = dataclasses.replace(spec, mjcf_path=os.fspath(mjcf_path))
    return build(spec, None if skill is None else scenes.builder(name, skill), camera)


def build(spec: EmbodimentSpec, scene: Optional[scenes.SceneBuilder] = None,
          camera: str = "side") -> Embodiment:
    """Builds the MJX-friendly model of any EmbodimentSpec (registered or the user's), with a
    skill scene when `scene` is given (its start pose becomes the home pose) and the tracking
    camera's view `camera` (CAMERA_VIEWS)."""
    check_camera(camera)
    mj_spec = _build_spec(spec)
    model = mj_spec.compile()
    root = _root_body(model)
    root_joints = range(model.body_jntadr[root], model.body_jntadr[root] + model.body_jntnum[root])
    slides = [j for j in root_joints if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE]
    vertical = [j for j in slides if abs(model.jnt_axis[j][2]) > 0.99]
    horizontal = [j for j in slides if abs(model.jnt_axis[j][2]) < 1e-6]
    if len(vertical) != 1 or len(horizontal) != 2:
        raise ValueError(f"{spec.name}: the root body needs slide joints along x, y and z "
                         f"(LocoMujoco's root), found axes {model.jnt_axis[slides].tolist()}.")
    horizontal.sort(key=lambda j: abs(model.jnt_axis[j][1]))  # x first, then y

    qpos = model.qpos0.copy()
    for j in range(model.njnt):
        if model.jnt_limited[j] and model.jnt_type[j] in _SCALAR_JOINTS:
            a = model.jnt_qposadr[j]
            qpos[a] = np.clip(qpos[a], *model.jnt_range[j])
    for joint, value in spec.home_pose:
        qpos[model.joint(joint).qposadr[0]] = value

    foot_geoms = np.array([g for g in range(model.ngeom) if model.geom_conaffinity[g]])
    qpos = feet_at(model, qpos[None], int(model.jnt_qposadr[vertical[0]]), foot_geoms, 0.0)[0]

    _add_tracking_camera(mj_spec, model, root, qpos, camera)
    robot_nq = model.nq
    scene_qpos = np.zeros(0)
    if scene is not None:
        # The world body's one plane (checked in _build_spec), named or not.
        floor = next(g for g in mj_spec.worldbody.geoms if g.type == mujoco.mjtGeom.mjGEOM_PLANE)
        qpos, scene_qpos = scene.add(mj_spec, model, qpos, root,
                                     int(model.jnt_qposadr[vertical[0]]),
                                     int(model.jnt_qposadr[horizontal[0]]), foot_geoms, floor)
    # qpos0 stays as authored (MuJoCo measures hinge and slide displacements from it); the home
    # pose is keyframe 0, for renderers and viewers.
    qpos = np.concatenate([qpos, scene_qpos])
    mj_spec.add_key(name=HOME_KEY, qpos=qpos)
    model = mj_spec.compile()
    # MuJoCo's near clipping plane is znear x the model's extent; H1's and A1's extent is 100 m
    # (their 500 m floor), which would clip everything within 1 m of the camera.
    model.vis.map.znear = NEAR_CLIP / model.stat.extent

    # Geom ids after the scene's geoms were added (thigh proxies shift the robot's own).
    foot_geoms = np.array([g for g in range(model.ngeom) if model.geom_conaffinity[g] & 1
                           and not scenes.is_scene_body(model, model.geom_bodyid[g])])
    fall = [(model.joint(j).qposadr[0], lo, hi) for j, lo, hi in spec.fall_limits]
    return Embodiment(
        spec=spec,
        mj_model=model,
        n_substeps=N_SUBSTEPS,
        init_qpos=qpos,
        ctrl_low=model.actuator_ctrlrange[:, 0].copy(),
        ctrl_high=model.actuator_ctrlrange[:, 1].copy(),
        # Scene bodies come after the robot's in the tree, so the robot's ids do not move.
        root_body=int(model.jnt_bodyid[root_joints[0]]),
        root_qpos=np.array([model.jnt_qposadr[j] for j in root_joints]),
        root_xy_qpos=np.array([model.jnt_qposadr[j] for j in horizontal]),
        root_height_qpos=int(model.jnt_qposadr[vertical[0]]),
        root_vel_xy_qvel=np.array([model.jnt_dofadr[j] for j in horizontal]),
        fall_qpos=np.array([f[0] for f in fall], dtype=np.int32),
        fall_low=np.array([f[1] for f in fall]),
        fall_high=np.array([f[2] for f in fall]),
        foot_geom_ids=foot_geoms,
        foot_body_ids=np.unique(model.geom_bodyid[foot_geoms]),
        camera_id=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME),
        robot_nq=robot_nq,
        scene=None if scene is None else scene.finish(model),
        camera=camera,
    )
