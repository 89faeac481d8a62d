"""Silhouette renderer: analytic ray casting of primitive geoms in pure JAX (CPU, GPU, TPU).

    body poses (mjx.kinematics) + primitives attached to bodies + camera pose
        --each primitive's bounding box projected to the screen--> a square window of pixels
        --a ray through each window pixel, tested against that primitive only-->
        (depth, primitive) keys scatter-min'ed into a per-pixel buffer (a z-buffer)
        --> mask (H, W) bool, depth (H, W) metres along the view axis, geom id (H, W)
            (-1: background), shade (H, W) grey in [0, 1] (Lambert, light at the camera)

Cost therefore grows with the primitives' projected areas, not with pixels x primitives.
Window sides are static, chosen per primitive from its size and `min_depth` (the nearest
distance from the camera at which it must still fit). A frame in which some primitive does not
fit its window (a part too close to the camera) is flagged and drawn again with windows twice
as large (the next tier), and after the last tier exhaustively (every pixel against every
primitive), so the picture never depends on the window sizes, only the time does.
`render_batch` does this for a batch, in chunks of environments sized so that the work memory
stays within `memory_budget`; each frame is redrawn only if it needs to be.

The camera follows MuJoCo's model exactly: it looks along -Z of its frame, +X right, +Y up,
`fovy` is the vertical field of view, and the ray of pixel (row r top-down, column c) is
`normalize(((2(c+.5)/W - 1) t W/H, (1 - 2(r+.5)/H) t, -1))` in the camera frame with
`t = tan(fovy/2)`, rotated by `cam_xmat` and starting at `cam_xpos`.

Each primitive type has its own intersection function in the primitive's frame (sphere,
ellipsoid, box, capsule, cylinder). Primitives are the model's own primitive geoms plus proxies
fitted to its meshes (`mesh_proxies`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from nil_jax.envs import scenes

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


def _sphere_distance(centred_origin, d, radius):
    """Nearest positive distance to a sphere, given the ray origin relative to its centre."""
    return _smallest_positive(*_quadratic_roots(
        jnp.sum(d * d, -1), jnp.sum(centred_origin * d, -1),
        jnp.sum(centred_origin * centred_origin, -1) - radius ** 2))


def hit_sphere(o, d, size):
    """o, d: (..., 3) ray in the primitive's frame; returns the distance along d (inf: miss)."""
    return _sphere_distance(o, d, size[0])


def hit_ellipsoid(o, d, size):
    s = size[:3]
    return _smallest_positive(*_quadratic_roots(jnp.sum((d / s) ** 2, -1),
                                                jnp.sum(o * d / s ** 2, -1),
                                                jnp.sum((o / s) ** 2, -1) - 1.0))


def hit_box(o, d, size):
    half = size[:3]
    inv = 1.0 / jnp.where(jnp.abs(d) > 1e-12, d, 1e-12)
    t0, t1 = (-half - o) * inv, (half - o) * inv
    near = jnp.max(jnp.minimum(t0, t1), -1)
    far = jnp.min(jnp.maximum(t0, t1), -1)
    hit = (near <= far) & (far > 1e-9)
    return jnp.where(hit, jnp.where(near > 1e-9, near, far), _NO_HIT)


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
    caps = [_sphere_distance(o - jnp.array([0.0, 0.0, z]), d, radius) for z in (half, -half)]
    return jnp.minimum(_hit_side(o, d, radius, half), jnp.minimum(*caps))


def hit_cylinder(o, d, size):
    radius, half = size[0], size[1]
    dz = jnp.where(jnp.abs(d[..., 2]) > 1e-12, d[..., 2], 1e-12)
    discs = []
    for z in (half, -half):
        t = (z - o[..., 2]) / dz
        p = o + t[..., None] * d
        discs.append(jnp.where(p[..., 0] ** 2 + p[..., 1] ** 2 <= radius ** 2, t, _NO_HIT))
    return jnp.minimum(_hit_side(o, d, radius, half), _smallest_positive(*discs))


def _normal_capsule(p, size):
    zero = jnp.zeros_like(p[..., :1])
    half = size[..., 1:2]
    return p - jnp.concatenate([zero, zero, jnp.clip(p[..., 2:3], -half, half)], -1)


def _normal_cylinder(p, size):
    # A point is on a cap when it is nearer the cap plane than the side.
    radius, half = size[..., 0:1], size[..., 1:2]
    zero = jnp.zeros_like(p[..., :1])
    radial = jnp.sqrt(p[..., 0:1] ** 2 + p[..., 1:2] ** 2)
    on_cap = half - jnp.abs(p[..., 2:3]) < radius - radial
    return jnp.where(on_cap, jnp.concatenate([zero, zero, jnp.sign(p[..., 2:3])], -1),
                     jnp.concatenate([p[..., :2], zero], -1))


def _normal_box(p, size):
    face = jnp.argmax(jnp.abs(p) / jnp.maximum(size, 1e-9), -1)  # the axis of the hit face
    return jax.nn.one_hot(face, 3, dtype=p.dtype) * jnp.sign(p)


_NORMAL_FUNCTIONS = {  # outward (unnormalized) normal at a surface point, primitive frame
    _SPHERE: lambda p, size: p,
    _ELLIPSOID: lambda p, size: p / jnp.maximum(size, 1e-9) ** 2,
    _BOX: _normal_box, _CAPSULE: _normal_capsule, _CYLINDER: _normal_cylinder,
}


def surface_normal(kind: jax.Array, size: jax.Array, p: jax.Array) -> jax.Array:
    """Outward (unnormalized) normal at surface points p (..., 3) of mixed types.

    kind (...) and size (..., 3) may differ per point: every type's formula is evaluated and
    the point's own is selected (cheaper than branching per pixel on an accelerator).
    """
    out = jnp.zeros_like(p)
    for k, normal in _NORMAL_FUNCTIONS.items():
        out = jnp.where((kind == k)[..., None], normal(p, size), out)
    return out


def _lambert(normal, direction):
    """Grey level: a light at the camera, 0.25 ambient so that the body never goes black."""
    cosine = jnp.sum(normal * direction, -1) / jnp.maximum(
        jnp.linalg.norm(normal, axis=-1) * jnp.linalg.norm(direction, axis=-1), 1e-12)
    return 0.25 + 0.75 * jnp.abs(cosine)


_HIT_FUNCTIONS = {_SPHERE: hit_sphere, _ELLIPSOID: hit_ellipsoid, _BOX: hit_box,
                  _CAPSULE: hit_capsule, _CYLINDER: hit_cylinder}


_BOX_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
WINDOW_SIDES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
SHADE_BITS = 8  # grey levels in a z-buffer key (render_windowed)
_NEAR = 1e-3  # metres: a primitive with corners both nearer and farther straddles the camera
# Estimated work memory, used only to size chunks: bytes per window pixel (windowed path), per
# ray-primitive test (exhaustive path) and per image pixel (both). They are estimates, not fits;
# XLA's own account (`memory_analysis`) is what tests and benchmarks report.
_BYTES_PER_WINDOW_PIXEL = 64
_BYTES_PER_TEST = 96
_BYTES_PER_PIXEL = 256


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One drawn shape, rigidly attached to a body."""

    body: int
    kind: int  # mjtGeom: sphere, capsule, ellipsoid, cylinder or box
    size: np.ndarray  # (3,) MuJoCo geom size
    pos: np.ndarray  # (3,) in the body frame
    rot: np.ndarray  # (3, 3) body frame <- primitive frame
    label: int  # reported in the geom-id image: the MuJoCo geom it stands for


def half_extents(kind: int, size: np.ndarray) -> np.ndarray:
    """Half-extents of a primitive's bounding box in its own frame."""
    r = size[0]
    return {_SPHERE: np.array([r, r, r]), _CAPSULE: np.array([r, r, size[1] + r]),
            _CYLINDER: np.array([r, r, size[1]]), _ELLIPSOID: np.asarray(size[:3]),
            _BOX: np.asarray(size[:3])}[kind].astype(float)


@dataclasses.dataclass(frozen=True)
class PrimitiveGroup:
    """Primitives of one type, intersected together (by the exhaustive path)."""

    kind: int
    index: np.ndarray  # (G,) rows of the spec's per-primitive arrays
    size: np.ndarray  # (G, 3)


@dataclasses.dataclass(frozen=True)
class WindowGroup:
    """Primitives of one type whose windows have the same size, intersected together.

    Window sides come in steps of about sqrt(2) (`WINDOW_SIDES`): one group per step and type
    keeps the compiled program small, and a window is at most ~1.4x larger than it must be.
    (One flat array of all window pixels per type, with per-pixel lookups of the primitive,
    was measured 6x slower per pixel on the CPU: XLA does not fuse those gathers.)
    """

    kind: int
    index: np.ndarray  # (G,) rows of the spec's per-primitive arrays
    size: np.ndarray  # (G, 3)
    window: tuple[int, int]  # rows and columns of every window of the group


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """Static description of a frame: primitives, camera intrinsics, windows and chunking."""

    height: int
    width: int
    fovy: float
    body: np.ndarray  # (N,) body of each primitive
    kind: np.ndarray  # (N,)
    size: np.ndarray  # (N, 3)
    pos: np.ndarray  # (N, 3) in the body frame
    rot: np.ndarray  # (N, 3, 3)
    label: np.ndarray  # (N,)
    by_kind: tuple[PrimitiveGroup, ...]  # the exhaustive path
    half_extent: np.ndarray  # (N, 3) bounding boxes
    tiers: tuple[tuple[WindowGroup, ...], ...]  # windowed paths, windows growing 2x per tier
    windows: tuple[np.ndarray, ...]  # (N, 2) each primitive's window in each tier
    rays: np.ndarray  # (H*W, 3) camera-frame ray directions
    pixel_chunk: int  # pixels per step of the exhaustive path
    min_depth: float
    max_depth: float  # metres: the range of the fast path's fixed-point distances
    memory_budget: int  # bytes of work memory that `render_batch` aims to stay within

    @property
    def focal(self) -> float:
        """Focal length in pixels (the same for rows and columns in MuJoCo's camera)."""
        return self.height / (2 * np.tan(np.radians(self.fovy) / 2))

    def window_pixels(self, tier: int = 0) -> int:
        return sum(len(g.index) * g.window[0] * g.window[1] for g in self.tiers[tier])

    @property
    def label_bits(self) -> int:
        """Low bits of a z-buffer key that hold the geom label (see `render_windowed`)."""
        return max(1, int(np.ceil(np.log2(int(self.label.max()) + 1))))

    @property
    def depth_bits(self) -> int:
        """High bits of a z-buffer key that hold the hit distance (see `render_windowed`)."""
        return 32 - SHADE_BITS - self.label_bits


def body_geoms(model: mujoco.MjModel) -> list[int]:
    """The geoms that make up the robot's picture: visible (group < 3), not on the world body
    or a skill scene's bodies (chair, bar, board: simulated, not part of the mask)."""
    return [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0
            and model.geom_group[g] < 3 and model.geom_rgba[g, 3] > 0
            and not scenes.is_scene_body(model, model.geom_bodyid[g])]


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


def window_side(half_extent: np.ndarray, focal: float, min_depth: float) -> int:
    """Side (pixels) of a square window that holds the primitive's projection at `min_depth`.

    A bounding box of half-diagonal r at depth z projects to at most 2 r f / (z - r) pixels
    near the image centre; 1.2x allows for the stretch away from it, +2 for pixel rounding.
    """
    radius = float(np.linalg.norm(half_extent))
    span = 2 * radius * focal / max(min_depth - radius, 0.25 * min_depth)
    need = 1.2 * span + 2
    return next((s for s in WINDOW_SIDES if s >= need), WINDOW_SIDES[-1])


def make_render_spec(primitives: Sequence[Primitive], fovy: float, height: int = 224,
                     width: int = 224, *, min_depth: float, max_depth: float = 64.0,
                     tiers: int = 2, pixel_chunk: int = 4096,
                     memory_budget: int = 2 ** 30) -> RenderSpec:
    """Groups the primitives and sizes their windows.

    min_depth: metres from the camera (along its view axis) down to which every primitive fits
      its first-tier window; tier k's windows are 2^k times larger; a frame that fits no tier is
      rendered exhaustively. Every path gives the same image; only the time differs.
    max_depth: metres covered by the windowed paths' fixed-point distances; their depth step is
      max_depth / 2^(24 - label bits) (0.5 mm for the default 64 m and up to 128 geoms).
    memory_budget: bytes of intermediate memory `render_batch` may use (it chunks environments).
    """
    if not primitives:
        raise ValueError("Nothing to render: no primitives given.")
    if not min_depth > 0:
        raise ValueError(f"min_depth must be a positive distance in metres, got {min_depth}.")
    if not max_depth > min_depth:
        raise ValueError(f"max_depth ({max_depth}) must exceed min_depth ({min_depth}).")
    if int(max(p.label for p in primitives)) >= 2 ** (32 - SHADE_BITS - 12):
        raise ValueError("Geom labels above 4095 do not fit a z-buffer key (12 bits at most, "
                         "so that distances keep 12 bits); renumber the geoms.")
    if tiers < 1:
        raise ValueError(f"At least one window tier is needed, got tiers={tiers}.")
    kinds = np.array([p.kind for p in primitives])
    sizes = np.stack([np.asarray(p.size, float) for p in primitives])
    halves = np.stack([half_extents(p.kind, np.asarray(p.size, float)) for p in primitives])
    focal = height / (2 * np.tan(np.radians(fovy) / 2))

    def by_kind(kind):
        index = np.flatnonzero(kinds == kind)
        return PrimitiveGroup(kind=int(kind), index=index, size=sizes[index])

    def windowed(kind, scale):
        sides = np.array([window_side(h, focal, min_depth / scale) for h in halves])
        groups = []
        for side in np.unique(sides[kinds == kind]):
            index = np.flatnonzero((kinds == kind) & (sides == side))
            groups.append(WindowGroup(kind=int(kind), index=index, size=sizes[index],
                                      window=(min(int(side), height), min(int(side), width))))
        return groups

    present = [k for k in SUPPORTED_TYPES if np.any(kinds == k)]
    pixels = height * width
    chunk = min(pixel_chunk, pixels)
    while pixels % chunk:
        chunk -= 1
    return RenderSpec(
        height=height, width=width, fovy=float(fovy),
        body=np.array([p.body for p in primitives], np.int32), kind=kinds.astype(np.int32),
        size=sizes, pos=np.stack([p.pos for p in primitives]),
        rot=np.stack([p.rot for p in primitives]),
        label=np.array([p.label for p in primitives], np.int32),
        by_kind=tuple(by_kind(k) for k in present),
        half_extent=halves,
        tiers=tuple(tuple(g for k in present for g in windowed(k, 2 ** tier))
                    for tier in range(tiers)),
        windows=tuple(np.stack([np.minimum(sides, height), np.minimum(sides, width)], -1)
                      for sides in (np.array([window_side(h, focal, min_depth / 2 ** tier)
                                              for h in halves]) for tier in range(tiers))),
        rays=camera_rays(height, width, fovy), pixel_chunk=chunk, min_depth=float(min_depth),
        max_depth=float(max_depth), memory_budget=int(memory_budget))


def _world_poses(spec: RenderSpec, xpos, xmat):
    """Primitive positions (N, 3) and rotations (N, 3, 3) in the world from body poses."""
    dtype = xpos.dtype
    body_rot = xmat.reshape(-1, 3, 3)[spec.body]
    geom_rot = body_rot @ jnp.asarray(spec.rot, dtype)
    geom_pos = xpos[spec.body] + jnp.einsum("nij,nj->ni", body_rot, jnp.asarray(spec.pos, dtype))
    return geom_pos, geom_rot


def _frame(spec: RenderSpec, t, primitive, geom_pos, geom_rot, cam_xpos, cam_xmat):
    """Images from the nearest hit of every pixel: distance t (H*W,) (inf: none), primitive.

    For the exhaustive path: the surface normal is computed once per pixel, from the hit point
    on the winning primitive, rather than for every ray-primitive test.
    """
    dtype = geom_pos.dtype
    directions_cam = jnp.asarray(spec.rays, dtype)
    directions = directions_cam @ cam_xmat.T
    hit = jnp.isfinite(t)
    # One gather of a packed row per pixel; broadcast products instead of per-pixel 3x3 dots
    # (XLA fuses them into one loop, it does not fuse tiny batched matrix products).
    table = jnp.concatenate([
        geom_rot.reshape(-1, 9), geom_pos, jnp.asarray(spec.size, dtype),
        jnp.asarray(spec.kind, dtype)[:, None], jnp.asarray(spec.label, dtype)[:, None]], -1)
    row = table[jnp.where(hit, primitive, 0)]
    rot, pos, size = row[:, :9].reshape(-1, 3, 3), row[:, 9:12], row[:, 12:15]
    point = cam_xpos + jnp.where(hit, t, 0.0)[:, None] * directions - pos
    local = jnp.sum(rot * point[:, :, None], axis=1)  # R^T (x - pos)
    normal = jnp.sum(rot * surface_normal(row[:, 15], size, local)[:, None, :], axis=2)
    shade = jnp.round(_lambert(normal, directions) * 255) / 255  # 8-bit, as the fast path
    shape = (spec.height, spec.width)
    return {"mask": hit.reshape(shape),
            # Depth along the camera's viewing axis, as a z-buffer stores it.
            "depth": jnp.where(hit, t * -directions_cam[:, 2], 0.0).reshape(shape),
            "geom": jnp.where(hit, row[:, 16].astype(jnp.int32), -1).reshape(shape),
            "shade": jnp.where(hit, shade, 0.0).reshape(shape)}


def render_exhaustive(spec: RenderSpec, xpos: jax.Array, xmat: jax.Array, cam_xpos: jax.Array,
                      cam_xmat: jax.Array) -> dict[str, jax.Array]:
    """One frame, every pixel against every primitive (exact for any pose; the reference).

    xpos (nbody, 3), xmat (nbody, 3, 3) or (nbody, 9): body poses (mjx.kinematics);
    cam_xpos (3,), cam_xmat (3, 3) or (9,). Returns mask, depth, geom and shade, each (H, W).
    """
    dtype = xpos.dtype
    geom_pos, geom_rot = _world_poses(spec, xpos, xmat)
    cam_xmat = cam_xmat.reshape(3, 3)
    rays = jnp.asarray(spec.rays, dtype).reshape(-1, spec.pixel_chunk, 3)

    def nearest(directions_cam):
        directions = directions_cam @ cam_xmat.T  # (P, 3) world
        best_t = jnp.full(directions.shape[:1], _NO_HIT, dtype)
        best = jnp.zeros(directions.shape[:1], jnp.int32)
        for group in spec.by_kind:
            rot = geom_rot[group.index]  # (Gk, 3, 3)
            # The ray in each primitive's frame: origin (Gk, 3), directions (P, Gk, 3).
            origin = jnp.einsum("gji,gj->gi", rot, cam_xpos - geom_pos[group.index])
            local_dir = jnp.einsum("gji,pj->pgi", rot, directions)
            t = jax.vmap(_HIT_FUNCTIONS[group.kind], in_axes=(0, 1, 0), out_axes=1)(
                origin, local_dir, jnp.asarray(group.size, dtype))
            k = jnp.argmin(t, axis=1)
            t_k = jnp.take_along_axis(t, k[:, None], 1)[:, 0]
            closer = t_k < best_t
            best_t = jnp.where(closer, t_k, best_t)
            best = jnp.where(closer, jnp.asarray(group.index, jnp.int32)[k], best)
        return best_t, best

    t, primitive = jax.lax.map(nearest, rays)
    return _frame(spec, t.ravel(), primitive.ravel(), geom_pos, geom_rot, cam_xpos, cam_xmat)


def _window_origin(spec: RenderSpec, tier: int, geom_pos, geom_rot, cam_xpos, cam_xmat):
    """Top-left pixel (N, 2) of each primitive's window, and whether the window is too small.

    The window must hold the visible part of the projection of the primitive's bounding box;
    a box that straddles the camera plane has no bounded projection and also overflows.
    """
    corners = _BOX_CORNERS * jnp.asarray(spec.half_extent, geom_pos.dtype)[:, None, :]
    world = geom_pos[:, None, :] + jnp.einsum("gij,gkj->gki", geom_rot, corners)
    cam = (world - cam_xpos) @ cam_xmat  # camera-frame coordinates (G, 8, 3)
    depth = -cam[..., 2]
    in_front = depth > _NEAR
    straddles = jnp.any(in_front, -1) & ~jnp.all(in_front, -1)
    safe = jnp.where(in_front, depth, 1.0)
    col = spec.width / 2 + spec.focal * cam[..., 0] / safe - 0.5  # pixel-centre coordinates
    row = spec.height / 2 - spec.focal * cam[..., 1] / safe - 0.5
    lo = jnp.stack([jnp.floor(row.min(-1)), jnp.floor(col.min(-1))], -1)
    hi = jnp.stack([jnp.ceil(row.max(-1)), jnp.ceil(col.max(-1))], -1)
    limit = jnp.array([spec.height - 1, spec.width - 1], lo.dtype)
    lo, hi = jnp.maximum(lo, 0), jnp.minimum(hi, limit)
    window = jnp.asarray(spec.windows[tier], lo.dtype)
    visible = jnp.all(in_front, -1) & jnp.all(lo <= hi, -1)
    overflow = straddles | (visible & jnp.any(hi - lo + 1 > window, -1))
    origin = jnp.clip(lo, 0, limit + 1 - window).astype(jnp.int32)
    return origin, overflow


def render_windowed(spec: RenderSpec, xpos: jax.Array, xmat: jax.Array, cam_xpos: jax.Array,
                    cam_xmat: jax.Array, tier: int = 0) -> dict[str, jax.Array]:
    """One frame, each primitive against the pixels of its window only (the fast path).

    Same inputs and outputs as `render_exhaustive`, plus `overflow` (): some primitive did not
    fit its window, so this frame is incomplete and must be rendered with a larger tier.

    Each window pixel makes one 32-bit key: its hit distance in fixed point (the high bits), its
    grey level (8 bits) and the geom label (the low `label_bits`). One scatter-min of the keys
    is a z-buffer that also carries the winner's shade and label, so nothing is looked up per
    pixel afterwards (XLA runs such lookups slowly on the CPU). Distances keep
    `spec.max_depth / 2^(24 - label_bits)` steps (0.5 mm over 64 m with 128 labels); ties within
    a step go to the darker, then the smaller, label. Hits beyond `max_depth` count at
    `max_depth`. The shade comes in steps of 1/255, like an 8-bit image.
    """
    dtype = xpos.dtype
    no_hit = jnp.uint32(0xFFFFFFFF)
    label_bits, depth_bits = spec.label_bits, spec.depth_bits
    depth_step = spec.max_depth / (2 ** depth_bits - 1)
    geom_pos, geom_rot = _world_poses(spec, xpos, xmat)
    cam_xmat = cam_xmat.reshape(3, 3)
    # Per primitive, once: window corner, and the camera's position and axes in its frame.
    origins, overflow = _window_origin(spec, tier, geom_pos, geom_rot, cam_xpos, cam_xmat)
    to_locals = jnp.einsum("nji,jk->nik", geom_rot, cam_xmat)  # R^T M
    local_origins = jnp.einsum("nji,nj->ni", geom_rot, cam_xpos - geom_pos)
    keys, pixels = [], []
    for group in spec.tiers[tier]:
        origin = origins[group.index]
        rows, cols = np.meshgrid(np.arange(group.window[0]), np.arange(group.window[1]),
                                 indexing="ij")
        row = origin[:, 0:1] + rows.reshape(1, -1)  # (G, P)
        col = origin[:, 1:2] + cols.reshape(1, -1)
        # Camera-frame direction (x, y, -1) of each window pixel, taken straight into each
        # primitive's frame by (R^T M) as broadcast products, which XLA fuses into one loop.
        x = ((col + 0.5 - spec.width / 2) / spec.focal).astype(dtype)[..., None]
        y = ((spec.height / 2 - row - 0.5) / spec.focal).astype(dtype)[..., None]
        to_local = to_locals[group.index][:, None]  # (G, 1, 3, 3)
        local_dir = to_local[..., 0] * x + to_local[..., 1] * y - to_local[..., 2]
        local_origin = local_origins[group.index][:, None]  # (G, 1, 3)
        size = jnp.asarray(group.size, dtype)
        # Distances come in units of |d| = |(x, y, -1)|; times |d| they are metres.
        t = jax.vmap(_HIT_FUNCTIONS[group.kind])(local_origin[:, 0], local_dir, size)
        hit = jnp.isfinite(t)
        point = local_origin + jnp.where(hit, t, 0.0)[..., None] * local_dir
        normal = _NORMAL_FUNCTIONS[group.kind](point, size[:, None])
        grey = jnp.round(_lambert(normal, local_dir) * 255).astype(jnp.uint32)
        metres = jnp.where(hit, t, 0.0) * jnp.sqrt(x[..., 0] ** 2 + y[..., 0] ** 2 + 1)
        # The top depth code is left out so that no key equals `no_hit`.
        depth = jnp.minimum(jnp.round(metres / depth_step), 2 ** depth_bits - 2)
        key = ((depth.astype(jnp.uint32) << (SHADE_BITS + label_bits)) | (grey << label_bits)
               | jnp.asarray(spec.label[group.index], jnp.uint32)[:, None])
        keys.append(jnp.where(hit, key, no_hit).ravel())
        pixels.append((row * spec.width + col).ravel())
    keys, pixels = jnp.concatenate(keys), jnp.concatenate(pixels)
    nearest = jnp.full(spec.height * spec.width, no_hit).at[pixels].min(keys)
    hit = nearest != no_hit
    metres = (nearest >> (SHADE_BITS + label_bits)).astype(dtype) * depth_step
    grey = (nearest >> label_bits) & (2 ** SHADE_BITS - 1)
    shape = (spec.height, spec.width)
    return {"mask": hit.reshape(shape),
            # Depth along the camera's viewing axis, as a z-buffer stores it.
            "depth": jnp.where(hit, metres * -jnp.asarray(spec.rays[:, 2], dtype), 0.0
                               ).reshape(shape),
            "geom": jnp.where(hit, (nearest & (2 ** label_bits - 1)).astype(jnp.int32), -1
                              ).reshape(shape),
            "shade": jnp.where(hit, grey.astype(dtype) / 255, 0.0).reshape(shape),
            "overflow": jnp.any(overflow)}


def _chunked(fn, chunk: int, *args):
    """vmap `fn` over the leading axis in steps of at most `chunk` (lax.map).

    A step size that divides the batch is preferred (down to half of `chunk`): then the
    stacked results are the output as they are, where padding would need a batch-sized copy
    to cut the padding off (XLA counts it as work memory: the size of all the frames)."""
    batch = args[0].shape[0]
    divisor = next((c for c in range(min(chunk, batch), 0, -1) if batch % c == 0), 1)
    if 2 * divisor >= min(chunk, batch):
        chunk = divisor
    else:
        chunk = -(-batch // -(-batch // chunk))  # as many steps as needed, as even as can be
    padded = -(-batch // chunk) * chunk
    args = [jnp.concatenate([a, jnp.broadcast_to(a[:1], (padded - batch,) + a.shape[1:])])
            .reshape((padded // chunk, chunk) + a.shape[1:]) for a in args]
    out = jax.lax.map(lambda xs: jax.vmap(fn)(*xs), args)
    return jax.tree.map(lambda x: x.reshape((padded,) + x.shape[2:])[:batch], out)


def env_chunks(spec: RenderSpec, batch: int) -> tuple[int, ...]:
    """Environments per step of each windowed tier, then of the exhaustive path."""
    image = spec.height * spec.width * _BYTES_PER_PIXEL
    need = [spec.window_pixels(k) * _BYTES_PER_WINDOW_PIXEL + image
            for k in range(len(spec.tiers))]
    need.append(spec.pixel_chunk * len(spec.label) * _BYTES_PER_TEST + image)
    return tuple(int(np.clip(spec.memory_budget // n, 1, batch)) for n in need)


def _redo(render_frames, chunk, frames, todo, poses):
    """Renders again, `chunk` frames at a time, only the frames flagged in `todo`."""
    batch = todo.shape[0]
    order = jnp.argsort(~todo, stable=True)  # flagged frames first
    order = jnp.concatenate([order, jnp.full(chunk, batch, order.dtype)])

    def step(carry):
        i, frames = carry
        index = jax.lax.dynamic_slice_in_dim(order, i * chunk, chunk)
        take = jnp.minimum(index, batch - 1)
        again = render_frames(*(p[take] for p in poses))
        target = jnp.where((index < batch) & todo[take], index, batch)  # others are dropped
        return i + 1, {k: v.at[target].set(again[k], mode="drop") for k, v in frames.items()}

    count = jnp.sum(todo)

    def redraw(frames):
        return jax.lax.while_loop(lambda carry: carry[0] * chunk < count, step,
                                  (jnp.int32(0), frames))[1]

    # The cond keeps XLA from hoisting the drawing out of the loop when it looks invariant
    # (a batch of 1), which would run it even when no frame needs it.
    return jax.lax.cond(count > 0, redraw, lambda frames: frames, frames)


def render_batch(spec: RenderSpec, xpos: jax.Array, xmat: jax.Array, cam_xpos: jax.Array,
                 cam_xmat: jax.Array) -> dict[str, jax.Array]:
    """A batch of frames: xpos (B, nbody, 3), xmat (B, nbody, 9), cam_xpos (B, 3), cam_xmat (B, 9).

    Returns mask, depth, geom, shade (B, H, W) and `tier` (B,): which path drew each frame
    (0: the first windows; len(spec.tiers): exhaustive). A frame that does not fit one tier is
    drawn again with the next, so each costs only as much as it needs.
    """
    poses = (xpos, xmat, cam_xpos, cam_xmat)
    chunks = env_chunks(spec, xpos.shape[0])
    frames = _chunked(functools.partial(render_windowed, spec, tier=0), chunks[0], *poses)
    tier = frames.pop("overflow").astype(jnp.int32)
    for k in range(1, len(spec.tiers)):
        frames["overflow"] = jnp.zeros_like(tier, bool)
        frames = _redo(jax.vmap(functools.partial(render_windowed, spec, tier=k)), chunks[k],
                       frames, tier == k, poses)
        tier = tier + frames.pop("overflow")
    frames = _redo(jax.vmap(functools.partial(render_exhaustive, spec)), chunks[-1], frames,
                   tier == len(spec.tiers), poses)
    return {**frames, "tier": tier}



def mask_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of boolean masks over the last two axes; 1 when both are empty (they agree)."""
    inter = jnp.sum(a & b, axis=(-2, -1))
    union = jnp.sum(a | b, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
