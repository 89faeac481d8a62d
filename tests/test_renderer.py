"""Silhouette renderer: MuJoCo's camera model and masks against mujoco.Renderer segmentation."""

import functools

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


def _spec(model, min_depth, **kwargs):
    return renderer.make_render_spec(renderer.geom_primitives(model, renderer.body_geoms(model)),
                                     model.cam_fovy[0], SIZE, SIZE, min_depth=min_depth,
                                     pixel_chunk=1024, **kwargs)


def _poses(model, qpos):
    """Body and camera poses (batched) from joint positions (B, nq), by MJX kinematics."""
    mjx_model = mjx.put_model(model, impl="jax")

    def one(q):
        data = mjx.kinematics(mjx_model, mjx.make_data(mjx_model).replace(qpos=q))
        data = mjx.camlight(mjx_model, data)
        return data.xpos, data.xmat, data.cam_xpos[0], data.cam_xmat[0]

    return jax.vmap(one)(qpos)


def _random_poses(model, count, seed=0):
    rng = np.random.default_rng(seed)
    poses = []
    for _ in range(count):
        qpos = model.qpos0.copy()
        qpos[:3] += rng.normal(0, 0.2, 3)
        for start in (3, 7):  # free joint and ball joint quaternions
            quat = rng.normal(size=4)
            qpos[start:start + 4] = quat / np.linalg.norm(quat)
        poses.append(qpos)
    return np.stack(poses)


def _compiled_render(spec, poses):
    return jax.jit(lambda p: renderer.render_batch(spec, *p)).lower(poses).compile()


@pytest.fixture(scope="module")
def scene():
    """The model, its spec, the poses (12 random + the rest pose) and their frames, drawn by
    the batched renderer and, independently, by the exhaustive one."""
    model = mujoco.MjModel.from_xml_string(PRIMITIVES_XML)
    assert len(renderer.body_geoms(model)) == 5  # the floor is not part of the body
    spec = _spec(model, min_depth=2.0)
    qpos = np.concatenate([_random_poses(model, 12), model.qpos0[None]]).astype(np.float32)
    poses = jax.jit(functools.partial(_poses, model))(jnp.asarray(qpos))
    compiled = _compiled_render(spec, poses)
    exact = jax.jit(jax.vmap(functools.partial(renderer.render_exhaustive, spec)))(*poses)
    return dict(model=model, spec=spec, qpos=qpos, poses=poses, compiled=compiled,
                frames=jax.device_get(compiled(poses)), exact=jax.device_get(exact))


def test_masks_match_mujoco_segmentation(scene):
    model, spec, frames = scene["model"], scene["spec"], scene["frames"]
    assert np.all(frames["tier"] == 0)  # the fast path drew every frame
    data = mujoco.MjData(model)
    ious, agree = [], []
    with mujoco.Renderer(model, SIZE, SIZE) as oracle:
        oracle.enable_segmentation_rendering()
        for i, qpos in enumerate(scene["qpos"]):
            data.qpos[:] = qpos
            mujoco.mj_forward(model, data)
            oracle.update_scene(data, camera=0)
            segmentation = oracle.render()[..., 0]  # geom ids, -1 background, rows top-down
            reference = np.isin(segmentation, spec.label)
            assert reference.sum() > 200  # the body is in view
            ious.append(float(renderer.mask_iou(reference, frames["mask"][i])))
            both = reference & frames["mask"][i]
            agree.append(np.mean(segmentation[both] == frames["geom"][i][both]))
    print(f"mean mask IoU vs mujoco.Renderer: {np.mean(ious):.4f} over {len(ious)} poses")
    assert np.mean(ious) >= PRIMITIVE_IOU, ious
    assert np.mean(agree) >= 0.98  # the right geom is in front, too


def test_depth_and_shade(scene):
    model, spec = scene["model"], scene["spec"]
    out = {k: v[-1] for k, v in scene["frames"].items()}  # the rest pose
    data = mujoco.MjData(model)
    data.qpos[:] = scene["qpos"][-1]
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


def _assert_same_frames(frames, exact):
    np.testing.assert_array_equal(frames["mask"], exact["mask"])
    assert np.mean(frames["geom"] == exact["geom"]) > 0.999
    # Keys keep the distance to 2^-20 relative; float32 rays differ at grazing pixels.
    assert np.median(np.abs(frames["depth"] - exact["depth"])[exact["mask"]]) < 1e-4
    assert np.percentile(np.abs(frames["shade"] - exact["shade"])[exact["mask"]], 99) < 0.02


@pytest.mark.parametrize("min_depth, tier", [(2.0, 0), (6.0, 1), (30.0, 2)])
def test_every_path_draws_the_same_frames(scene, min_depth, tier):
    """Windows too small for the first tier (min_depth beyond the robot) fall through to the
    next tier, then to the exhaustive renderer; the frames do not change."""
    frames = scene["frames"]
    if min_depth != scene["spec"].min_depth:
        spec = _spec(scene["model"], min_depth=min_depth)
        frames = jax.device_get(_compiled_render(spec, scene["poses"])(scene["poses"]))
    assert np.all(frames["tier"] == tier)
    _assert_same_frames(frames, scene["exact"])


def test_chunks_follow_the_memory_budget(scene):
    spec = scene["spec"]
    assert renderer.env_chunks(spec, 13)[0] == 13  # the default budget holds the whole batch
    small = _spec(scene["model"], min_depth=2.0, memory_budget=4 * SIZE * SIZE * 256)
    assert renderer.env_chunks(small, 13)[0] == 2  # it holds 2 frames' work at a time
    compiled = _compiled_render(small, scene["poses"])
    _assert_same_frames(jax.device_get(compiled(scene["poses"])), scene["exact"])
    # XLA's own account of the work memory: it follows the chunk, not the batch.
    chunked_bytes = compiled.memory_analysis().temp_size_in_bytes
    whole_bytes = scene["compiled"].memory_analysis().temp_size_in_bytes
    print(f"work memory: {chunked_bytes / 1e6:.1f} MB in chunks of 2, "
          f"{whole_bytes / 1e6:.1f} MB for 13 frames at once")
    assert chunked_bytes * 3 < whole_bytes


def test_camera_rays_follow_mujoco_convention():
    rays = renderer.camera_rays(4, 6, 90.0).reshape(4, 6, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, rtol=1e-12)
    assert np.all(rays[..., 2] < 0)  # looking along -z
    assert rays[0, 0, 1] > 0 and rays[-1, 0, 1] < 0  # row 0 is the top
    assert rays[0, 0, 0] < 0 and rays[0, -1, 0] > 0  # column 0 is the left
    # The top row's centre ray sits half a pixel below the top edge of a 90 deg field of view.
    np.testing.assert_allclose(rays[0, 0, 1] / -rays[0, 0, 2], 1 - 1 / 4)


def test_batched_render_equals_single_frames(scene):
    single = jax.jit(functools.partial(renderer.render_windowed, scene["spec"]))
    for i in range(3):
        frame = jax.device_get(single(*(p[i] for p in scene["poses"])))
        np.testing.assert_array_equal(scene["frames"]["mask"][i], frame["mask"])
        # float32 rounding at grazing rays differs between batched and single programs.
        np.testing.assert_allclose(scene["frames"]["depth"][i], frame["depth"], atol=1e-3)


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
