"""Robot silhouettes: joint positions of a batch of environments -> masks and shaded frames.

    Embodiment --primitive geoms as they are, meshes as fitted proxies--> RenderSpec (once)
    qpos (B, nq) --mjx.kinematics, com_pos, camlight--> body poses, tracking-camera pose
        --renderer.render_batch--> mask, depth, geom, shade (B, H, W), tier (B,)

Kinematics are MJX's (pure JAX), so this works with either physics backend: only qpos is
needed. The windows of the fast path are sized for the robot's distance from its tracking
camera: the camera keeps a fixed offset from the centre of mass (MuJoCo's `trackcom`), so a
body part comes nearer than `near_fraction` of that distance only when the robot reaches or
falls towards the camera; such frames take a slower path and look the same.
"""

from __future__ import annotations

import dataclasses

import jax
import mujoco
import numpy as np
from mujoco import mjx

from nil_jax.envs.embodiments import Embodiment
from nil_jax.reward import mesh_proxies, renderer


@dataclasses.dataclass(frozen=True)
class Silhouettes:
    """What rendering a robot needs, built once per embodiment and image size."""

    spec: renderer.RenderSpec
    mjx_model: mjx.Model
    camera_id: int


def camera_depth_of_com(model: mujoco.MjModel, qpos: np.ndarray, camera_id: int) -> float:
    """Distance (m) along the camera's view axis to the centre of mass it tracks."""
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    com = data.subtree_com[model.cam_bodyid[camera_id]]
    offset = data.cam_xmat[camera_id].reshape(3, 3).T @ (com - data.cam_xpos[camera_id])
    return float(-offset[2])


def make(embodiment: Embodiment, height: int = 224, width: int = 224, *,
         near_fraction: float = 0.75, tiers: int = 2,
         memory_budget: int = 2 ** 30) -> Silhouettes:
    """Fits mesh proxies (cached) and sizes the renderer for the embodiment's tracking camera."""
    model = embodiment.mj_model
    depth = camera_depth_of_com(model, embodiment.init_qpos, embodiment.camera_id)
    spec = renderer.make_render_spec(
        mesh_proxies.body_primitives(model), float(model.cam_fovy[embodiment.camera_id]),
        height, width, min_depth=near_fraction * depth, tiers=tiers,
        memory_budget=memory_budget)
    return Silhouettes(spec=spec, mjx_model=mjx.put_model(model, impl="jax"),
                       camera_id=embodiment.camera_id)


def poses(silhouettes: Silhouettes, qpos: jax.Array):
    """Body poses and tracking-camera pose of one environment: (xpos, xmat, cam_xpos, cam_xmat)."""
    model = silhouettes.mjx_model
    data = mjx.kinematics(model, mjx.make_data(model).replace(qpos=qpos))
    data = mjx.camlight(model, mjx.com_pos(model, data))  # trackcom needs the subtree com
    return (data.xpos, data.xmat, data.cam_xpos[silhouettes.camera_id],
            data.cam_xmat[silhouettes.camera_id])


def render(silhouettes: Silhouettes, qpos: jax.Array) -> dict[str, jax.Array]:
    """Frames of a batch of environments, qpos (B, nq) -> mask, depth, geom, shade (B, H, W)."""
    return renderer.render_batch(silhouettes.spec,
                                 *jax.vmap(lambda q: poses(silhouettes, q))(qpos))


def random_poses(embodiment: Embodiment, count: int, seed: int = 0,
                 root_turn: float = 0.0) -> np.ndarray:
    """(count, nq) test and benchmark poses: the home pose with every limited joint (not the
    root) uniform within its range and, with `root_turn` > 0, the root turned by up to
    +-root_turn rad about each axis. Not jitted (numpy, seeded)."""
    model, rng = embodiment.mj_model, np.random.default_rng(seed)
    qpos = np.tile(embodiment.init_qpos, (count, 1))
    for j in range(model.njnt):
        if model.jnt_limited[j] and model.jnt_bodyid[j] != embodiment.root_body:
            qpos[:, model.jnt_qposadr[j]] = rng.uniform(*model.jnt_range[j], size=count)
    if root_turn > 0:  # drawn after the joints: the joints are the same with or without it
        qpos[:, embodiment.root_qpos[3:]] += rng.uniform(-root_turn, root_turn, (count, 3))
    return qpos
