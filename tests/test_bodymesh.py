"""Checks of the procedural SMPL-template stand-in (fitting/bodymesh.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial import cKDTree

from skelpgt.fitting.bodymesh import BodyMesh, build_body_mesh

# The SMPL-order joint centres of the brief (metres).
EXPECTED_JOINTS = np.array(
    [
        [0, -0.22, 0.02], [0.07, -0.31, 0.01], [-0.07, -0.31, 0.01], [0, -0.11, -0.01],
        [0.10, -0.70, 0.01], [-0.10, -0.70, 0.01], [0, 0.02, 0.00], [0.09, -1.10, -0.03],
        [-0.09, -1.10, -0.03], [0, 0.07, 0.02], [0.11, -1.15, 0.09], [-0.11, -1.15, 0.09],
        [0, 0.29, -0.01], [0.08, 0.20, 0.00], [-0.08, 0.20, 0.00], [0, 0.36, 0.04],
        [0.17, 0.23, -0.01], [-0.17, 0.23, -0.01], [0.43, 0.22, -0.03], [-0.43, 0.22, -0.03],
        [0.69, 0.22, -0.03], [-0.69, 0.22, -0.03], [0.77, 0.21, -0.04], [-0.77, 0.21, -0.04],
    ]
)  # fmt: skip

NOSE = 332
LEFT_EYE, RIGHT_EYE = 2800, 6260
LEFT_EAR, RIGHT_EAR = 583, 4071
LEFT_BIG_TOE, RIGHT_BIG_TOE = 3216, 6617
LEFT_SMALL_TOE, RIGHT_SMALL_TOE = 3226, 6624
LEFT_HEEL, RIGHT_HEEL = 3387, 6787
LEFT_FINGERTIPS = (2746, 2319, 2445, 2556, 2673)  # thumb, index, middle, ring, pinky
RIGHT_FINGERTIPS = (6191, 5782, 5905, 6016, 6133)
HEAD_FRONT, HEAD_BACK, HEAD_TOP = 410, 384, 414
HEAD_LEFT, HEAD_RIGHT = 196, 3708
HAND_TOP, HAND_BOTTOM, HAND_WRIST, HAND_TIP = 6179, 6137, 5670, 5906  # right hand
STERNUM, BACK_UPPER, BACK_LOWER = 3027, 3495, 3506

MIDLINE_IDS = (NOSE, HEAD_FRONT, HEAD_BACK, HEAD_TOP, STERNUM, BACK_UPPER, BACK_LOWER)
MIRROR_PAIRS = (
    (LEFT_EYE, RIGHT_EYE),
    (LEFT_EAR, RIGHT_EAR),
    (LEFT_BIG_TOE, RIGHT_BIG_TOE),
    (LEFT_SMALL_TOE, RIGHT_SMALL_TOE),
    (LEFT_HEEL, RIGHT_HEEL),
    (HEAD_LEFT, HEAD_RIGHT),
    *zip(LEFT_FINGERTIPS, RIGHT_FINGERTIPS),
)
RIGHT_ONLY_IDS = (HAND_TOP, HAND_BOTTOM, HAND_WRIST, HAND_TIP)


@pytest.fixture(scope="module")
def mesh() -> BodyMesh:
    return build_body_mesh()


def _directed_edges(faces: np.ndarray) -> np.ndarray:
    return faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


def _winding_numbers(verts: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of a closed mesh at points (P, 3): 1 inside, 0 outside."""
    a = verts[faces[:, 0]][None] - points[:, None]
    b = verts[faces[:, 1]][None] - points[:, None]
    c = verts[faces[:, 2]][None] - points[:, None]
    la, lb, lc = (np.linalg.norm(x, axis=2) for x in (a, b, c))
    det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    dots = (
        la * lb * lc
        + np.einsum("pfi,pfi->pf", a, b) * lc
        + np.einsum("pfi,pfi->pf", b, c) * la
        + np.einsum("pfi,pfi->pf", c, a) * lb
    )
    return (2 * np.arctan2(det, dots)).sum(axis=1) / (4 * np.pi)


# ---- 1. counts and surface topology --------------------------------------------------------


def test_counts_and_dtypes(mesh):
    assert mesh.verts.shape == (6890, 3) and mesh.verts.dtype == np.float64
    assert mesh.faces.shape == (13776, 3) and mesh.faces.dtype == np.int64
    assert mesh.mirror.shape == (6890,) and mesh.mirror.dtype == np.int64
    assert mesh.joints.shape == (24, 3) and mesh.joints.dtype == np.float64
    assert np.isfinite(mesh.verts).all()
    assert mesh.faces.min() == 0 and mesh.faces.max() == 6889


def test_every_vertex_is_used(mesh):
    assert np.unique(mesh.faces).size == 6890


def test_closed_two_manifold(mesh):
    undirected = np.sort(_directed_edges(mesh.faces), axis=1)
    _, counts = np.unique(undirected, axis=0, return_counts=True)
    assert (counts == 2).all(), "every edge must be shared by exactly two faces"
    assert len(counts) == 3 * 13776 // 2
    # Manifold vertices: the faces around each vertex form a single fan (one cycle of edges).
    faces = mesh.faces
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    opp = np.concatenate([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]])
    order = np.argsort(rows, kind="stable")
    starts = np.searchsorted(rows[order], np.arange(6890))
    ends = np.searchsorted(rows[order], np.arange(6890), side="right")
    for v in range(6890):
        link = opp[order[starts[v] : ends[v]]]
        link_next = dict(zip(link[:, 0].tolist(), link[:, 1].tolist()))
        assert len(link_next) == len(link), f"vertex {v}: repeated link edge"
        start = link[0, 0]
        cur, steps = link_next[start], 1
        while cur != start:
            cur, steps = link_next[cur], steps + 1
            assert steps <= len(link)
        assert steps == len(link), f"vertex {v} is not a manifold vertex"


def test_consistently_oriented_outward(mesh):
    directed = _directed_edges(mesh.faces)
    assert np.unique(directed, axis=0).shape[0] == len(directed), "a directed edge repeats"
    v = mesh.verts[mesh.faces]
    volume = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0
    assert 0.04 < volume < 0.09  # m^3: an adult of roughly 50-90 kg


def test_genus_zero_single_component(mesh):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.unique(np.sort(_directed_edges(mesh.faces), axis=1), axis=0)
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(6890, 6890))
    n_components, _ = connected_components(adj, directed=False)
    assert n_components == 1
    assert len(mesh.verts) - len(e) + len(mesh.faces) == 2  # Euler characteristic


def test_no_degenerate_faces(mesh):
    v = mesh.verts[mesh.faces]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    assert area.min() > 1e-9
    assert (mesh.faces[:, 0] != mesh.faces[:, 1]).all()
    assert (mesh.faces[:, 1] != mesh.faces[:, 2]).all()
    assert (mesh.faces[:, 2] != mesh.faces[:, 0]).all()


def test_no_duplicate_vertices(mesh):
    dist, _ = cKDTree(mesh.verts).query(mesh.verts, k=2)
    assert dist[:, 1].min() > 1e-6


# ---- mirror symmetry ------------------------------------------------------------------------


def test_mirror_is_an_involution(mesh):
    assert np.array_equal(np.sort(mesh.mirror), np.arange(6890))
    assert np.array_equal(mesh.mirror[mesh.mirror], np.arange(6890))


def test_mirror_maps_positions(mesh):
    err = np.abs(mesh.verts[mesh.mirror] - mesh.verts * [-1.0, 1.0, 1.0]).max()
    assert err < 1e-9
    self_mirror = mesh.mirror == np.arange(6890)
    assert (mesh.verts[self_mirror, 0] == 0.0).all()
    assert (mesh.verts[~self_mirror, 0] != 0.0).all()


def test_mirror_maps_faces(mesh):
    mirrored = mesh.mirror[mesh.faces][:, ::-1]  # a reflection reverses the winding

    def canonical(f):
        rolled = np.stack([np.roll(f, -k, axis=1) for k in range(3)])
        pick = np.argmin(rolled[:, :, 0], axis=0)
        return rolled[pick, np.arange(len(f))]

    a = canonical(mesh.faces)
    b = canonical(mirrored)
    assert np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0))


# ---- 2. frame, pose and proportions -----------------------------------------------------------


def test_joints_are_the_given_table(mesh):
    np.testing.assert_array_equal(mesh.joints, EXPECTED_JOINTS)
    flip = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
    np.testing.assert_array_equal(mesh.joints[flip], mesh.joints * [-1, 1, 1])


def test_joints_lie_inside_the_body(mesh):
    winding = _winding_numbers(mesh.verts, mesh.faces, mesh.joints)
    np.testing.assert_allclose(winding, 1.0, atol=1e-6)
    outside = np.array([[0.0, -0.60, 0.0], [0.25, 0.05, 0.0], [0.0, 0.0, 0.3]])
    np.testing.assert_allclose(_winding_numbers(mesh.verts, mesh.faces, outside), 0.0, atol=1e-6)


def test_height_head_and_soles(mesh):
    y = mesh.verts[:, 1]
    assert 0.48 < y.max() < 0.52, "head top near y = 0.50"
    assert -1.22 < y.min() < -1.18, "soles near y = -1.20"
    assert 1.65 < y.max() - y.min() < 1.76
    top = mesh.verts[np.argmax(y)]
    assert abs(top[0]) < 0.03 and abs(top[2] - 0.02) < 0.06, "head is on top, over the trunk"
    head = mesh.verts[y > 0.30]
    assert np.abs(head[:, 0]).max() < 0.12, "nothing but the head above the shoulders"


def test_arms_straight_out_along_x(mesh):
    v = mesh.verts
    arm = v[np.abs(v[:, 0]) > 0.35]
    assert 0.14 < arm[:, 1].min() and arm[:, 1].max() < 0.30, "arms horizontal at shoulder height"
    assert np.abs(arm[:, 2]).max() < 0.12
    for side in (1.0, -1.0):
        reach = (side * v[:, 0]).max()
        assert 0.07 < reach - 0.77 < 0.13, "hands end ~0.10 m past the hand joint"


def test_armpit_and_crotch_gaps(mesh):
    v = mesh.verts
    ax = np.abs(v[:, 0])
    under_arm = (ax > 0.20) & (ax < 0.32) & (v[:, 1] > -0.2) & (v[:, 1] < 0.15)
    assert not under_arm.any(), "the arms must be clear of the torso"
    midline_low = v[(ax < 0.015) & (v[:, 1] < -0.3), 1]
    crotch = midline_low.min()
    assert crotch > -0.48, "the legs must separate below the crotch"
    between_legs = (ax < 0.012) & (v[:, 1] < crotch - 0.005)
    assert not between_legs.any()
    leg = v[v[:, 1] < -0.55]
    assert np.abs(leg[:, 0]).min() > 0.01 and np.abs(leg[:, 0]).max() < 0.2


def test_faces_plus_z_with_feet_forward(mesh):
    v = mesh.verts
    feet = v[v[:, 1] < -1.12]
    assert feet[:, 2].max() > 0.15, "toes point forward (+z)"
    assert feet[:, 2].min() > -0.12
    assert v[NOSE, 2] > 0.10
    assert v[LEFT_BIG_TOE, 2] > v[LEFT_HEEL, 2] + 0.2


# ---- 3. landmark ids -------------------------------------------------------------------------


def test_landmark_ids_are_distinct():
    ids = [*MIDLINE_IDS, *[i for pair in MIRROR_PAIRS for i in pair], *RIGHT_ONLY_IDS]
    assert len(set(ids)) == len(ids)


def test_landmark_left_mirrors_of_right_hand_points_are_unlisted(mesh):
    listed = {*MIDLINE_IDS, *[i for pair in MIRROR_PAIRS for i in pair], *RIGHT_ONLY_IDS}
    for i in RIGHT_ONLY_IDS:
        assert mesh.verts[i, 0] < 0
        assert int(mesh.mirror[i]) not in listed


def test_midline_landmarks_are_self_mirror(mesh):
    for i in MIDLINE_IDS:
        assert mesh.verts[i, 0] == 0.0
        assert mesh.mirror[i] == i


def test_paired_landmarks_are_mirrors(mesh):
    for left, right in MIRROR_PAIRS:
        assert mesh.mirror[left] == right and mesh.mirror[right] == left
        assert mesh.verts[left, 0] > 0 > mesh.verts[right, 0]


def test_nose_is_the_front_of_the_head(mesh):
    v = mesh.verts
    head = v[:, 1] > 0.30
    assert v[NOSE, 2] == v[head, 2].max()
    assert 0.33 < v[NOSE, 1] < 0.43


def test_eyes(mesh):
    v = mesh.verts
    for eye, sign in ((LEFT_EYE, 1), (RIGHT_EYE, -1)):
        assert 0.02 < sign * v[eye, 0] < 0.045, "about 3 cm off the midline"
        assert v[NOSE, 1] < v[eye, 1] < v[NOSE, 1] + 0.07, "above the nose"
        assert v[eye, 2] > 0.08 and v[eye, 2] < v[NOSE, 2], "front of the face"


def test_ears(mesh):
    v = mesh.verts
    for ear, sign in ((LEFT_EAR, 1), (RIGHT_EAR, -1)):
        assert sign * v[ear, 0] > 0.075, "sides of the head"
        assert 0.33 < v[ear, 1] < 0.45 and abs(v[ear, 2]) < 0.05


def test_toes_and_heels(mesh):
    v = mesh.verts
    for big, small, heel, ankle, sign in (
        (LEFT_BIG_TOE, LEFT_SMALL_TOE, LEFT_HEEL, 7, 1),
        (RIGHT_BIG_TOE, RIGHT_SMALL_TOE, RIGHT_HEEL, 8, -1),
    ):
        for toe in (big, small):
            assert v[toe, 2] > 0.13 and v[toe, 1] < -1.12, "toes at the tip of the foot"
            assert sign * v[toe, 0] > 0
        assert sign * v[big, 0] + 0.03 < sign * v[small, 0], "big toe medial, small toe lateral"
        assert v[heel, 2] < mesh.joints[ankle, 2] - 0.03, "heel behind the ankle"
        assert v[heel, 1] < -1.15, "heel at the bottom"
        assert sign * v[heel, 0] > 0


def test_fingertips(mesh):
    v = mesh.verts
    for tips, sign, hand in ((LEFT_FINGERTIPS, 1, 22), (RIGHT_FINGERTIPS, -1, 23)):
        p = v[list(tips)]
        assert (sign * p[:, 0] > 0.78).all(), "past the hand joint"
        assert (sign * p[1:, 0] > 0.84).all(), "fingers at the far end of the hand"
        assert (np.abs(p[:, 1] - mesh.joints[hand, 1]) < 0.03).all()
        assert (np.diff(p[:, 2]) < 0).all(), "thumb (+z) to pinky (-z)"
        assert p[0, 2] > mesh.joints[hand, 2] + 0.05, "thumb on the front side"
        assert p[4, 2] < mesh.joints[hand, 2] - 0.02, "pinky on the back side"


def test_head_scaling_points(mesh):
    v = mesh.verts
    assert v[HEAD_FRONT, 2] - v[HEAD_BACK, 2] > 0.12
    assert v[HEAD_FRONT, 1] > v[NOSE, 1], "forehead above the nose"
    assert v[HEAD_TOP, 1] - v[HEAD_BACK, 1] > 0.05
    assert v[HEAD_TOP, 1] > 0.47
    assert v[HEAD_LEFT, 0] - v[HEAD_RIGHT, 0] > 0.10
    assert v[HEAD_LEFT, 0] > 0 and 0.33 < v[HEAD_LEFT, 1] < 0.50


def test_right_hand_scaling_points(mesh):
    v = mesh.verts
    for i in RIGHT_ONLY_IDS:
        assert v[i, 0] < -0.66, "on the right hand"
    assert v[HAND_TOP, 1] - v[HAND_BOTTOM, 1] > 0.015
    assert v[HAND_WRIST, 0] - v[HAND_TIP, 0] > 0.08
    assert abs(v[HAND_WRIST, 0] - mesh.joints[21, 0]) < 0.03, "at the wrist"
    assert v[HAND_TIP, 0] < mesh.joints[23, 0] - 0.05, "near the hand's tip"


def test_chest_points(mesh):
    v = mesh.verts
    assert 0.0 < v[STERNUM, 1] < 0.2 and v[STERNUM, 2] > 0.08
    for back in (BACK_UPPER, BACK_LOWER):
        assert v[STERNUM, 2] - v[back, 2] > 0.12
        assert 0.0 < v[back, 1] < 0.2 and v[back, 2] < -0.08
    assert 0.015 < v[BACK_UPPER, 1] - v[BACK_LOWER, 1] < 0.05


# ---- 4. determinism and caching ----------------------------------------------------------------


def test_deterministic_and_fast(mesh):
    start = time.perf_counter()
    fresh = build_body_mesh.__wrapped__(0)  # bypass the cache
    elapsed = time.perf_counter() - start
    again = build_body_mesh.__wrapped__(0)
    for name in ("verts", "faces", "mirror", "joints"):
        assert np.array_equal(getattr(fresh, name), getattr(again, name)), name
        assert np.array_equal(getattr(fresh, name), getattr(mesh, name)), name
    assert elapsed < 10.0, f"build took {elapsed:.1f} s"


def test_seed_is_documented_as_inert(mesh):
    other = build_body_mesh(1)
    assert np.array_equal(other.verts, mesh.verts)
    assert np.array_equal(other.faces, mesh.faces)


def test_arrays_are_read_only(mesh):
    for arr in (mesh.verts, mesh.faces, mesh.mirror, mesh.joints):
        with pytest.raises(ValueError):
            arr[0] = 0
