"""Loading the four robots and the MJX-friendly changes made at load."""

import shutil

import mujoco
import numpy as np
import pytest

from nil_jax.envs import assets, embodiments, tasks

NAMES = sorted(embodiments.EMBODIMENTS)


@pytest.mark.parametrize("name", NAMES)
def test_every_embodiment_loads_mjx_friendly(name):
    emb = embodiments.load(name)
    model = emb.mj_model
    assert emb.control_dt == pytest.approx(0.01)  # 100 Hz control
    assert model.opt.timestep == pytest.approx(0.002) and emb.n_substeps == 5
    assert model.opt.solver == int(mujoco.mjtSolver.mjSOL_NEWTON)
    assert model.opt.iterations == 4
    assert emb.nu == len(emb.ctrl_low) and np.all(emb.ctrl_low < emb.ctrl_high)
    # The tracking camera exists on every embodiment and follows the CoM.
    assert model.cam_mode[emb.camera_id] == int(mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM)
    assert mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, emb.camera_id) == "nil_track"
    # MuJoCo's renderer clips nothing farther than 1 cm from the camera.
    assert model.vis.map.znear * model.stat.extent == pytest.approx(embodiments.NEAR_CLIP)

    # Only primitive foot geoms can collide, and only with the floor.
    colliders = np.flatnonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0))
    floor = [g for g in colliders if model.geom_type[g] == int(mujoco.mjtGeom.mjGEOM_PLANE)]
    assert len(floor) == 1
    feet = sorted(set(colliders) - set(floor))
    assert feet == sorted(emb.foot_geom_ids)
    primitives = {int(mujoco.mjtGeom.mjGEOM_SPHERE), int(mujoco.mjtGeom.mjGEOM_CAPSULE)}
    assert {int(model.geom_type[g]) for g in feet} <= primitives
    assert all(model.geom_contype[g] == 0 for g in feet)  # no foot-foot contacts
    assert len(emb.foot_body_ids) == (4 if emb.spec.kind == "quadruped" else 2)


@pytest.mark.parametrize("name", NAMES)
def test_home_pose_stands_on_the_floor(name):
    emb = embodiments.load(name)
    model = emb.mj_model
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key(embodiments.HOME_KEY).id)
    np.testing.assert_allclose(data.qpos, emb.init_qpos)
    mujoco.mj_forward(model, data)
    lowest = min(embodiments.geom_lowest_z(model, data, g) for g in emb.foot_geom_ids)
    assert abs(lowest) < 1e-6  # the lowest foot touches the floor
    assert set(data.contact.geom[:data.ncon].ravel()) - {0} <= set(emb.foot_geom_ids)
    assert not tasks.fallen(emb, emb.init_qpos)
    # Joints start inside their limits.
    for j in range(model.njnt):
        if model.jnt_limited[j]:
            q = emb.init_qpos[model.jnt_qposadr[j]]
            assert model.jnt_range[j, 0] - 1e-9 <= q <= model.jnt_range[j, 1] + 1e-9


@pytest.mark.parametrize("camera", sorted(embodiments.CAMERA_VIEWS))
@pytest.mark.parametrize("name", NAMES)
def test_camera_frames_the_whole_robot(name, camera):
    emb = embodiments.load(name, camera=camera)
    assert emb.camera == camera
    model, data = emb.mj_model, mujoco.MjData(emb.mj_model)
    data.qpos[:] = emb.init_qpos
    mujoco.mj_forward(model, data)
    cam_pos, cam_mat = data.cam_xpos[emb.camera_id], data.cam_xmat[emb.camera_id].reshape(3, 3)
    azimuth, elevation = np.radians(embodiments.CAMERA_VIEWS[camera])
    looks_along = [-np.sin(azimuth) * np.cos(elevation), np.cos(azimuth) * np.cos(elevation),
                   -np.sin(elevation)]
    np.testing.assert_allclose(-cam_mat[:, 2], looks_along, atol=1e-9)
    assert abs(cam_mat[2, 0]) < 1e-9 and cam_mat[2, 1] > 0  # level: the image's x horizontal
    if camera == "side":
        np.testing.assert_allclose(cam_mat[:, 2], [0, -1, 0], atol=1e-9)  # looks along +y
        np.testing.assert_allclose(cam_mat[:, 1], [0, 0, 1], atol=1e-9)  # +z up
    body = [g for g in range(model.ngeom) if model.geom_bodyid[g] and model.geom_group[g] < 3]
    local = (data.geom_xpos[body] - cam_pos) @ cam_mat  # camera frame
    depth = -local[:, 2]
    t = np.tan(np.radians(model.cam_fovy[emb.camera_id]) / 2)
    assert np.all(depth > 0)
    assert np.all(np.abs(local[:, 0] / depth) < t) and np.all(np.abs(local[:, 1] / depth) < t)


def test_unknown_camera_view_is_refused():
    with pytest.raises(ValueError, match=r"Unknown camera view 'top'; choose one of "
                       r"\['oblique', 'side'\]"):
        embodiments.load("h1", camera="top")


def _actuator_names(emb, which):
    model = emb.mj_model
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i).removesuffix("_actuator")
            for i in np.flatnonzero(which)]


def test_unseen_actuators_are_the_sideways_and_twisting_joints():
    """From the side the camera sees the joints that swing a limb fore and aft (hip flexion,
    knee, ankle, shoulder pitch, elbow), not those that swing it sideways or twist it (hip
    rotation and adduction, torso yaw, shoulder roll and yaw, a quadruped's abduction)."""
    h1 = embodiments.load("h1")
    legs_and_torso = ["hip_rotation_l", "hip_adduction_l", "hip_rotation_r", "hip_adduction_r",
                      "back_bkz"]
    assert _actuator_names(h1, embodiments.unseen_actuators(h1)) == [
        *legs_and_torso, "l_arm_shx", "l_arm_shz", "r_arm_shx", "r_arm_shz"]
    a1 = embodiments.load("a1")
    assert _actuator_names(a1, embodiments.unseen_actuators(a1)) == [
        "FR_hip", "FL_hip", "RR_hip", "RL_hip"]
    # 35 degrees round towards the front the legs split the same way; H1's shoulder axes are
    # tilted, and the left shoulder's pitch axis turns more than 45 degrees off the view.
    oblique = embodiments.load("h1", camera="oblique")
    assert _actuator_names(oblique, embodiments.unseen_actuators(oblique)) == [
        *legs_and_torso, "l_arm_shy", "l_arm_shx", "l_arm_shz", "r_arm_shx", "r_arm_shz"]


def test_camera_tracks_the_center_of_mass():
    emb = embodiments.load("h1")
    model, data = emb.mj_model, mujoco.MjData(emb.mj_model)
    data.qpos[:] = emb.init_qpos
    mujoco.mj_forward(model, data)
    root = emb.root_body
    assert model.body(root).name == "pelvis"
    offset = data.cam_xpos[emb.camera_id] - data.subtree_com[root]
    data.qpos[emb.root_xy_qpos[0]] += 3.0  # walk 3 m forward and bend a knee
    data.qpos[model.joint("knee_angle_l").qposadr[0]] = 1.0
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(data.cam_xpos[emb.camera_id] - data.subtree_com[root], offset,
                               atol=1e-9)


def test_user_mjcf_file(tmp_path):
    folder = tmp_path / "my_h1"
    shutil.copytree(assets.model_folder("unitree_h1"), folder)
    xml = folder / "h1.xml"
    xml.write_text(xml.read_text().replace('gear="300"', 'gear="250"'))
    emb = embodiments.load("h1", mjcf_path=str(xml))
    shipped = embodiments.load("h1").mj_model.actuator_gear[:, 0]
    assert emb.spec.mjcf_path == str(xml)
    np.testing.assert_array_equal(emb.mj_model.actuator_gear[:, 0],
                                  np.where(shipped == 300.0, 250.0, shipped))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embodiments.load("h1", mjcf_path=str(tmp_path / "missing.xml"))


def test_unknown_embodiment_is_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        embodiments.load("atlas")
