"""Primitive proxies for visual meshes, fitted once at load for the silhouette renderer.

    mesh vertices + faces (geom frame)
        --grid: cubic cells over the vertices' bounding box (`FitParams`: 32 cells along the
          longest side, finer for thin links, 3 empty cells around)-->
        target = the mesh's visual hull: a cell centre is occupied when the line through it
            hits the mesh along each of 13 directions (3 axes, 6 face and 4 body diagonals;
            exact lattice lines, each face marks the lines through its projection)
        --fit a region (at first every occupied cell)-->
            box, ellipsoid, cylinder and capsule (along each axis) in three frames: the geom
            axes, the body axes and the region's principal axes; each is scored by
                covered region cells / (region cells + covered empty cells)
            where occupied cells of other regions count neither way (their own proxies cover
            them anyway); the best starts (from the region's extent) are refined by a pattern
            search over centre and sizes
        --while a region scores below `split_below`, its error is larger than `tolerance`
          (scaled by the robot's size) and the mesh has fewer proxies than its cap:
            split the worst region by the plane (any frame, any axis, cell spacing) that
            leaves its halves closest to single primitives (covariance box volume minus
            volume), fit both halves; at the end, undo the splits whose halves together do
            worse than the single shape
        --> shapes in the geom frame --geom_pos, geom_quat--> `Primitive`s in the body frame

Why the visual hull rather than the solid: a hollow casing (Talos) or a shell with inner
walls (the H1 torso) has little solid inside, yet its silhouette is that of a filled shape; the
visual hull has the mesh's silhouette from every direction and fills such cavities, while
concave corners that are visible from some direction stay empty. It needs no closed or
consistently oriented surface, so broken meshes voxelize as well as clean ones.

Render cost grows with the proxies' projected bounding boxes, so the number of proxies per
mesh is capped in proportion to the mesh's size (`proxies_per_size`): 165-240 per robot.

Fits are cached: in the process and on disk, one small .npz file per mesh under
`<cache>/mesh_proxies/` (`<cache>` = `io_utils.cache_base()`: $NIL_JAX_CACHE, default
~/.cache/nil_jax), keyed by a hash of the vertices, faces, body axes, fit parameters and
`FORMAT_VERSION`. Files are written to a temporary name and renamed into place; an unreadable
file is ignored and the mesh fitted again.

Every visible mesh geom gets at least one proxy, labelled with that geom's id; a mesh thinner
than a cell gets a box around its vertices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile

import mujoco
import numpy as np
from scipy import ndimage

from nil_jax import io_utils
from nil_jax.reward.renderer import Primitive, SUPPORTED_TYPES, body_geoms, geom_primitives

_BOX, _ELLIPSOID, _CAPSULE, _CYLINDER = (
    int(mujoco.mjtGeom.mjGEOM_BOX), int(mujoco.mjtGeom.mjGEOM_ELLIPSOID),
    int(mujoco.mjtGeom.mjGEOM_CAPSULE), int(mujoco.mjtGeom.mjGEOM_CYLINDER),
)
_MESH = int(mujoco.mjtGeom.mjGEOM_MESH)
FORMAT_VERSION = 2  # bump when the fit changes, so that old cache files are not used
MARGIN = 3  # empty cells around the mesh and around each region's window
MAX_POINTS = 3000  # cells scored per region, about; see `_Window`
STARTS_REFINED = 3  # the best starting shapes of a region that the pattern search refines
ROUGH_POINTS = 600  # cells, about, on which the starting shapes are ranked
# Lines through every cell centre along these directions decide the visual hull.
HULL_DIRECTIONS = np.array([
    (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1),
    (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
])


@dataclasses.dataclass(frozen=True)
class FitParams:
    """What the fit of a mesh depends on besides the mesh itself (part of the cache key)."""

    robot_size: float = 1.0  # metres, the robot's longest side: the scale of the limits below
    resolution: int = 32  # cells along the mesh's longest side,
    cells_across: int = 12  # or finer, to have this many across its middle side (thin links),
    max_resolution: int = 64  # but at most this many along the longest side
    split_below: float = 0.96  # a region whose best shape scores less is split, if
    # its error (missed + spilled cells) spread over its surface is thicker than this times
    # robot_size (about a quarter pixel when the camera frames the whole robot),
    tolerance: float = 1 / 700
    min_cells: int = 16  # if it has at least this many cells,
    proxies_per_size: float = 64  # and if the mesh has fewer than this x its longest side /
    max_proxies: int = 32  # robot_size proxies (at least 2, at most max_proxies)


@dataclasses.dataclass(frozen=True)
class Grid:
    """Cubic cells: centre of cell (i, j, k) = origin + (i + 0.5, j + 0.5, k + 0.5) * cell."""

    origin: np.ndarray  # (3,) geom frame
    cell: float
    shape: tuple[int, int, int]

    def centres(self) -> np.ndarray:
        """(nx, ny, nz, 3) cell centres in the geom frame."""
        index = np.stack(np.indices(self.shape), -1)
        return self.origin + (index + 0.5) * self.cell


def mesh_grid(vertices: np.ndarray, params: FitParams = FitParams()) -> Grid:
    """A grid over the vertices' bounding box, `MARGIN` empty cells on every side."""
    low, high = vertices.min(0), vertices.max(0)
    smallest, middle, longest = np.sort(np.maximum(high - low, 1e-9))
    cell = max(min(longest / params.resolution, middle / params.cells_across),
               longest / params.max_resolution)
    shape = tuple(int(n) for n in np.ceil((high - low) / cell - 1e-9).clip(1) + 2 * MARGIN)
    # Shifted by a thousandth of a cell, so that the flat faces of meshes with round sizes do
    # not pass exactly through cell centres (such a centre would count as inside).
    origin = 0.5 * (low + high) - (0.5 * np.array(shape) + 1e-3) * cell
    return Grid(origin=origin, cell=cell, shape=shape)


# ----------------------------------------------------------------------------- voxelizer


def _plane_basis(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent integer vectors orthogonal to `direction`: a line's 2D key."""
    candidates = [c for c in (np.cross(direction, e) for e in np.eye(3, dtype=int)) if np.any(c)]
    first = candidates[0]
    second = next(c for c in candidates[1:] if np.any(np.cross(first, c)))
    return first, second


def line_hits(corners: np.ndarray, shape: tuple[int, int, int], direction: np.ndarray,
              cells: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """(N,) bool: does the line along `direction` through each of the cells hit a face?

    corners: (F, 3, 3) face corners in index units, where cell centres are the integer points;
    cells: (N, 3) cell indices. The lines along an integer direction through the cell centres
    are keyed by two integers (dot products with a basis of the orthogonal plane). Each face,
    projected to that plane, marks the keys inside it: its bounding box gives the candidate
    keys, barycentric signs decide.
    """
    basis = np.stack(_plane_basis(direction))  # (2, 3)
    grid_corners = np.stack(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij"), -1)
    key_corners = grid_corners.reshape(-1, 3) @ basis.T
    low, size = key_corners.min(0), np.ptp(key_corners, 0) + 1
    hit = np.zeros(size, bool)
    for s in range(0, len(corners), chunk):  # bounds memory for huge meshes
        u, v = (corners[s:s + chunk] @ b - lo for b, lo in zip(basis, low))  # (f, 3) each
        u0 = np.ceil(np.minimum(np.minimum(u[:, 0], u[:, 1]), u[:, 2])).clip(0).astype(int)
        u1 = np.floor(np.maximum(np.maximum(u[:, 0], u[:, 1]), u[:, 2])).clip(
            None, size[0] - 1).astype(int)
        v0 = np.ceil(np.minimum(np.minimum(v[:, 0], v[:, 1]), v[:, 2])).clip(0).astype(int)
        v1 = np.floor(np.maximum(np.maximum(v[:, 0], v[:, 1]), v[:, 2])).clip(
            None, size[1] - 1).astype(int)
        nu, nv = np.maximum(u1 - u0 + 1, 0), np.maximum(v1 - v0 + 1, 0)
        count = nu * nv
        # One (face, key) pair per candidate key in each face's bounding box.
        face = np.repeat(np.arange(len(u)), count)
        rank = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)
        ku, kv = u0[face] + rank // nv[face], v0[face] + rank % nv[face]
        x, y = u[face] - ku[:, None], v[face] - kv[:, None]  # corners relative to the line
        w = [x[:, i] * y[:, j] - x[:, j] * y[:, i] for i, j in ((1, 2), (2, 0), (0, 1))]
        # Non-strict: a line through an edge or a vertex hits (both neighbours say so).
        inside = (((w[0] >= 0) & (w[1] >= 0) & (w[2] >= 0))
                  | ((w[0] <= 0) & (w[1] <= 0) & (w[2] <= 0)))
        hit[ku[inside], kv[inside]] = True
    keys = cells @ basis.T - low
    return hit[keys[:, 0], keys[:, 1]]


def visual_hull(vertices: np.ndarray, faces: np.ndarray, grid: Grid) -> np.ndarray:
    """(nx, ny, nz) bool: cell centres whose lines along all `HULL_DIRECTIONS` hit the mesh."""
    corners = ((vertices - grid.origin) / grid.cell - 0.5)[faces]  # index units
    cells = np.argwhere(np.ones(grid.shape, bool))
    for direction in HULL_DIRECTIONS:  # each direction only tests the cells still in
        cells = cells[line_hits(corners, grid.shape, direction, cells)]
    occupied = np.zeros(grid.shape, bool)
    occupied[tuple(cells.T)] = True
    return occupied


# ----------------------------------------------------------------------------- shapes

# A shape is (kind, axis) with parameters [centre (3), sizes]: box and ellipsoid have 3 sizes
# (half-extents, semi-axes), cylinder and capsule along `axis` have (radius, half-length).
SHAPES = ((_BOX, 2), (_ELLIPSOID, 2)) + tuple((kind, axis) for kind in (_CYLINDER, _CAPSULE)
                                               for axis in range(3))


def _inside(kind: int, axis: int, params: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, N) occupancy of K parameter sets (K, 5 or 6) at points (N, 3) in the shape's frame."""
    z = [points[None, :, i] - params[:, i, None] for i in range(3)]  # (K, N) each
    if kind == _BOX:
        return ((np.abs(z[0]) <= params[:, 3, None]) & (np.abs(z[1]) <= params[:, 4, None])
                & (np.abs(z[2]) <= params[:, 5, None]))
    if kind == _ELLIPSOID:
        return sum((z[i] / params[:, 3 + i, None]) ** 2 for i in range(3)) <= 1
    u, v = (z[i] for i in range(3) if i != axis)
    radial = u * u + v * v
    radius2, half = params[:, 3, None] ** 2, params[:, 4, None]
    if kind == _CYLINDER:
        return (radial <= radius2) & (np.abs(z[axis]) <= half)
    beyond = np.maximum(np.abs(z[axis]) - half, 0.0)  # capsule: distance past the segment
    return radial + beyond * beyond <= radius2


def _initial_params(kind: int, axis: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Parameters from the region's extent [low, high] in the frame."""
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    if kind == _BOX:
        return np.concatenate([centre, half])
    if kind == _ELLIPSOID:
        return np.concatenate([centre, 1.2 * half])  # between inscribed (1) and enclosing (1.7)
    radius = np.sqrt(np.prod(np.delete(half, axis)))  # round cross-section of equal area
    length = half[axis] if kind == _CYLINDER else max(half[axis] - radius, 0.0)
    return np.concatenate([centre, [radius, length]])


@dataclasses.dataclass(frozen=True)
class _Window:
    """The cells a region's shapes are scored on: the region's own cells and the empty cells
    around it (occupied cells of other regions are free to cover, so they are left out).

    Cells next to the region's boundary, inside or out, all count with weight 1; the others
    (deep inside, far outside) are taken on a lattice of every `stride`-th cell with weight
    stride**3, so that a large region costs about MAX_POINTS cells without losing thin parts.
    A shape must stay within [low, high] (geom frame) so that every empty cell it covers is
    counted.
    """

    points: np.ndarray  # (N, 3) geom frame: region cells first, then empty cells
    weight: np.ndarray  # (N,)
    in_region: int  # the first `in_region` points are region cells
    surface: int  # region cells on the region's boundary
    low: np.ndarray  # (3,)
    high: np.ndarray  # (3,)


def _block(array: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """array[low:high] (3D), False beyond the array's bounds."""
    out = np.zeros(high - low, bool)
    start, stop = np.maximum(low, 0), np.minimum(high, array.shape)
    out[tuple(slice(a - lo, b - lo) for a, b, lo in zip(start, stop, low))] = \
        array[tuple(slice(a, b) for a, b in zip(start, stop))]
    return out


def _window(region: np.ndarray, occupied: np.ndarray, grid: Grid, pad: np.ndarray) -> _Window:
    """The window of a region, `pad` cells beyond its bounding box (beyond the grid is empty)."""
    index = np.argwhere(region)
    low, high = index.min(0) - pad, index.max(0) + pad + 1
    inner, empty = _block(region, low, high), ~_block(occupied, low, high)
    boundary = ((inner & ~ndimage.binary_erosion(inner))
                | (empty & ndimage.binary_dilation(inner)))
    rest = (inner | empty) & ~boundary
    budget = max(MAX_POINTS - np.count_nonzero(boundary), MAX_POINTS // 4)
    stride = max(1, int(np.round((np.count_nonzero(rest) / budget) ** (1 / 3))))
    sparse = np.zeros_like(rest)
    sparse[::stride, ::stride, ::stride] = True
    weight = np.where(boundary, 1.0, np.where(rest & sparse, float(stride) ** 3, 0.0))
    chosen = [np.argwhere(cells & (weight > 0)) for cells in (inner, empty)]
    return _Window(points=grid.origin + (np.concatenate(chosen) + low + 0.5) * grid.cell,
                   weight=np.concatenate([weight[tuple(c.T)] for c in chosen]),
                   in_region=len(chosen[0]), surface=int(np.count_nonzero(inner & boundary)),
                   low=grid.origin + low * grid.cell, high=grid.origin + high * grid.cell)


def _half_extents(kind: int, axis: int, params: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(K, 3) half-extents, along the geom axes, of shapes in `frame` (columns = axes)."""
    if kind == _BOX:
        return params[:, 3:6] @ np.abs(frame).T
    if kind == _ELLIPSOID:
        return np.sqrt(params[:, 3:6] ** 2 @ (frame ** 2).T)
    direction = np.abs(frame[:, axis])
    radius, half = params[:, 3:4], params[:, 4:5]
    if kind == _CYLINDER:
        return direction * half + radius * np.sqrt(np.maximum(1 - direction ** 2, 0))
    return direction * half + radius


class _Scorer:
    """Scores shapes in one frame: weighted region cells covered / (region cells + empty
    cells covered), an IoU that ignores other regions; a shape leaving the window scores -1."""

    def __init__(self, window: _Window, origin: np.ndarray, frame: np.ndarray, every: int = 1):
        """every: score on every n-th point only (a rough but cheap ranking)."""
        self.points = ((window.points[::every] - origin) @ frame).astype(np.float32)
        # Column 0 sums the covered region cells, column 1 the covered empty cells.
        region = np.arange(0, len(window.points), every) < window.in_region
        weight = window.weight[::every]
        self.weights = np.stack([np.where(region, weight, 0), np.where(region, 0, weight)],
                                -1).astype(np.float32)
        self.total = max(float(self.weights[:, 0].sum()), 1e-9)
        self.origin, self.frame = origin, frame
        self.window_centre = 0.5 * (window.low + window.high)
        self.window_half = 0.5 * (window.high - window.low)

    def __call__(self, kind: int, axis: int, params: np.ndarray) -> np.ndarray:
        inside = _inside(kind, axis, params.astype(np.float32), self.points)
        region, spilled = (inside.astype(np.float32) @ self.weights).T
        centre = self.origin + params[:, :3] @ self.frame.T - self.window_centre
        half = _half_extents(kind, axis, params, self.frame)
        fits = np.all(np.abs(centre) + half <= self.window_half, axis=1)
        return np.where(fits, region / (self.total + spilled), -1.0)


@dataclasses.dataclass
class _Search:
    """A pattern search over one shape's parameters: move one parameter by +-step at a time
    (the best of all such moves), halve the steps when no move helps."""

    score: _Scorer
    kind: int
    axis: int
    params: np.ndarray
    steps: np.ndarray
    value: float
    cell: float

    @classmethod
    def start(cls, score: _Scorer, kind: int, axis: int, params: np.ndarray,
              cell: float) -> "_Search":
        steps = np.concatenate([np.full(3, cell), 0.2 * params[3:] + 0.5 * cell])
        value = float(score(kind, axis, params[None])[0])
        return cls(score, kind, axis, params, steps, value, cell)

    def run(self, iterations: int) -> None:
        # Sizes stay above a quarter cell, except a capsule's segment (a sphere is fine).
        smallest = 0.0 if self.kind == _CAPSULE else 0.25 * self.cell
        for _ in range(iterations):
            if np.all(self.steps < 0.1 * self.cell):
                return
            trials = self.params + np.concatenate([np.diag(self.steps), -np.diag(self.steps)])
            trials[:, 3:] = np.maximum(trials[:, 3:], smallest)
            trials[:, 3] = np.maximum(trials[:, 3], 0.25 * self.cell)  # first size or radius
            scores = self.score(self.kind, self.axis, trials)
            i = int(np.argmax(scores))
            if scores[i] > self.value:
                self.value, self.params = float(scores[i]), trials[i]
            else:
                self.steps = 0.5 * self.steps


@dataclasses.dataclass(frozen=True)
class Shape:
    """A fitted shape in the geom frame; `rot` columns are the shape's axes (z along a
    cylinder or capsule)."""

    kind: int
    size: np.ndarray  # (3,) MuJoCo geom size
    centre: np.ndarray  # (3,)
    rot: np.ndarray  # (3, 3)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool for points (N, 3) in the geom frame."""
        sizes = self.size if self.kind in (_BOX, _ELLIPSOID) else self.size[:2]
        params = np.concatenate([np.zeros(3), sizes])[None]
        return _inside(self.kind, 2, params, (points - self.centre) @ self.rot)[0]


def _axis_to_z(axis: int) -> np.ndarray:
    """Rotation whose z column is coordinate axis `axis` (right-handed)."""
    return np.eye(3)[:, [(axis + 1) % 3, (axis + 2) % 3, axis]]


def _shape(kind: int, axis: int, params: np.ndarray, origin: np.ndarray,
           frame: np.ndarray) -> Shape:
    centre = origin + frame @ params[:3]
    if kind in (_BOX, _ELLIPSOID):
        return Shape(kind, params[3:6].copy(), centre, frame)
    rot = frame @ _axis_to_z(axis)
    return Shape(kind, np.array([params[3], max(params[4], 1e-6), 0.0]), centre, rot)


def _frames(points: np.ndarray, body_axes: np.ndarray) -> list[np.ndarray]:
    """Candidate shape frames (columns = axes, right-handed): geom, body, principal axes."""
    frames = [np.eye(3), body_axes]
    if len(points) >= 4:
        _, vectors = np.linalg.eigh(np.cov(points.T))
        vectors = vectors[:, ::-1]  # longest first
        if np.linalg.det(vectors) < 0:
            vectors[:, 2] *= -1
        frames.append(vectors)
    distinct = []
    for f in frames:  # the same axes (in any order, either sign) count once
        if not any(np.all(np.abs(f.T @ g).max(0) > 0.9999) for g in distinct):
            distinct.append(f)
    return distinct


@dataclasses.dataclass(eq=False)
class _Node:
    """A region with its best single shape; split nodes have two children."""

    region: np.ndarray  # (nx, ny, nz) bool
    shape: Shape
    window: _Window
    score: float
    error: float  # weighted missed + spilled cells of `shape`
    children: tuple["_Node", ...] = ()

    def leaves(self) -> list["_Node"]:
        return [leaf for c in self.children for leaf in c.leaves()] if self.children else [self]


def _union_error(shapes: list[Shape], window: _Window) -> tuple[float, float]:
    """(score, error) of the union of shapes on a window."""
    covered = np.any([s.contains(window.points) for s in shapes], axis=0) * window.weight
    region, total = covered[:window.in_region].sum(), window.weight[:window.in_region].sum()
    spilled = covered[window.in_region:].sum()
    return region / (total + spilled), total - region + spilled


def _fit_region(region: np.ndarray, occupied: np.ndarray, grid: Grid, body_axes: np.ndarray,
                keep: int = STARTS_REFINED) -> _Node:
    """The best single shape for a region."""
    index = np.argwhere(region)
    target = grid.origin + (index + 0.5) * grid.cell
    window = _window(region, occupied, grid, pad=MARGIN + (0.25 * np.ptp(index, 0)).astype(int))
    origin = target.mean(0)
    starts = []
    every = max(1, len(window.points) // ROUGH_POINTS)
    for frame in _frames(target, body_axes):
        local = (target - origin) @ frame
        low, high = local.min(0) - 0.5 * grid.cell, local.max(0) + 0.5 * grid.cell
        score, rough = _Scorer(window, origin, frame), _Scorer(window, origin, frame, every)
        for kind, axis in SHAPES:
            params = _initial_params(kind, axis, low, high)
            starts.append((float(rough(kind, axis, params[None])[0]), kind, axis, params,
                           score))
    # Successive halving: the best starts take a few steps each, the leader runs to the end.
    starts.sort(key=lambda start: -start[0])
    searches = [_Search.start(score, kind, axis, params, grid.cell)
                for _, kind, axis, params, score in starts[:keep]]
    for search in searches:
        search.run(6)
    search = max(searches, key=lambda s: s.value)
    search.run(40)
    shape = _shape(search.kind, search.axis, search.params, origin, search.score.frame)
    value, error = _union_error([shape], window)
    return _Node(region, shape, window, value, error)


def _excess_volumes(count: np.ndarray, total: np.ndarray, outer: np.ndarray,
                    cell: float) -> np.ndarray:
    """How far parts are from any single primitive, from their moments (count, sum of
    positions, sum of outer products): the volume of the box with the same covariance minus
    the part's own volume (about 0 for a box, cylinder or ellipsoid; large for an L, a bent
    bar or two separate pieces)."""
    mean = total / count[:, None]
    covariance = outer / count[:, None, None] - mean[:, :, None] * mean[:, None, :]
    variance = np.linalg.eigvalsh(covariance).clip(0)
    # A row of n cells has variance (n^2 - 1) cell^2 / 12: its box side is n cells.
    box = np.prod(np.sqrt(12 * variance + cell ** 2), axis=1)
    return np.maximum(box - count * cell ** 3, 0.0)


def _split(region: np.ndarray, grid: Grid,
           body_axes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Two halves of a region: the cut (in any frame, across any axis, at cell spacing) that
    leaves the least excess volume in the halves; None when no cut is possible."""
    index = np.argwhere(region)
    points = grid.origin + (index + 0.5) * grid.cell
    points = points - points.mean(0)
    outer = points[:, :, None] * points[:, None, :]
    best = None
    for frame in _frames(points, body_axes):
        for axis in range(3):
            along = points @ frame[:, axis]
            slab = np.floor((along - along.min()) / grid.cell + 0.5).astype(int)
            slabs = slab.max() + 1
            if slabs < 2:
                continue
            # Moments of slabs [0, c) for every cut c, by cumulative sums over slabs.
            count = np.cumsum(np.bincount(slab, minlength=slabs))[:-1].astype(float)
            total = np.cumsum(np.stack([np.bincount(slab, points[:, i], slabs)
                                        for i in range(3)], -1), 0)[:-1]
            outer_sum = np.cumsum(np.stack([np.bincount(slab, outer[:, i, j], slabs)
                                            for i in range(3) for j in range(3)], -1),
                                  0)[:-1].reshape(-1, 3, 3)
            valid = (count > 0) & (count < len(points))
            if not valid.any():
                continue
            count, total, outer_sum = count[valid], total[valid], outer_sum[valid]
            cost = (_excess_volumes(count, total, outer_sum, grid.cell)
                    + _excess_volumes(len(points) - count, points.sum(0) - total,
                                      outer.sum(0) - outer_sum, grid.cell))
            c = int(np.argmin(cost))
            if best is None or cost[c] < best[0]:
                best = (cost[c], slab < np.flatnonzero(valid)[c] + 1)
    if best is None:
        return None
    lower = np.zeros_like(region)
    lower[tuple(index[best[1]].T)] = True
    return lower, region & ~lower


def _collapse(node: _Node) -> None:
    """Bottom-up: a split whose leaves do worse than the node's own shape is undone."""
    for child in node.children:
        _collapse(child)
    if node.children:
        leaves = [leaf.shape for leaf in node.leaves()]
        # The children's windows lie within the node's (its pad grows with the extent).
        if _union_error(leaves, node.window)[1] >= node.error:
            node.children = ()


def _fit(occupied: np.ndarray, grid: Grid, body_axes: np.ndarray, params: FitParams,
         max_proxies: int) -> list[Shape]:
    """Shapes covering the occupied cells: split the worst region until every region is good
    enough (or too small to split) or there are `max_proxies`, then undo splits that did not
    help."""
    root = _fit_region(occupied, occupied, grid, body_axes)
    tolerance = params.tolerance * params.robot_size
    unsplittable = set()
    while len(leaves := root.leaves()) < max_proxies:
        candidates = [leaf for leaf in leaves if id(leaf) not in unsplittable
                      and leaf.score < params.split_below
                      and leaf.error * grid.cell / max(leaf.window.surface, 1) > tolerance
                      and np.count_nonzero(leaf.region) >= params.min_cells]
        if not candidates:
            break
        worst = max(candidates, key=lambda leaf: leaf.error)
        halves = _split(worst.region, grid, body_axes)
        if halves is None:
            unsplittable.add(id(worst))
            continue
        worst.children = tuple(_fit_region(h, occupied, grid, body_axes) for h in halves)
    _collapse(root)
    return [leaf.shape for leaf in root.leaves()]


# ----------------------------------------------------------------------------- one mesh


def fit_mesh(vertices: np.ndarray, faces: np.ndarray, body_axes: np.ndarray = np.eye(3),
             params: FitParams = FitParams()) -> list[Shape]:
    """Proxies for a mesh, in the geom frame (where its vertices are); never empty.

    body_axes: the body frame's axes in the geom frame (columns), one of the fitting frames.
    """
    grid = mesh_grid(vertices, params)
    occupied = visual_hull(vertices, faces, grid)
    low, high = vertices.min(0), vertices.max(0)
    if not occupied.any():  # thinner than a cell: a box around the vertices
        return [Shape(_BOX, np.maximum(0.5 * (high - low), 0.25 * grid.cell), 0.5 * (low + high),
                      np.eye(3))]
    cap = np.ceil(params.proxies_per_size * np.max(high - low) / params.robot_size)
    return _fit(occupied, grid, body_axes, params, int(np.clip(cap, 2, params.max_proxies)))


# ----------------------------------------------------------------------------- caches

_FITS: dict[str, list[Shape]] = {}  # in-process, by cache key


def cache_folder() -> pathlib.Path:
    """`<cache>/mesh_proxies`, beside the robot files of `envs.assets`."""
    return io_utils.cache_base() / "mesh_proxies"


def cache_key(vertices: np.ndarray, faces: np.ndarray, body_axes: np.ndarray,
              params: FitParams) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT_VERSION} {params}".encode())
    for array in (vertices, faces, body_axes):
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype} {array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _save(path: pathlib.Path, shapes: list[Shape]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent, prefix=f".{path.stem}.")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, kind=np.array([s.kind for s in shapes]),
                     size=np.stack([s.size for s in shapes]),
                     centre=np.stack([s.centre for s in shapes]),
                     rot=np.stack([s.rot for s in shapes]))
        io_utils.publish(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load(path: pathlib.Path) -> list[Shape] | None:
    """The shapes in a cache file; None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            kind, size, centre, rot = f["kind"], f["size"], f["centre"], f["rot"]
        if not (len(kind) >= 1 and size.shape == centre.shape == (len(kind), 3)
                and rot.shape == (len(kind), 3, 3) and np.all(np.isfinite(size))
                and all(int(k) in SUPPORTED_TYPES for k in kind)):
            return None
        return [Shape(int(k), s, c, r) for k, s, c, r in zip(kind, size, centre, rot)]
    except Exception:  # missing, truncated, not a zip, wrong fields: fit again
        return None


def cached_fit(vertices: np.ndarray, faces: np.ndarray, body_axes: np.ndarray,
               params: FitParams = FitParams(), use_disk: bool = True) -> list[Shape]:
    """`fit_mesh`, through the in-process cache and the disk cache."""
    key = cache_key(vertices, faces, body_axes, params)
    if key in _FITS:
        return _FITS[key]
    path = cache_folder() / f"{key}.npz"
    shapes = _load(path) if use_disk else None
    if shapes is None:
        shapes = fit_mesh(vertices, faces, body_axes, params)
        if use_disk:
            try:
                _save(path, shapes)
            except OSError:  # a read-only cache only costs the next process a refit
                pass
    _FITS[key] = shapes
    return shapes


# ----------------------------------------------------------------------------- model level


def robot_size(model: mujoco.MjModel) -> float:
    """The longest side of the box around the robot's visible geoms at qpos0 (metres)."""
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    geoms = body_geoms(model)
    radius = model.geom_rbound[geoms][:, None]
    low = np.min(data.geom_xpos[geoms] - radius, axis=0)
    high = np.max(data.geom_xpos[geoms] + radius, axis=0)
    return float(np.max(high - low))


def fit_params(model: mujoco.MjModel) -> FitParams:
    """Fit parameters for a robot: tolerances scale with its size (rounded, for the key)."""
    return FitParams(robot_size=round(robot_size(model), 3))


def mesh_primitives(model: mujoco.MjModel, geom: int, params: FitParams | None = None,
                    use_disk_cache: bool = True) -> list[Primitive]:
    """Proxies for one mesh geom, in its body's frame, labelled with the geom id.

    params: by default `fit_params(model)`.
    """
    params = fit_params(model) if params is None else params
    if model.geom_type[geom] != _MESH:
        raise ValueError(f"Geom {geom} has type {int(model.geom_type[geom])}, not a mesh.")
    mesh = model.geom_dataid[geom]
    start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
    vertices = model.mesh_vert[start:start + count].astype(np.float64)
    start, count = model.mesh_faceadr[mesh], model.mesh_facenum[mesh]
    faces = model.mesh_face[start:start + count].astype(np.int64)
    geom_rot = np.zeros(9)
    mujoco.mju_quat2Mat(geom_rot, model.geom_quat[geom])
    geom_rot = geom_rot.reshape(3, 3)  # body frame <- geom frame
    # Body axes in the geom frame: CAD parts are often box-like along them.
    shapes = cached_fit(vertices, faces, geom_rot.T, params, use_disk_cache)
    return [Primitive(body=int(model.geom_bodyid[geom]), kind=s.kind, size=s.size.copy(),
                      pos=model.geom_pos[geom] + geom_rot @ s.centre, rot=geom_rot @ s.rot,
                      label=int(geom))
            for s in shapes]


_MODELS: dict[int, tuple[mujoco.MjModel, tuple[Primitive, ...]]] = {}


def body_primitives(model: mujoco.MjModel) -> tuple[Primitive, ...]:
    """Primitives for every visible body geom: primitives as they are, meshes as proxies.

    Fitted once per model object and kept for the life of the process (and per mesh on disk).
    """
    cached = _MODELS.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    primitives, params = [], fit_params(model)
    for g in body_geoms(model):
        if model.geom_type[g] in SUPPORTED_TYPES:
            primitives += geom_primitives(model, [g])
        elif model.geom_type[g] == _MESH:
            primitives += mesh_primitives(model, g, params)
        else:
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or f"#{g}"
            raise ValueError(f"Geom {name} has type {int(model.geom_type[g])}, which neither "
                             "the silhouette renderer nor the mesh proxies support.")
    _MODELS[id(model)] = (model, tuple(primitives))
    return _MODELS[id(model)][1]
