"""Silhouette renderer: analytic ray casting of primitive geoms in pure JAX (CPU, GPU, TPU).

    body poses (mjx.kinematics) + primitives attached to bodies + camera pose
        --a ray through every pixel centre--> nearest hit over all primitives
        --> mask (H, W) bool, depth (H, W) metres, geom id (H, W) (-1: background),
            shade (H, W) grey in [0, 1] (Lambert with a light at the camera)

The camera follows MuJoCo's model exactly: it looks along -Z of its frame, +X right, +Y up,
`fovy` is the vertical field of view, and the ray of pixel (row r top-down, column c) is
`normalize(((2(c+.5)/W - 1) t W/H, (1 - 2(r+.5)/H) t, -1))` in the camera frame with
`t = tan(fovy/2)`, rotated by `cam_xmat` and starting at `cam_xpos`.

Each primitive type has its own intersection function in the primitive's frame (sphere,
ellipsoid, box, capsule, cylinder). Primitives are the model's own primitive geoms plus proxies
fitted to its meshes; they are grouped by type once, from the static model, so a frame costs
pixels x primitives of that type for each type present. Pixels are processed in chunks with
`lax.map` so that memory stays bounded for any batch of environments (vmap on the outside).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

_SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX = (
    int(mujoco.mjtGeom.mjGEOM_SPHERE), int(mujoco.mjtGeom.mjGEOM_CAPSULE),
    int(mujoco.mjtGeom.mjGEOM_ELLIPSOID), int(mujoco.mjtGeom.mjGEOM_CYLINDER),
    int(mujoco.mjtGeom.mjGEOM_BOX),
)
SUPPORTED_TYPES = (_SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX)
_NO_HIT = jnp.inf


def camera_rays(height: int, width: int, fovy_degrees: float) -> np.ndarray:
    """Unit ray directions (H*W, 3) in the camera frame, rows top-down (MuJoCo's model)."""
    t = np.tan(np.radians(fovy_degrees) / 2)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    x = (2 * (cols + 0.5) / width - 1) * t * width / height
    y = (1 - 2 * (rows + 0.5) / height) * t
    d = np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _smallest_positive(*roots: jax.Array) -> jax.Array:
    """Elementwise smallest root > 0 (inf when none)."""
    best = jnp.full_like(roots[0], _NO_HIT)
    for r in roots:
        best = jnp.where((r > 1e-9) & (r < best), r, best)
    return best


def _quadratic_roots(a, b, c):
    """Roots of a t^2 + 2 b t + c = 0 (NaN-free: missing roots are inf)."""
    disc = b * b - a * c
    ok = (disc >= 0) & (a > 0)
    sq = jnp.sqrt(jnp.where(ok, disc, 0.0))
    a_safe = jnp.where(ok, a, 1.0)
    return (jnp.where(ok, (-b - sq) / a_safe, _NO_HIT), jnp.where(ok, (-b + sq) / a_safe, _NO_HIT))


def _hit_point(o, d, t):
    """The point at distance t along the ray (the origin where there is no hit)."""
    return o + jnp.where(jnp.isfinite(t), t, 0.0)[..., None] * d


def _sphere_distance(centred_origin, d, radius):
    """Nearest positive distance to a sphere, given the ray origin relative to its centre."""
    return _smallest_positive(*_quadratic_roots(
        jnp.sum(d * d, -1), jnp.sum(centred_origin * d, -1),
        jnp.sum(centred_origin * centred_origin, -1) - radius ** 2))


def hit_sphere(o, d, size):
    """o, d: (..., 3) ray in the geom frame; returns distance along d and the local normal."""
    t = _sphere_distance(o, d, size[0])
    return t, _hit_point(o, d, t)


def hit_ellipsoid(o, d, size):
    s = size[:3]
    t = _smallest_positive(*_quadratic_roots(jnp.sum((d / s) ** 2, -1),
                                             jnp.sum(o * d / s ** 2, -1),
                                             jnp.sum((o / s) ** 2, -1) - 1.0))
    return t, _hit_point(o, d, t) / s ** 2


def hit_box(o, d, size):
    half = size[:3]
    inv = 1.0 / jnp.where(jnp.abs(d) > 1e-12, d, 1e-12)
    t0, t1 = (-half - o) * inv, (half - o) * inv
    near = jnp.max(jnp.minimum(t0, t1), -1)
    far = jnp.min(jnp.maximum(t0, t1), -1)
    hit = (near <= far) & (far > 1e-9)
    t = jnp.where(hit, jnp.where(near > 1e-9, near, far), _NO_HIT)
    p = _hit_point(o, d, t)
    # The normal is along the axis where the hit point lies on the face.
    face = jnp.argmax(jnp.abs(p) / half, -1)
    normal = jax.nn.one_hot(face, 3) * jnp.sign(p)
    return t, normal


def _hit_side(o, d, radius, half_length):
    """The infinite cylinder x^2 + y^2 = r^2 along z, clipped to |z| <= half_length."""
    roots = _quadratic_roots(d[..., 0] ** 2 + d[..., 1] ** 2,
                             o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1],
                             o[..., 0] ** 2 + o[..., 1] ** 2 - radius ** 2)
    clipped = [jnp.where(jnp.abs(o[..., 2] + r * d[..., 2]) <= half_length, r, _NO_HIT)
               for r in roots]
    return _smallest_positive(*clipped)


def hit_capsule(o, d, size):
    radius, half = size[0], size[1]
    t_side = _hit_side(o, d, radius, half)
    caps = [_sphere_distance(o - jnp.array([0.0, 0.0, z]), d, radius) for z in (half, -half)]
    t = jnp.minimum(t_side, jnp.minimum(*caps))
    p = _hit_point(o, d, t)
    axis_point = jnp.stack([jnp.zeros_like(p[..., 0]), jnp.zeros_like(p[..., 0]),
                            jnp.clip(p[..., 2], -half, half)], -1)
    return t, p - axis_point


def hit_cylinder(o, d, size):
    radius, half = size[0], size[1]
    t_side = _hit_side(o, d, radius, half)
    dz = jnp.where(jnp.abs(d[..., 2]) > 1e-12, d[..., 2], 1e-12)
    discs = []
    for z in (half, -half):
        t = (z - o[..., 2]) / dz
        p = o + t[..., None] * d
        discs.append(jnp.where(p[..., 0] ** 2 + p[..., 1] ** 2 <= radius ** 2, t, _NO_HIT))
    t_disc = _smallest_positive(*discs)
    t = jnp.minimum(t_side, t_disc)
    p = _hit_point(o, d, t)
    on_side = t_side <= t_disc
    normal = jnp.where(on_side[..., None], p * jnp.array([1.0, 1.0, 0.0]),
                       jnp.array([0.0, 0.0, 1.0]) * jnp.sign(p[..., 2:3]))
    return t, normal


_HIT_FUNCTIONS = {_SPHERE: hit_sphere, _ELLIPSOID: hit_ellipsoid, _BOX: hit_box,
                  _CAPSULE: hit_capsule, _CYLINDER: hit_cylinder}


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One drawn shape, rigidly attached to a body."""

    body: int
    kind: int  # mjtGeom: sphere, capsule, ellipsoid, cylinder or box
    size: np.ndarray  # (3,) MuJoCo geom size
    pos: np.ndarray  # (3,) in the body frame
    rot: np.ndarray  # (3, 3) body frame <- primitive frame
    label: int  # reported in the geom-id image: the MuJoCo geom it stands for


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """Static description of a frame: the primitives grouped by type, the pixel rays."""

    height: int
    width: int
    fovy: float
    body: np.ndarray  # (N,) body of each primitive
    pos: np.ndarray  # (N, 3)
    rot: np.ndarray  # (N, 3, 3)
    label: np.ndarray  # (N,)
    groups: tuple[tuple[int, np.ndarray, np.ndarray], ...]  # (type, primitive indices, sizes)
    rays: np.ndarray  # (H*W, 3) camera-frame ray directions
    pixel_chunk: int


def body_geoms(model: mujoco.MjModel) -> list[int]:
    """The geoms that make up the robot's picture: visible (group < 3), not on the world body."""
    return [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0
            and model.geom_group[g] < 3 and model.geom_rgba[g, 3] > 0]


def geom_primitives(model: mujoco.MjModel, geom_ids: Sequence[int]) -> list[Primitive]:
    """The primitive geoms themselves; raises on anything else (nothing may silently vanish)."""
    unsupported = [g for g in geom_ids if model.geom_type[g] not in SUPPORTED_TYPES]
    if unsupported:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or f"#{g}"
                 for g in unsupported]
        raise ValueError(f"Geoms {names} are not primitives the silhouette renderer can draw "
                         f"(types {[int(model.geom_type[g]) for g in unsupported]}); replace "
                         "meshes by primitive proxies first (reward.mesh_proxies).")
    out = []
    for g in geom_ids:
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, model.geom_quat[g])
        out.append(Primitive(body=int(model.geom_bodyid[g]), kind=int(model.geom_type[g]),
                             size=model.geom_size[g].copy(), pos=model.geom_pos[g].copy(),
                             rot=rot.reshape(3, 3), label=int(g)))
    return out


def make_render_spec(primitives: Sequence[Primitive], fovy: float, height: int = 224,
                     width: int = 224, pixel_chunk: int = 4096) -> RenderSpec:
    if not primitives:
        raise ValueError("Nothing to render: no primitives given.")
    kinds = np.array([p.kind for p in primitives])
    sizes = np.stack([p.size for p in primitives])
    groups = tuple((kind, np.flatnonzero(kinds == kind), sizes[kinds == kind])
                   for kind in SUPPORTED_TYPES if np.any(kinds == kind))
    pixels = height * width
    chunk = min(pixel_chunk, pixels)
    while pixels % chunk:
        chunk -= 1
    return RenderSpec(
        height=height, width=width, fovy=float(fovy),
        body=np.array([p.body for p in primitives], np.int32),
        pos=np.stack([p.pos for p in primitives]), rot=np.stack([p.rot for p in primitives]),
        label=np.array([p.label for p in primitives], np.int32), groups=groups,
        rays=camera_rays(height, width, fovy), pixel_chunk=chunk)


def render(spec: RenderSpec, xpos: jax.Array, xmat: jax.Array, cam_xpos: jax.Array,
           cam_xmat: jax.Array) -> dict[str, jax.Array]:
    """One frame: mask, depth, geom label and shade, each (H, W).

    xpos (nbody, 3), xmat (nbody, 3, 3) or (nbody, 9): body poses (mjx.kinematics);
    cam_xpos (3,), cam_xmat (3, 3) or (9,). vmap this for a batch of environments.
    """
    dtype = xpos.dtype
    body_rot = xmat.reshape(-1, 3, 3)[spec.body]  # (N, 3, 3)
    geom_rot = body_rot @ jnp.asarray(spec.rot, dtype)
    geom_pos = xpos[spec.body] + jnp.einsum("nij,nj->ni", body_rot, jnp.asarray(spec.pos, dtype))
    cam_xmat = cam_xmat.reshape(3, 3)
    rays = jnp.asarray(spec.rays, dtype).reshape(-1, spec.pixel_chunk, 3)

    def chunk(directions_cam):
        directions = directions_cam @ cam_xmat.T  # (P, 3) world
        best_t = jnp.full(directions.shape[:1], _NO_HIT, dtype)
        best_label = jnp.full(directions.shape[:1], -1, jnp.int32)
        best_normal = jnp.zeros_like(directions)
        for kind, index, sizes in spec.groups:
            rot = geom_rot[index]  # (Gk, 3, 3)
            # The ray in each primitive's frame: origin (Gk, 3), directions (P, Gk, 3).
            origin = jnp.einsum("gji,gj->gi", rot, cam_xpos - geom_pos[index])
            local_dir = jnp.einsum("gji,pj->pgi", rot, directions)
            t, normal_local = jax.vmap(_HIT_FUNCTIONS[kind], in_axes=(0, 1, 0), out_axes=1)(
                origin, local_dir, jnp.asarray(sizes, dtype))
            k = jnp.argmin(t, axis=1)
            t_k = jnp.take_along_axis(t, k[:, None], 1)[:, 0]
            normal = jnp.einsum("pij,pj->pi", rot[k],
                                jnp.take_along_axis(normal_local, k[:, None, None], 1)[:, 0])
            closer = t_k < best_t
            best_t = jnp.where(closer, t_k, best_t)
            best_label = jnp.where(closer, jnp.asarray(spec.label[index])[k], best_label)
            best_normal = jnp.where(closer[:, None], normal, best_normal)
        hit = jnp.isfinite(best_t)
        unit = best_normal / jnp.maximum(jnp.linalg.norm(best_normal, axis=-1, keepdims=True),
                                         1e-12)
        shade = jnp.where(hit, 0.25 + 0.75 * jnp.abs(jnp.sum(unit * directions, -1)), 0.0)
        # Depth along the camera's viewing axis, as a z-buffer stores it.
        depth = jnp.where(hit, best_t * -directions_cam[:, 2], 0.0)
        return hit, depth, best_label, shade

    hit, depth, label, shade = jax.lax.map(chunk, rays)
    shape = (spec.height, spec.width)
    return {"mask": hit.reshape(shape), "depth": depth.reshape(shape),
            "geom": label.reshape(shape), "shade": shade.reshape(shape)}


def mask_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of boolean masks over the last two axes; 1 when both are empty (they agree)."""
    inter = jnp.sum(a & b, axis=(-2, -1))
    union = jnp.sum(a | b, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
