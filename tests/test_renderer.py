"""Silhouette renderer: MuJoCo's camera model and masks against mujoco.Renderer segmentation."""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from mujoco import mjx

from nil_jax.reward import renderer

PRIMITIVE_IOU = 0.98  # mean mask IoU against MuJoCo's renderer over random poses (issue 3)
SIZE = 96

# Every supported primitive, on a free body and a ball-jointed child, seen by a tilted camera.
PRIMITIVES_XML = """
<mujoco>
  <worldbody>
    <geom name="floor" type="plane" size="5 5 0.1"/>
    <camera name="side" pos="0.2 -3 1.2" xyaxes="1 0.1 0 0 0.3 1" fovy="50"/>
    <body name="root" pos="0 0 1">
      <freejoint/>
      <geom type="sphere" size="0.2"/>
      <geom type="capsule" size="0.08 0.3" pos="0.35 0 0" euler="0 60 0"/>
      <geom type="box" size="0.1 0.15 0.2" pos="-0.4 0 0.1" euler="20 10 30"/>
      <body pos="0 0 -0.4">
        <joint type="ball"/>
        <geom type="cylinder" size="0.1 0.25" euler="40 0 0"/>
        <geom type="ellipsoid" size="0.1 0.2 0.3" pos="0.3 0 -0.2"/>
      </body>
    </body>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def scene():
    model = mujoco.MjModel.from_xml_string(PRIMITIVES_XML)
    geoms = renderer.body_geoms(model)
    assert len(geoms) == 5  # the floor is not part of the body
    spec = renderer.make_render_spec(renderer.geom_primitives(model, geoms), model.cam_fovy[0],
                                     SIZE, SIZE, pixel_chunk=1024)
    mjx_model = mjx.put_model(model, impl="jax")

    @jax.jit
    def render_qpos(qpos):
        data = mjx.kinematics(mjx_model, mjx.make_data(mjx_model).replace(qpos=qpos))
        data = mjx.camlight(mjx_model, data)
        return renderer.render(spec, data.xpos, data.xmat, data.cam_xpos[0], data.cam_xmat[0])

    return model, spec, render_qpos


def _random_poses(model, count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        qpos = model.qpos0.copy()
        qpos[:3] += rng.normal(0, 0.2, 3)
        for start in (3, 7):  # free joint and ball joint quaternions
            quat = rng.normal(size=4)
            qpos[start:start + 4] = quat / np.linalg.norm(quat)
        yield qpos


def test_masks_match_mujoco_segmentation(scene):
    model, spec, render_qpos = scene
    data = mujoco.MjData(model)
    ious, agree = [], []
    with mujoco.Renderer(model, SIZE, SIZE) as oracle:
        oracle.enable_segmentation_rendering()
        for qpos in _random_poses(model, 12):
            data.qpos[:] = qpos
            mujoco.mj_forward(model, data)
            oracle.update_scene(data, camera=0)
            segmentation = oracle.render()[..., 0]  # geom ids, -1 background, rows top-down
            reference = np.isin(segmentation, spec.label)
            out = jax.device_get(render_qpos(jnp.asarray(qpos, jnp.float32)))
            assert reference.sum() > 200  # the body is in view
            ious.append(float(renderer.mask_iou(reference, out["mask"])))
            both = reference & out["mask"]
            agree.append(np.mean(segmentation[both] == out["geom"][both]))
    print(f"mean mask IoU vs mujoco.Renderer: {np.mean(ious):.4f} over {len(ious)} poses")
    assert np.mean(ious) >= PRIMITIVE_IOU, ious
    assert np.mean(agree) >= 0.98  # the right geom is in front, too


def test_depth_and_shade(scene):
    model, spec, render_qpos = scene
    qpos = model.qpos0.copy()
    out = jax.device_get(render_qpos(jnp.asarray(qpos, jnp.float32)))
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    # The sphere's centre pixel: depth along the view axis = distance to the sphere surface.
    sphere = next(g for g in spec.label if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_SPHERE)
    cam_mat = data.cam_xmat[0].reshape(3, 3)
    centre = cam_mat.T @ (data.geom_xpos[sphere] - data.cam_xpos[0])
    t = np.tan(np.radians(model.cam_fovy[0]) / 2)
    col = int((centre[0] / -centre[2] / t + 1) / 2 * SIZE)
    row = int((1 - centre[1] / -centre[2] / t) / 2 * SIZE)
    assert out["geom"][row, col] == sphere
    expected = -centre[2] - model.geom_size[sphere, 0]
    assert abs(out["depth"][row, col] - expected) < 0.02
    assert out["shade"][row, col] > 0.9  # facing the camera-mounted light
    assert np.all(out["shade"][~out["mask"]] == 0) and np.all(out["depth"][~out["mask"]] == 0)
    assert np.all((out["shade"][out["mask"]] >= 0.25) & (out["shade"][out["mask"]] <= 1.0))


def test_camera_rays_follow_mujoco_convention():
    rays = renderer.camera_rays(4, 6, 90.0).reshape(4, 6, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, rtol=1e-12)
    assert np.all(rays[..., 2] < 0)  # looking along -z
    assert rays[0, 0, 1] > 0 and rays[-1, 0, 1] < 0  # row 0 is the top
    assert rays[0, 0, 0] < 0 and rays[0, -1, 0] > 0  # column 0 is the left
    # The top row's centre ray sits half a pixel below the top edge of a 90 deg field of view.
    np.testing.assert_allclose(rays[0, 0, 1] / -rays[0, 0, 2], 1 - 1 / 4)


def test_batched_render_equals_single_frames(scene):
    model, spec, render_qpos = scene
    poses = np.stack(list(_random_poses(model, 3, seed=1))).astype(np.float32)
    batched = jax.jit(jax.vmap(render_qpos))(jnp.asarray(poses))
    for i, qpos in enumerate(poses):
        single = render_qpos(jnp.asarray(qpos))
        np.testing.assert_array_equal(batched["mask"][i], single["mask"])
        # float32 rounding at grazing rays differs between batched and single programs.
        np.testing.assert_allclose(batched["depth"][i], single["depth"], atol=1e-3)


def test_mask_iou_values():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True  # 8 pixels
    b[0, 1:3] = True  # 8 pixels, 4 shared
    np.testing.assert_allclose(renderer.mask_iou(a, b), [4 / 12, 1.0])  # both empty: 1


def test_meshes_are_refused_not_dropped():
    model = mujoco.MjModel.from_xml_string("""
    <mujoco><asset><mesh name="tet" vertex="0 0 0 1 0 0 0 1 0 0 0 1"/></asset>
      <worldbody><body><geom type="mesh" mesh="tet"/></body></worldbody></mujoco>""")
    with pytest.raises(ValueError, match="not primitives"):
        renderer.geom_primitives(model, renderer.body_geoms(model))
