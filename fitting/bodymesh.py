"""Procedural stand-in for the SMPL template mesh (the real SMPL files are licence-gated).

The body is an implicit surface (a smooth union of round cones, ellipsoids and rounded boxes laid
around the 24 SMPL-order joint centres of `JOINTS`) in SMPL's frame and T-pose: metres, y up, the
body faces +z and the subject's left is +x. Only the left half (x >= 0) is meshed, by marching cubes
on a grid whose first x plane is x = 0; the cut through the x = 0 plane is where the half meshes
are stitched after mirroring, so positions *and* connectivity are exactly mirror symmetric. The half
mesh is decimated by edge collapses (midline vertices stay on x = 0), with edge flips and
tangential smoothing between batches to keep triangles well shaped, until the stitched mesh has
SMPL's 6890 vertices; a closed genus-0 triangle surface then has 2 * 6890 - 4 = 13776 faces.
Finally vertex ids are permuted so the landmark ids hard-coded across SMPL-based code (nose 332,
eyes, ears, toes, heels, fingertips, head/hand/chest scaling points) sit at the matching body spots.

The build is deterministic; `seed` is reserved and currently changes nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from skimage.measure import marching_cubes

__all__ = [
    "JOINTS",
    "JOINT_NAMES",
    "NUM_FACES",
    "NUM_VERTICES",
    "BodyMesh",
    "body_field",
    "build_body_mesh",
]

NUM_VERTICES = 6890
NUM_FACES = 13776

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip

# SMPL-order joint centres (metres) the body is built around; mirror symmetric about x = 0.
JOINTS = np.array(
    [
        [0.00, -0.22, 0.02], [0.07, -0.31, 0.01], [-0.07, -0.31, 0.01], [0.00, -0.11, -0.01],
        [0.10, -0.70, 0.01], [-0.10, -0.70, 0.01], [0.00, 0.02, 0.00], [0.09, -1.10, -0.03],
        [-0.09, -1.10, -0.03], [0.00, 0.07, 0.02], [0.11, -1.15, 0.09], [-0.11, -1.15, 0.09],
        [0.00, 0.29, -0.01], [0.08, 0.20, 0.00], [-0.08, 0.20, 0.00], [0.00, 0.36, 0.04],
        [0.17, 0.23, -0.01], [-0.17, 0.23, -0.01], [0.43, 0.22, -0.03], [-0.43, 0.22, -0.03],
        [0.69, 0.22, -0.03], [-0.69, 0.22, -0.03], [0.77, 0.21, -0.04], [-0.77, 0.21, -0.04],
    ],
    dtype=np.float64,
)  # fmt: skip
JOINTS.setflags(write=False)

_NOSE_TIP = 332  # the most +z midline vertex of the head

# Other landmark ids on the midline (x == 0) -> target spot (metres); the nearest vertex gets it.
_MIDLINE_LANDMARKS: dict[int, tuple[float, float, float]] = {
    410: (0.0, 0.455, 0.12),  # forehead
    384: (0.0, 0.405, -0.09),  # back of head
    414: (0.0, 0.51, 0.02),  # top of head
    3027: (0.0, 0.10, 0.13),  # sternum, front of chest
    3495: (0.0, 0.12, -0.13),  # back of chest, upper
    3506: (0.0, 0.09, -0.13),  # back of chest, 3 cm lower
}

# (left id, right id, target spot of the left one). A left id of None gets a free id.
_PAIRED_LANDMARKS: tuple[tuple[int | None, int, tuple[float, float, float]], ...] = (
    (2800, 6260, (0.033, 0.415, 0.108)),  # eyes
    (583, 4071, (0.095, 0.39, 0.0)),  # ears
    (196, 3708, (0.09, 0.435, 0.02)),  # sides of the head (head width)
    (3216, 6617, (0.075, -1.18, 0.19)),  # big toes: tip, medial
    (3226, 6624, (0.14, -1.19, 0.17)),  # small toes: tip, lateral
    (3387, 6787, (0.09, -1.21, -0.09)),  # heels: back, bottom
    (2746, 6191, (0.80, 0.205, 0.06)),  # thumb tips (+z, front)
    (2319, 5782, (0.88, 0.21, -0.01)),  # index tips
    (2445, 5905, (0.89, 0.21, -0.03)),  # middle tips
    (2556, 6016, (0.88, 0.21, -0.05)),  # ring tips
    (2673, 6133, (0.86, 0.21, -0.075)),  # pinky tips (-z, back)
    (None, 6179, (0.76, 0.25, -0.035)),  # top of the right hand (back of hand)
    (None, 6137, (0.76, 0.17, -0.035)),  # bottom of the right hand (palm)
    (None, 5670, (0.69, 0.26, -0.03)),  # right wrist
    (None, 5906, (0.85, 0.24, -0.04)),  # near the right hand's tip
)

_GRID_STEP = 0.01  # marching-cubes cell (m); about 4x SMPL's vertex count before decimation
_HALF_BOX = ((0.0, 0.93), (-1.25, 0.55), (-0.18, 0.23))  # x, y, z ranges of the half grid (m)


@dataclass(frozen=True)
class BodyMesh:
    """Closed genus-0 T-pose body mesh with SMPL's vertex/face counts and landmark ids.

    verts: (6890, 3) float64 metres; faces: (13776, 3) int64, counter-clockwise seen from outside;
    mirror: (6890,) int64 with verts[mirror] == verts * [-1, 1, 1]; joints: (24, 3) float64.
    """

    verts: np.ndarray
    faces: np.ndarray
    mirror: np.ndarray
    joints: np.ndarray


# ----------------------------------------------------------------------------------------------
# Signed-distance primitives (negative inside). p: (N, 3) metres -> (N,) metres.


def _sd_round_cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    """Approximate distance to a capsule from a to b whose radius goes linearly ra -> rb."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - (ra + t * (rb - ra))


def _sd_ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate (first-order corrected) distance to an axis-aligned ellipsoid."""
    q = p - np.asarray(centre, float)
    r = np.asarray(radii, float)
    k0 = np.linalg.norm(q / r, axis=1)
    k1 = np.maximum(np.linalg.norm(q / (r * r), axis=1), 1e-12)
    return k0 * (k0 - 1.0) / k1


def _sd_round_box(p: np.ndarray, centre, half, radius: float) -> np.ndarray:
    """Exact distance to an axis-aligned box of half extents `half` grown by `radius`."""
    q = np.abs(p - np.asarray(centre, float)) - np.asarray(half, float)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    return outside + np.minimum(q.max(axis=1), 0.0) - radius


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a blend of width k (metres) instead of a crease."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


# Body parts as (kind, params, blend width). Midline parts are symmetric themselves; "left" parts
# are also evaluated at the mirrored point where they could reach x < 0 (the thighs).
_MIDLINE_PARTS = (
    ("ellipsoid", ((0.0, -0.25, 0.0), (0.155, 0.115, 0.11)), 0.0),  # pelvis and buttocks
    ("ellipsoid", ((0.0, -0.08, 0.005), (0.14, 0.16, 0.10)), 0.06),  # abdomen
    ("ellipsoid", ((0.0, 0.10, 0.0), (0.16, 0.15, 0.115)), 0.06),  # rib cage
    ("cone", ((-0.13, 0.215, -0.012), (0.13, 0.215, -0.012), 0.055, 0.055), 0.05),  # shoulders
    ("cone", ((0.0, 0.20, -0.015), (0.0, 0.36, 0.0), 0.055, 0.05), 0.03),  # neck
    ("ellipsoid", ((0.0, 0.405, 0.02), (0.08, 0.098, 0.097)), 0.03),  # skull
    ("ellipsoid", ((0.0, 0.345, 0.045), (0.058, 0.045, 0.065)), 0.03),  # jaw and chin
    ("cone", ((0.0, 0.405, 0.105), (0.0, 0.377, 0.131), 0.013, 0.011), 0.012),  # nose
)
_LEFT_PARTS = (
    ("ellipsoid", ((0.082, 0.393, 0.0), (0.014, 0.028, 0.018)), 0.01),  # ear
    ("ellipsoid", ((0.16, 0.235, -0.012), (0.075, 0.06, 0.062)), 0.05),  # deltoid
    ("cone", ((0.13, 0.225, -0.012), (0.43, 0.22, -0.03), 0.052, 0.04), 0.03),  # upper arm
    ("cone", ((0.43, 0.22, -0.03), (0.69, 0.22, -0.03), 0.04, 0.028), 0.02),  # forearm
    ("box", ((0.755, 0.213, -0.037), (0.05, 0.006, 0.033), 0.011), 0.02),  # palm
    ("box", ((0.84, 0.211, -0.037), (0.03, 0.004, 0.028), 0.008), 0.015),  # fingers
    ("cone", ((0.73, 0.207, -0.005), (0.795, 0.207, 0.04), 0.012, 0.009), 0.012),  # thumb
    ("cone", ((0.10, -0.80, -0.02), (0.095, -0.95, -0.03), 0.048, 0.038), 0.04),  # calf
    ("cone", ((0.10, -0.70, 0.01), (0.09, -1.10, -0.03), 0.046, 0.032), 0.02),  # shin
    ("ellipsoid", ((0.09, -1.165, -0.045), (0.035, 0.038, 0.038)), 0.03),  # heel
    ("box", ((0.10, -1.17, 0.04), (0.02, 0.012, 0.09), 0.022), 0.03),  # foot
    ("box", ((0.107, -1.183, 0.125), (0.025, 0.005, 0.04), 0.017), 0.02),  # forefoot and toes
)
_CROSSING_PARTS = (
    ("cone", ((0.07, -0.28, 0.01), (0.10, -0.70, 0.01), 0.08, 0.048), 0.05),  # thigh
)


def _sd_part(p: np.ndarray, kind: str, params) -> np.ndarray:
    """Distance (N,) from points p (N, 3) to one body part."""
    if kind == "cone":
        return _sd_round_cone(p, *params)
    if kind == "ellipsoid":
        return _sd_ellipsoid(p, *params)
    return _sd_round_box(p, *params)


def body_field(points: np.ndarray) -> np.ndarray:
    """Signed distance-like body field (N,) in metres at points (N, 3): negative inside the body."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    # Left limbs see |x| so the right limbs come for free; the thighs reach past x = 0, so they are
    # also evaluated at the mirrored point to blend the two legs smoothly at the crotch.
    px = np.column_stack([np.abs(p[:, 0]), p[:, 1:]])
    mx = px * np.array([-1.0, 1.0, 1.0])
    d = None
    for kind, params, k in _MIDLINE_PARTS:
        di = _sd_part(p, kind, params)
        d = di if d is None else _smooth_min(d, di, k)
    for kind, params, k in _LEFT_PARTS:
        d = _smooth_min(d, _sd_part(px, kind, params), k)
    for kind, params, k in _CROSSING_PARTS:
        d = _smooth_min(d, _sd_part(px, kind, params), k)
        d = _smooth_min(d, _sd_part(mx, kind, params), k)
    return d


def _project_to_surface(p: np.ndarray, steps: int = 2) -> np.ndarray:
    """Newton-project points (N, 3) onto the zero level of `body_field`; returns (N, 3) metres."""
    eps = 1e-4
    stencil = np.concatenate([np.zeros((1, 3)), np.eye(3) * eps, -np.eye(3) * eps])
    for _ in range(steps):
        # One field call for value and central-difference gradient: the call overhead dominates.
        f = body_field((p[None] + stencil[:, None]).reshape(-1, 3)).reshape(7, -1)
        grad = (f[1:4] - f[4:7]).T / (2 * eps)
        g2 = np.maximum((grad * grad).sum(axis=1), 1e-6)
        p = p - (f[0] / g2)[:, None] * grad
    return p


# ----------------------------------------------------------------------------------------------
# Half mesh by marching cubes.


def _sample_field(axes: list[np.ndarray], coarse: int = 3) -> np.ndarray:
    """Field on the grid axes[0] x axes[1] x axes[2] (metres) -> (nx, ny, nz) values.

    Only nodes near the surface get exact values; elsewhere the nearest node of a grid `coarse`
    times coarser stands in, which has the right sign because the field grows at most about as
    fast as the distance (marching cubes needs exact values only next to the surface).
    """
    shape = tuple(len(ax) for ax in axes)
    coarse_axes = [ax[::coarse] for ax in axes]
    coarse_grid = np.stack(np.meshgrid(*coarse_axes, indexing="ij"), axis=-1)
    coarse_values = body_field(coarse_grid.reshape(-1, 3)).reshape(coarse_grid.shape[:3])
    nearest = [
        np.minimum((np.arange(s) + coarse // 2) // coarse, len(c) - 1)
        for s, c in zip(shape, coarse_axes)
    ]
    values = coarse_values[np.ix_(*nearest)]
    spacing = max(float(ax[1] - ax[0]) for ax in axes) * coarse
    near = np.abs(values) < 1.5 * spacing
    idx = np.nonzero(near)
    points = np.column_stack([ax[i] for ax, i in zip(axes, idx)])
    values[idx] = body_field(points)
    return values


def _half_grid_mesh(step: float = _GRID_STEP) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the field on x >= 0: verts (n, 3) metres, faces (m, 3); open at x = 0."""
    axes = [np.arange(lo, hi + step / 2, step) for lo, hi in _HALF_BOX]
    axes[0] = np.arange(len(axes[0])) * step  # first plane exactly x = 0: the stitching plane
    values = _sample_field(axes)
    # Keep grid values off the iso level so no vertex lands on (or next to) a grid node: that would
    # merge vertices of different cube edges and create slivers / duplicate vertices.
    margin = 0.1 * step
    near = np.abs(values) < margin
    values[near] = np.where(values[near] < 0, -margin, margin)
    verts, faces, _, _ = marching_cubes(
        values, level=0.0, spacing=(step, step, step), gradient_direction="ascent"
    )
    verts = verts + np.array([0.0, axes[1][0], axes[2][0]])  # x = 0 plane stays exactly 0.0
    return verts.astype(np.float64), faces.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Decimation of the half mesh. Midline (x == 0) vertices form the open boundary; they may only
# move along the midline, and no edge may join two of them through the inside of the half mesh,
# or its mirror copy would be a fourth face on one edge after stitching.


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (k, 2), lower id first, and how many faces (k,) use each."""
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    base = int(faces.max()) + 1
    key = np.minimum(e[:, 0], e[:, 1]) * base + np.maximum(e[:, 0], e[:, 1])
    keys, counts = np.unique(key, return_counts=True)
    return np.stack([keys // base, keys % base], axis=1), counts


def _adjacency(edges: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    """Symmetric 0/1 vertex adjacency (n, n) of the undirected edges (k, 2)."""
    ij = np.concatenate([edges, edges[:, ::-1]])
    data = np.ones(len(ij), dtype=np.int32)
    return scipy.sparse.csr_matrix((data, (ij[:, 0], ij[:, 1])), shape=(n, n))


def _detail_scale(p: np.ndarray) -> np.ndarray:
    """Relative target edge length (N,) at points (N, 3): < 1 where SMPL is dense (face, hands)."""
    px = np.column_stack([np.abs(p[:, 0]), p[:, 1:]])
    scale = np.ones(len(p))
    for centre, radius, value in (
        ((0.0, 0.39, 0.10), 0.07, 0.45),  # face
        ((0.0, 0.42, 0.0), 0.12, 0.7),  # rest of the head
        ((0.80, 0.21, -0.03), 0.09, 0.5),  # hands
        ((0.11, -1.17, 0.06), 0.13, 0.7),  # feet
    ):
        d2 = ((px - np.array(centre)) ** 2).sum(axis=1)
        scale = np.minimum(scale, 1.0 - (1.0 - value) * np.exp(-d2 / (radius * radius)))
    return scale


def _triangle_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (m, 3) = twice the area times the unit normal."""
    v = verts[faces]
    return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])


def _triangle_quality(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Shape quality (m,) in [0, 1]: 1 for equilateral, 0 for degenerate triangles."""
    v = verts[faces]
    area2 = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    l2 = ((v - np.roll(v, 1, axis=1)) ** 2).sum(axis=(1, 2))
    return 2.0 * np.sqrt(3.0) * area2 / np.maximum(l2, 1e-30)


def _full_count(is_mid: np.ndarray) -> int:
    """Vertex count of the stitched mesh for a half mesh with midline flags is_mid (n,)."""
    return int(2 * len(is_mid) - is_mid.sum())


_ROUNDS = 6  # selection rounds per batch: later rounds retry around rejected collapses


def _independent(cand: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Subset of the cost-ordered candidate edge ids `cand` with pairwise disjoint closed 1-rings.

    An edge is taken when it has the lowest rank within the closed 1-rings of its ends, so no two
    taken collapses share a face or a neighbour. a, b: (k,) ends of all edges; n: vertex count.
    """
    big = np.iinfo(np.int64).max
    rank = np.full(len(a), big)
    rank[cand] = np.arange(len(cand))
    m1 = np.full(n, big)
    np.minimum.at(m1, a[cand], rank[cand])
    np.minimum.at(m1, b[cand], rank[cand])
    m2 = m1.copy()
    np.minimum.at(m2, a, m1[b])
    np.minimum.at(m2, b, m1[a])
    return cand[rank[cand] == np.minimum(m2[a[cand]], m2[b[cand]])]


def _plan_collapses(verts, faces, adj, ta, tb, along_midline, mixed):
    """Survivor (c,), removed (c,), new survivor position (c, 3) and validity (c,) of collapses.

    ta, tb: (c,) edge ends; along_midline / mixed: (c,) edge kinds (else both ends are inner).
    """
    is_mid = verts[:, 0] == 0.0
    common = np.asarray(adj[ta].multiply(adj[tb]).sum(axis=1)).ravel()
    ok = np.where(along_midline, common == 1, common == 2)  # link condition
    # A mixed collapse merges the inner vertex into the midline one; the inner vertex's midline
    # neighbours must already neighbour that midline vertex, else a new edge would join two
    # midline vertices through the inside of the half mesh.
    keep = np.where(is_mid[ta], ta, tb)
    gone = np.where(is_mid[ta], tb, ta)
    mid_col = is_mid.astype(np.int32)
    nb_mid = adj[gone] @ mid_col
    common_mid = adj[gone].multiply(adj[keep]) @ mid_col
    ok &= ~mixed | (np.asarray(nb_mid).ravel() - np.asarray(common_mid).ravel() == 1)

    survivor = np.where(mixed, keep, ta)
    removed = np.where(mixed, gone, tb)
    new_pos = _project_to_surface(0.5 * (verts[ta] + verts[tb]))
    new_pos[along_midline, 0] = 0.0
    new_pos[mixed] = verts[keep[mixed]]
    ok &= along_midline | mixed | (new_pos[:, 0] > 1e-4)  # an inner vertex stays off the midline
    ok = _geometry_ok(verts, faces, survivor, removed, new_pos, ok)
    return survivor, removed, new_pos, ok


def _geometry_ok(verts, faces, survivor, removed, new_pos, ok) -> np.ndarray:
    """Refine the (c,) mask `ok` of collapses removed->survivor by the shapes of the changed faces.

    A collapse is refused if a face around it flips or shrinks to nothing, or if its worst triangle
    gets worse than both 0.3 and the worst triangle it replaces (so slivers may still improve).
    """
    n = len(verts)
    idx = np.flatnonzero(ok)
    owner = np.full(n, -1)
    owner[survivor[idx]] = idx
    owner[removed[idx]] = idx
    face_owner = owner[faces].max(axis=1)  # collapses are independent: one owner at most
    touched = np.flatnonzero(face_owner >= 0)
    face_owner = face_owner[touched]
    vmap = np.arange(n)
    vmap[removed[idx]] = survivor[idx]
    moved = verts.copy()
    moved[survivor[idx]] = new_pos[idx]
    f_old, f_new = faces[touched], vmap[faces[touched]]
    alive = _non_degenerate(f_new)
    n_old = _triangle_normals(verts, f_old)
    n_new = _triangle_normals(moved, f_new)
    len_old, len_new = np.linalg.norm(n_old, axis=1), np.linalg.norm(n_new, axis=1)
    cos = (n_old * n_new).sum(axis=1) / np.maximum(len_old * len_new, 1e-30)
    q_old = _triangle_quality(verts, f_old)
    q_new = np.where(alive, _triangle_quality(moved, f_new), np.inf)
    worst_old = np.full(len(ok), np.inf)
    worst_new = np.full(len(ok), np.inf)
    np.minimum.at(worst_old, face_owner, q_old)
    np.minimum.at(worst_new, face_owner, q_new)
    bad = alive & ((cos < 0.5) | (0.5 * len_new < 1e-8))
    ok = ok & (worst_new >= np.minimum(worst_old, 0.2))
    ok[face_owner[bad]] = False
    return ok


def _collapse_batch(
    verts: np.ndarray, faces: np.ndarray, excess: int, window: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch of independent edge collapses removing at most `excess` stitched-mesh vertices.

    verts (n, 3), faces (m, 3) half mesh; considers the `window` cheapest candidate edges.
    Returns the new verts, faces and how many stitched-mesh vertices were removed.
    """
    n = len(verts)
    is_mid = verts[:, 0] == 0.0
    edges, counts = _edges(faces)
    a, b = edges[:, 0], edges[:, 1]
    # Midline edge (both ends on x = 0, on the boundary): collapses along the midline, costs 1.
    # Mixed edge: the inner end merges into the midline end. Inner edge: merges at the midpoint.
    along_midline = is_mid[a] & is_mid[b] & (counts == 1)
    mixed = (is_mid[a] ^ is_mid[b]) & (counts == 2)
    inner = ~is_mid[a] & ~is_mid[b] & (counts == 2)
    allowed = (along_midline | mixed | inner) if excess >= 2 else along_midline
    cand = np.flatnonzero(allowed)
    mids = 0.5 * (verts[a[cand]] + verts[b[cand]])
    cost = np.linalg.norm(verts[a[cand]] - verts[b[cand]], axis=1) / _detail_scale(mids)
    cand = cand[np.lexsort((cand, cost))[:window]]  # tie-break on edge id: deterministic
    adj = _adjacency(edges, n)

    locked = np.zeros(n, dtype=bool)
    budget = excess
    plans = []
    for _ in range(_ROUNDS):
        cand = cand[~locked[a[cand]] & ~locked[b[cand]]]
        if len(cand) == 0 or budget <= 0:
            break
        take = _independent(cand, a, b, n)
        ta, tb = a[take], b[take]
        survivor, removed, new_pos, ok = _plan_collapses(
            verts, faces, adj, ta, tb, along_midline[take], mixed[take]
        )
        price = np.where(along_midline[take], 1, 2)
        ok &= np.cumsum(np.where(ok, price, 0)) <= budget  # `take` is in ascending cost order
        budget -= int(price[ok].sum())
        plans.append((survivor[ok], removed[ok], new_pos[ok]))
        # Later rounds must stay out of the closed 1-rings of accepted collapses (their local
        # connectivity is about to change) and skip the refused edges.
        ends = np.concatenate([ta[ok], tb[ok]])
        locked[ends] = True
        locked[adj[ends].indices] = True
        cand = cand[~np.isin(cand, take)]

    if not plans:
        return verts, faces, 0
    survivor, removed, new_pos = (np.concatenate(parts) for parts in zip(*plans))
    verts = verts.copy()
    verts[survivor] = new_pos
    vmap = np.arange(n)
    vmap[removed] = survivor
    faces = vmap[faces]
    verts, faces = _compact(verts, faces[_non_degenerate(faces)])
    return verts, faces, excess - budget


def _non_degenerate(faces: np.ndarray) -> np.ndarray:
    """Mask (m,) of faces (m, 3) whose three vertex ids differ (collapsed faces fail it)."""
    a, b, c = faces.T
    return (a != b) & (b != c) & (c != a)


def _compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unreferenced vertices; returns verts (n', 3) and re-indexed faces (m, 3)."""
    used = np.zeros(len(verts), dtype=bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used) - 1
    return verts[used], new_index[faces]


def _interior_edge_pairs(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twin half-edges of every two-face edge: faces (k, 2) and local slots (k, 2) in those faces.

    Slot j of face f is the half-edge faces[f, j] -> faces[f, (j + 1) % 3]; row i pairs the two
    half-edges of one undirected edge, the first one going from the lower to the higher vertex id.
    """
    src, dst = faces.ravel(), faces[:, [1, 2, 0]].ravel()
    key = np.minimum(src, dst) * (int(faces.max()) + 1) + np.maximum(src, dst)
    order = np.lexsort((src > dst, key))
    ks = key[order]
    first = np.flatnonzero(ks[:-1] == ks[1:])
    half_edges = np.stack([order[first], order[first + 1]], axis=1)
    return half_edges // 3, half_edges % 3


def _full_degree(verts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Vertex valence (n,) in the stitched mesh, from half-mesh verts (n, 3) and edges (k, 2)."""
    deg = np.bincount(edges.ravel(), minlength=len(verts))
    # A midline vertex sees its inner neighbours twice after mirroring, its two midline ones once.
    return np.where(verts[:, 0] == 0.0, 2 * deg - 2, deg)


def _flip_pass(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip edges of the half mesh where that clearly improves the worse of the two triangles.

    verts (n, 3), faces (m, 3) -> new faces (m, 3). Flips share no face, never touch the midline
    edges, never join two midline vertices and only happen where the surface is nearly flat.
    """
    n = len(verts)
    is_mid = verts[:, 0] == 0.0
    pf, slot = _interior_edge_pairs(faces)
    f0, f1 = pf[:, 0], pf[:, 1]
    a = faces[f0, slot[:, 0]]
    b = faces[f0, (slot[:, 0] + 1) % 3]
    c = faces[f0, (slot[:, 0] + 2) % 3]
    d = faces[f1, (slot[:, 1] + 2) % 3]
    old0, old1 = faces[f0], faces[f1]
    new0, new1 = np.stack([a, d, c], axis=1), np.stack([d, b, c], axis=1)
    q_old = np.minimum(_triangle_quality(verts, old0), _triangle_quality(verts, old1))
    q_new = np.minimum(_triangle_quality(verts, new0), _triangle_quality(verts, new1))
    n_old0, n_old1 = _unit(_triangle_normals(verts, old0)), _unit(_triangle_normals(verts, old1))
    n_new0, n_new1 = _unit(_triangle_normals(verts, new0)), _unit(_triangle_normals(verts, new1))
    edges = _edges(faces)[0]
    deg = _full_degree(verts, edges)
    lost = np.where(is_mid, 2, 1)  # a midline vertex loses the flipped edge and its mirror copy
    adj = _adjacency(edges, n)
    joined = np.asarray(adj[c, d]).ravel() > 0
    good = (
        (q_new > 1.2 * q_old)
        & ((n_old0 * n_old1).sum(axis=1) > 0.85)
        & ((n_new0 * n_new1).sum(axis=1) > 0.85)
        & ((n_new0 * (n_old0 + n_old1)).sum(axis=1) > 0)
        & (deg[a] - lost[a] >= 3)
        & (deg[b] - lost[b] >= 3)
        & ~(is_mid[c] & is_mid[d])
        & ~joined
    )
    cand = np.flatnonzero(good)
    # Greedy by gain but vectorised: a flip is taken when it has the best gain on both its faces.
    rank = np.full(len(a), np.iinfo(np.int64).max)
    rank[cand] = np.arange(len(cand))[np.argsort(np.argsort(-(q_new - q_old)[cand], kind="stable"))]
    best = np.full(len(faces), np.iinfo(np.int64).max)
    np.minimum.at(best, f0[cand], rank[cand])
    np.minimum.at(best, f1[cand], rank[cand])
    take = cand[(rank[cand] == best[f0[cand]]) & (rank[cand] == best[f1[cand]])]
    # Two flips creating the same new edge would make it non-manifold: keep neither.
    key = np.sort(np.stack([c[take], d[take]], axis=1), axis=1)
    _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    take = take[cnt[inv.ravel()] == 1]
    faces = faces.copy()
    faces[f0[take]] = new0[take]
    faces[f1[take]] = new1[take]
    return faces


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of v (k, 3) scaled to unit length (zero rows stay zero)."""
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (n, 3)."""
    fn = _triangle_normals(verts, faces)
    vn = np.zeros_like(verts)
    for j in range(3):
        np.add.at(vn, faces[:, j], fn)
    return _unit(vn)


def _relax(verts: np.ndarray, faces: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Tangential Laplacian smoothing of the half mesh, re-projected onto the body surface.

    verts (n, 3), faces (m, 3) -> verts (n, 3). Midline vertices slide within x = 0; moves that
    would flip or crush a face are undone.
    """
    is_mid = verts[:, 0] == 0.0
    adj = _adjacency(_edges(faces)[0], len(verts)).astype(np.float64)
    # Weights as in the stitched mesh: a midline vertex has each inner neighbour twice.
    w = np.where(is_mid, 1.0, 2.0)
    w_sum = np.where(is_mid, adj @ w, np.asarray(adj.sum(axis=1)).ravel())
    centroid = np.where(is_mid[:, None], adj @ (verts * w[:, None]), adj @ verts) / w_sum[:, None]
    normal = _vertex_normals(verts, faces)
    move = centroid - verts
    move -= (move * normal).sum(axis=1, keepdims=True) * normal
    moved = _project_to_surface(verts + step * move)
    moved[is_mid, 0] = 0.0
    moved[~is_mid & (moved[:, 0] <= 1e-4)] = verts[~is_mid & (moved[:, 0] <= 1e-4)]
    n_old = _unit(_triangle_normals(verts, faces))
    q_floor = np.minimum(_triangle_quality(verts, faces), 0.05)
    for _ in range(10):
        n_new = _unit(_triangle_normals(moved, faces))
        bad = ((n_old * n_new).sum(axis=1) < 0.7) | (_triangle_quality(moved, faces) < q_floor)
        if not bad.any():
            return moved
        undo = np.unique(faces[bad])
        moved[undo] = verts[undo]
    return verts


def _decimate_half(
    verts: np.ndarray, faces: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Collapse edges of the half mesh (n, 3), (m, 3) until its stitched copy has `target` verts."""
    for _ in range(200):
        excess = _full_count(verts[:, 0] == 0.0) - target
        if excess == 0:
            return verts, faces
        if excess < 0:
            raise RuntimeError(f"half mesh too coarse: {-excess} stitched vertices short")
        verts, faces, removed = _collapse_batch(verts, faces, excess, max(256, excess))
        if removed == 0:
            verts, faces, removed = _collapse_batch(verts, faces, excess, 3 * len(faces))
        if removed == 0:
            raise RuntimeError(f"decimation stuck with {excess} stitched vertices to remove")
        faces = _flip_pass(verts, faces)
        verts = _relax(verts, faces)
    raise RuntimeError("decimation did not converge")


# ----------------------------------------------------------------------------------------------
# Stitching, checks and landmark ids.


def _stitch(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror the half mesh (x >= 0) and glue at x = 0: verts (V, 3), faces (F, 3), mirror (V,)."""
    is_mid = verts[:, 0] == 0.0
    inner = np.flatnonzero(~is_mid)
    n_in, n_mid = len(inner), int(is_mid.sum())
    left = np.empty(len(verts), dtype=np.int64)
    left[inner] = np.arange(n_in)
    left[is_mid] = n_in + np.arange(n_mid)
    right = left.copy()
    right[inner] += n_in + n_mid
    full = np.concatenate([verts[inner], verts[is_mid], verts[inner] * [-1.0, 1.0, 1.0]])
    # A reflection reverses orientation, so the mirrored faces get their winding reversed.
    full_faces = np.concatenate([left[faces], right[faces][:, ::-1]])
    mirror = np.concatenate(
        [np.arange(n_in) + n_in + n_mid, n_in + np.arange(n_mid), np.arange(n_in)]
    )
    return full, full_faces, mirror


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume (m^3) of a closed mesh; positive when faces wind counter-clockwise from outside."""
    v = verts[faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def _check_closed_genus0(verts: np.ndarray, faces: np.ndarray) -> None:
    """Raise if the mesh is not one closed, consistently oriented, genus-0 2-manifold."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = directed[:, 0] * len(verts) + directed[:, 1]
    if len(np.unique(key)) != len(key):
        raise RuntimeError("a directed edge is used twice: not manifold or not oriented")
    rev = directed[:, 1] * len(verts) + directed[:, 0]
    if not np.isin(rev, key).all():
        raise RuntimeError("mesh has boundary edges")
    n_comp, _ = scipy.sparse.csgraph.connected_components(_adjacency(_edges(faces)[0], len(verts)))
    euler = len(verts) - len(key) // 2 + len(faces)
    if n_comp != 1 or euler != 2:
        raise RuntimeError(f"expected one genus-0 surface, got {n_comp} parts, Euler {euler}")


def _pick(verts: np.ndarray, pool: np.ndarray, target) -> int:
    """Index of the vertex in the candidate index array `pool` nearest to target (3,)."""
    d2 = ((verts[pool] - np.asarray(target)) ** 2).sum(axis=1)
    return int(pool[np.lexsort((pool, d2))[0]])


def _landmark_order(verts: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Permutation (V,) new id -> old id that puts each landmark id on its body spot."""
    n = len(verts)
    old_of_new = np.full(n, -1)
    taken = np.zeros(n, dtype=bool)
    mid = verts[:, 0] == 0.0
    left = verts[:, 0] > 0.0

    def assign(new_id: int, old: int) -> None:
        old_of_new[new_id] = old
        taken[old] = True

    head_mid = np.flatnonzero(mid & (verts[:, 1] > 0.3))
    assign(_NOSE_TIP, int(head_mid[np.lexsort((head_mid, -verts[head_mid, 2]))[0]]))
    for new_id, target in _MIDLINE_LANDMARKS.items():
        assign(new_id, _pick(verts, np.flatnonzero(mid & ~taken), target))
    deferred = []
    for left_id, right_id, target in _PAIRED_LANDMARKS:
        old = _pick(verts, np.flatnonzero(left & ~taken), target)
        assign(right_id, int(mirror[old]))
        taken[old] = True
        if left_id is None:
            deferred.append(old)
        else:
            assign(left_id, old)
    free_ids = np.flatnonzero(old_of_new < 0)
    rest = np.concatenate([np.array(deferred, dtype=np.int64), np.flatnonzero(~taken)])
    old_of_new[free_ids] = rest
    return old_of_new


def _reindex(verts, faces, mirror, old_of_new) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the vertex permutation old_of_new (V,) to verts, faces and mirror."""
    new_of_old = np.empty_like(old_of_new)
    new_of_old[old_of_new] = np.arange(len(old_of_new))
    return verts[old_of_new], new_of_old[faces], new_of_old[mirror[old_of_new]]


@functools.lru_cache(maxsize=4)
def build_body_mesh(seed: int = 0) -> BodyMesh:
    """Build the 6890-vertex T-pose body mesh (metres, SMPL frame); arrays are read-only.

    `seed` is reserved for future variation and currently changes nothing: every call returns the
    same mesh (cached per seed).
    """
    del seed  # the construction has no random element
    half_verts, half_faces = _half_grid_mesh()
    half_verts, half_faces = _decimate_half(half_verts, half_faces, NUM_VERTICES)
    verts, faces, mirror = _stitch(half_verts, half_faces)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1]
    _check_closed_genus0(verts, faces)
    verts, faces, mirror = _reindex(verts, faces, mirror, _landmark_order(verts, mirror))
    arrays = [
        np.ascontiguousarray(verts, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64),
        np.ascontiguousarray(mirror, dtype=np.int64),
        np.array(JOINTS, dtype=np.float64),
    ]
    for arr in arrays:
        arr.setflags(write=False)
    return BodyMesh(*arrays)
