"""Mesh proxies: the voxelizer, the fit on meshes of known shape, a robot, the disk cache."""

import mujoco
import numpy as np
import pytest

from nil_jax.envs import embodiments
from nil_jax.reward import mesh_proxies, renderer

VOLUME_TOLERANCE = 0.06  # relative error of the voxelized volume (96 cells) against the solid's
L_IOU = 0.9  # 3D IoU of an L-shaped mesh's proxies with the L

BOX_HALF = np.array([0.1, 0.05, 0.03])
BOX_POS, BOX_EULER = "0.1 -0.2 0.3", "30 20 10"  # the mesh geom's pose in its body
L_UNIT, L_HEIGHT = 0.1, 0.2
# An L in the xy plane (counterclockwise, in units of L_UNIT): its inner corner is (1, 1).
L_OUTLINE = np.array([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)], float)


def prism(outline: np.ndarray, z_low: float, z_high: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and outward-facing triangles of a polygon (counterclockwise, fan-triangulable
    from its first corner) extruded along z."""
    n = len(outline)
    vertices = np.concatenate([np.c_[outline, np.full(n, z_low)],
                               np.c_[outline, np.full(n, z_high)]])
    faces = []
    for i in range(1, n - 1):
        faces += [(0, i + 1, i), (n, n + i, n + i + 1)]  # bottom (-z), top (+z)
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, n + j), (i, n + j, n + i)]  # sides
    return vertices, np.array(faces)


def mesh_xml(name: str, vertices: np.ndarray, faces: np.ndarray) -> str:
    return (f'<mesh name="{name}" vertex="{" ".join(map(str, vertices.ravel()))}" '
            f'face="{" ".join(map(str, faces.ravel()))}"/>')


BOX_VERTICES, BOX_FACES = prism(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * BOX_HALF[:2],
                                -BOX_HALF[2], BOX_HALF[2])
L_VERTICES, L_FACES = prism(L_OUTLINE * L_UNIT, 0.0, L_HEIGHT)

SCENE_XML = f"""
<mujoco>
  <asset>
    {mesh_xml("box", BOX_VERTICES, BOX_FACES)}
    {mesh_xml("l", L_VERTICES, L_FACES)}
    <hfield name="terrain" nrow="3" ncol="3" size="1 1 0.1 0.1"/>
  </asset>
  <worldbody>
    <body name="box_body" pos="0 0 1">
      <freejoint/>
      <geom name="box_mesh" type="mesh" mesh="box" pos="{BOX_POS}" euler="{BOX_EULER}"/>
      <!-- The same box as a primitive, hidden (group 4): the expected pose. -->
      <geom name="box_expected" type="box" size="{' '.join(map(str, BOX_HALF))}"
            pos="{BOX_POS}" euler="{BOX_EULER}" group="4"/>
    </body>
    <body name="l_body" pos="1 0 1">
      <freejoint/>
      <geom name="l_mesh" type="mesh" mesh="l"/>
      <geom name="ball" type="sphere" size="0.05" pos="0 0 0.3"/>
    </body>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def scene():
    return mujoco.MjModel.from_xml_string(SCENE_XML)


@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    """An empty disk cache, and an empty in-process one, for one test."""
    monkeypatch.setattr(mesh_proxies, "cache_folder", lambda: tmp_path)
    monkeypatch.setattr(mesh_proxies, "_FITS", {})
    monkeypatch.setattr(mesh_proxies, "_MODELS", {})
    return tmp_path


def geom_id(model, name):
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)


def mesh_data(model, geom):
    """Vertices (geom frame) and faces of a mesh geom."""
    mesh = model.geom_dataid[geom]
    vert = slice(model.mesh_vertadr[mesh], model.mesh_vertadr[mesh] + model.mesh_vertnum[mesh])
    face = slice(model.mesh_faceadr[mesh], model.mesh_faceadr[mesh] + model.mesh_facenum[mesh])
    return model.mesh_vert[vert].astype(float), model.mesh_face[face].astype(np.int64)


def no_fit(*args, **kwargs):
    raise AssertionError("fitted again although the cache holds the fit")


def covered(primitives, points):
    """Points (N, 3) in the body frame covered by any of the primitives."""
    return np.any([mesh_proxies.Shape(p.kind, p.size, p.pos, p.rot).contains(points)
                   for p in primitives], axis=0)


def in_l(points):
    """Points (N, 3) inside the analytic L (body frame)."""
    x, y, z = (points / L_UNIT).T
    in_outline = (((x >= 0) & (x <= 3) & (y >= 0) & (y <= 1))
                  | ((x >= 0) & (x <= 1) & (y >= 0) & (y <= 3)))
    return in_outline & (points[:, 2] >= 0) & (points[:, 2] <= L_HEIGHT)


def in_box(model, points):
    """Points (N, 3) inside the box mesh (body frame), from the hidden primitive box."""
    expected = geom_id(model, "box_expected")
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, model.geom_quat[expected])
    local = (points - model.geom_pos[expected]) @ rot.reshape(3, 3)
    return np.all(np.abs(local) <= BOX_HALF, axis=1)


@pytest.mark.parametrize("name, volume", [
    ("box_mesh", np.prod(2 * BOX_HALF)),
    ("l_mesh", 5 * L_UNIT ** 2 * L_HEIGHT),  # five unit squares
])
def test_voxelizer_finds_the_solid(scene, name, volume):
    geom = geom_id(scene, name)
    vertices, faces = mesh_data(scene, geom)
    grid = mesh_proxies.mesh_grid(vertices)
    occupied = mesh_proxies.visual_hull(vertices, faces, grid)
    # Cell centres in the body frame, where the analytic solid is known.
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, scene.geom_quat[geom])
    centres = grid.centres().reshape(-1, 3) @ rot.reshape(3, 3).T + scene.geom_pos[geom]
    inside = in_box(scene, centres) if name == "box_mesh" else in_l(centres)
    np.testing.assert_array_equal(occupied.reshape(-1), inside)
    m = mesh_proxies.MARGIN  # the margin around the mesh stays empty
    assert not occupied[:m].any() and not occupied[-m:].any()
    # Counting centres measures the volume up to a cell's thickness on the faces.
    fine = mesh_proxies.FitParams(resolution=96, cells_across=36, max_resolution=96)
    grid = mesh_proxies.mesh_grid(vertices, fine)
    occupied = mesh_proxies.visual_hull(vertices, faces, grid)
    assert occupied.sum() * grid.cell ** 3 == pytest.approx(volume, rel=VOLUME_TOLERANCE)


def test_box_mesh_gives_one_box_in_the_body_frame(scene, disk_cache):
    mesh, expected = geom_id(scene, "box_mesh"), geom_id(scene, "box_expected")
    (proxy,) = mesh_proxies.mesh_primitives(scene, mesh)
    assert proxy.kind == int(mujoco.mjtGeom.mjGEOM_BOX)
    assert proxy.label == mesh and proxy.body == scene.geom_bodyid[mesh]
    cell = mesh_proxies.mesh_grid(mesh_data(scene, mesh)[0]).cell
    # MuJoCo may reorder the mesh's axes: compare sizes and axes up to order and sign.
    expected_rot = np.zeros(9)
    mujoco.mju_quat2Mat(expected_rot, scene.geom_quat[expected])
    expected_rot = expected_rot.reshape(3, 3)
    alignment = np.abs(proxy.rot.T @ expected_rot)  # |cos| between proxy and box axes
    np.testing.assert_allclose(alignment.max(0), 1.0, atol=1e-6)
    order = np.argmax(alignment, axis=0)  # the proxy axis along each box axis
    np.testing.assert_allclose(proxy.size[order], BOX_HALF, atol=cell)
    np.testing.assert_allclose(proxy.pos, scene.geom_pos[expected], atol=0.5 * cell)


def test_l_mesh_is_covered_without_its_concave_corner(scene, disk_cache):
    proxies = mesh_proxies.mesh_primitives(scene, geom_id(scene, "l_mesh"))
    assert len(proxies) >= 2
    axes = [np.linspace(-0.5 * L_UNIT, 3.5 * L_UNIT, 81)] * 2 + [
        np.linspace(-0.02, L_HEIGHT + 0.02, 25)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    ours, truth = covered(proxies, points), in_l(points)
    assert (ours & truth).sum() / (ours | truth).sum() >= L_IOU
    x, y = points[:, 0] / L_UNIT, points[:, 1] / L_UNIT
    corner = (x > 1.3) & (x < 3) & (y > 1.3) & (y < 3) & ~truth
    assert ours[corner].mean() < 0.02


def test_a_mesh_thinner_than_a_cell_still_gets_a_box():
    # A flat square (MuJoCo refuses such a mesh asset, but a fit must never come back empty).
    vertices = np.array([(0, 0, 0), (0.2, 0, 0), (0.2, 0.1, 0), (0, 0.1, 0)], float)
    (shape,) = mesh_proxies.fit_mesh(vertices, np.array([(0, 1, 2), (0, 2, 3)]))
    assert shape.kind == int(mujoco.mjtGeom.mjGEOM_BOX)
    np.testing.assert_allclose(shape.centre, (0.1, 0.05, 0.0))
    np.testing.assert_allclose(shape.size[:2], (0.1, 0.05))
    assert 0 < shape.size[2] < 0.01


def test_every_mesh_geom_of_a_robot_gets_proxies(disk_cache, monkeypatch):
    model = embodiments.load("a1").mj_model
    primitives = mesh_proxies.body_primitives(model)
    assert mesh_proxies.body_primitives(model) is primitives  # fitted once per model
    geoms = renderer.body_geoms(model)
    assert all(model.geom_type[g] == int(mujoco.mjtGeom.mjGEOM_MESH) for g in geoms)
    assert {p.label for p in primitives} == set(geoms)  # nothing silently dropped
    for p in primitives:
        assert p.kind in renderer.SUPPORTED_TYPES and p.body == model.geom_bodyid[p.label]
        assert np.all(np.isfinite(p.size)) and np.all(p.size[:2] > 0)
        np.testing.assert_allclose(p.rot @ p.rot.T, np.eye(3), atol=1e-9)
    assert len(primitives) <= 400  # render cost grows with the proxies' projected boxes

    # Another process loading the robot reads every fit from the disk cache.
    monkeypatch.setattr(mesh_proxies, "_FITS", {})
    monkeypatch.setattr(mesh_proxies, "_MODELS", {})
    monkeypatch.setattr(mesh_proxies, "fit_mesh", no_fit)
    again = mesh_proxies.body_primitives(model)
    assert [(p.label, p.kind) for p in again] == [(p.label, p.kind) for p in primitives]
    for a, b in zip(again, primitives):
        np.testing.assert_array_equal(a.pos, b.pos)


def test_primitives_pass_through_and_other_types_are_refused(scene, disk_cache):
    primitives = mesh_proxies.body_primitives(scene)
    ball = geom_id(scene, "ball")
    (kept,) = [p for p in primitives if p.label == ball]
    assert kept.kind == int(mujoco.mjtGeom.mjGEOM_SPHERE) and kept.size[0] == 0.05
    assert geom_id(scene, "box_expected") not in {p.label for p in primitives}  # group 4
    terrain = mujoco.MjModel.from_xml_string(SCENE_XML.replace(
        '<geom name="ball" type="sphere" size="0.05" pos="0 0 0.3"/>',
        '<geom name="bumps" type="hfield" hfield="terrain"/>'))
    with pytest.raises(ValueError, match="bumps"):
        mesh_proxies.body_primitives(terrain)


def test_disk_cache_round_trips_and_refits_a_corrupt_file(scene, disk_cache, monkeypatch):
    vertices, faces = mesh_data(scene, geom_id(scene, "l_mesh"))
    fitted = mesh_proxies.cached_fit(vertices, faces, np.eye(3))
    (path,) = disk_cache.glob("*.npz")

    # A new process: the in-process cache is empty, the file is read.
    monkeypatch.setattr(mesh_proxies, "_FITS", {})
    with monkeypatch.context() as patch:
        patch.setattr(mesh_proxies, "fit_mesh", no_fit)
        loaded = mesh_proxies.cached_fit(vertices, faces, np.eye(3))
    assert [s.kind for s in loaded] == [s.kind for s in fitted]
    for a, b in zip(loaded, fitted):
        np.testing.assert_array_equal(a.size, b.size)
        np.testing.assert_array_equal(a.centre, b.centre)
        np.testing.assert_array_equal(a.rot, b.rot)

    # Other parameters are another key: fitted, not read.
    mesh_proxies.cached_fit(vertices, faces, np.eye(3), mesh_proxies.FitParams(resolution=24))
    assert len(list(disk_cache.glob("*.npz"))) == 2

    # A corrupt file (a killed writer elsewhere, a full disk) is fitted again and replaced.
    path.write_bytes(b"not an npz file")
    monkeypatch.setattr(mesh_proxies, "_FITS", {})
    refitted = mesh_proxies.cached_fit(vertices, faces, np.eye(3))
    assert [s.kind for s in refitted] == [s.kind for s in fitted]
    assert mesh_proxies._load(path) is not None
