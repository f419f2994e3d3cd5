import math

import pytest
import torch

from skelpgt.fitting.mirror import (
    MIRROR_PERMUTATION,
    MIRROR_SIGNS,
    SMPL_JOINT_FLIP_PERMUTATION,
    mirror_pose,
    mirror_smpl_pose,
    mirror_translation,
)

# The brief / skel-model.md §2.2 pairs, typed in again: right DOF <-> left DOF.
SPEC_PAIRS = [
    (3, 10), (4, 11), (5, 12),  # femur
    (6, 13), (7, 14), (8, 15), (9, 16),  # knee, ankle, subtalar, mtp
    (26, 36), (27, 37), (28, 38),  # scapula
    (29, 39), (30, 40), (31, 41),  # humerus
    (32, 42), (33, 43), (34, 44), (35, 45),  # elbow, pro_sup, wrist
]  # fmt: skip
SPEC_NEGATED = {1, 2, 17, 19, 20, 22, 23, 25, 26, 27, 36, 37, 29, 30, 39, 40}


def test_permutation_swaps_exactly_the_spec_pairs():
    perm = MIRROR_PERMUTATION.tolist()
    assert sorted(perm) == list(range(46))
    expected = list(range(46))
    for r, l in SPEC_PAIRS:
        expected[r], expected[l] = l, r
    assert perm == expected
    # the centre DOFs (pelvis, spine, head) map onto themselves
    assert [perm[i] for i in (0, 1, 2, *range(17, 26))] == [0, 1, 2, *range(17, 26)]


def test_signs():
    assert MIRROR_SIGNS.shape == (46,)
    assert MIRROR_SIGNS.tolist() == [-1.0 if i in SPEC_NEGATED else 1.0 for i in range(46)]
    # a swapped pair has the same sign on both sides, or the mirror would not be an involution
    for r, l in SPEC_PAIRS:
        assert MIRROR_SIGNS[r] == MIRROR_SIGNS[l]


def test_mirror_pose_definition_and_involution():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 46)
    m = mirror_pose(q)
    assert m.shape == q.shape
    for i in range(46):
        assert torch.equal(m[..., i], MIRROR_SIGNS[i] * q[..., MIRROR_PERMUTATION[i]])
    assert torch.equal(mirror_pose(m), q)
    # spot values: right hip flexion becomes left, pelvis list flips sign, pelvis tilt kept
    assert torch.equal(m[..., 10], q[..., 3])
    assert torch.equal(m[..., 1], -q[..., 1])
    assert torch.equal(m[..., 0], q[..., 0])
    assert torch.equal(m[..., 36], -q[..., 26])
    assert torch.equal(m[..., 38], q[..., 28])


def test_mirror_pose_keeps_dtype_and_grad():
    q = torch.randn(4, 46, dtype=torch.float64, requires_grad=True)
    m = mirror_pose(q)
    assert m.dtype == torch.float64
    m[:, 10].sum().backward()
    assert q.grad[:, 3].eq(1).all() and q.grad.abs().sum() == 4


def test_mirror_translation():
    t = torch.tensor([[0.3, -1.2, 5.0], [-0.1, 0.0, 2.0]])
    m = mirror_translation(t)
    assert torch.equal(m, torch.tensor([[-0.3, -1.2, 5.0], [0.1, 0.0, 2.0]]))
    assert torch.equal(mirror_translation(m), t)


# --- the signs are those of the joint axes of skel-model.md §2.3 ----------------------------------


def _rot(axis: str, angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        "x": [[o, z, z], [z, c, -s], [z, s, c]],
        "y": [[c, z, s], [z, o, z], [-s, z, c]],
        "z": [[c, -s, z], [s, c, z], [z, z, o]],
    }[axis]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _aa(n, angle: torch.Tensor) -> torch.Tensor:
    n = torch.tensor(n, dtype=angle.dtype)
    n = n / n.norm()
    k = torch.tensor([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]], dtype=angle.dtype)
    a = angle[..., None, None]
    return torch.eye(3, dtype=angle.dtype) + torch.sin(a) * k + (1 - torch.cos(a)) * (k @ k)


def _custom(q: torch.Tensor, dofs, signed_axes) -> torch.Tensor:
    """Rp = Rot(n_last, q_last) ... Rot(n_0, q_0) with signed axes like '+z' / '-x'."""
    r = torch.eye(3, dtype=q.dtype).expand(q.shape[0], 3, 3)
    for d, ax in zip(dofs, signed_axes):
        sign = -1.0 if ax[0] == "-" else 1.0
        r = _rot(ax[1], sign * q[:, d]) @ r
    return r


# joint -> function of q giving Rp (BSM frame), from skel-model.md §2.3
JOINT_ROT = {
    "pelvis": lambda q: _custom(q, (0, 1, 2), ("+z", "+x", "+y")),
    "femur_r": lambda q: _custom(q, (3, 4, 5), ("+z", "+x", "+y")),
    "femur_l": lambda q: _custom(q, (10, 11, 12), ("+z", "-x", "-y")),
    "lumbar": lambda q: _custom(q, (17, 18, 19), ("+x", "+z", "+y")),
    "thorax": lambda q: _custom(q, (20, 21, 22), ("+x", "+z", "+y")),
    "head": lambda q: _custom(q, (23, 24, 25), ("+x", "+z", "+y")),
    "scapula_r": lambda q: _custom(q, (26, 27, 28), ("+y", "-z", "-x")),
    "scapula_l": lambda q: _custom(q, (36, 37, 38), ("+y", "+z", "+x")),
    "humerus_r": lambda q: _custom(q, (29, 30, 31), ("+x", "+y", "+z")),
    "humerus_l": lambda q: _custom(q, (39, 40, 41), ("+x", "+y", "+z")),
    "hand_r": lambda q: _custom(q, (34, 35), ("+x", "-z")),
    "hand_l": lambda q: _custom(q, (44, 45), ("-x", "-z")),
    "ulna_r": lambda q: _aa((0.0494, 0.0366, 0.99810825), q[:, 32]),
    "ulna_l": lambda q: _aa((-0.0494, -0.0366, 0.99810825), q[:, 42]),
    "radius_r": lambda q: _aa((-0.01716099, 0.99266564, -0.11966796), q[:, 33]),
    "radius_l": lambda q: _aa((0.01716099, -0.99266564, -0.11966796), q[:, 43]),
    "tibia_r": lambda q: _rot("z", -q[:, 6]),
    "tibia_l": lambda q: _rot("z", -q[:, 13]),
    "calcn_r": lambda q: _aa((0.78718000, 0.60474720, -0.12094825), q[:, 8]),
    "calcn_l": lambda q: _aa((-0.78718000, -0.60474720, -0.12094825), q[:, 15]),
    "toes_r": lambda q: _aa((0.58095458, 0.00000216, -0.81393598), q[:, 9]),
    "toes_l": lambda q: _aa((-0.58095458, 0.00000216, -0.81393598), q[:, 16]),
}
MIRRORED_JOINTS = [
    ("pelvis", "pelvis"), ("lumbar", "lumbar"), ("thorax", "thorax"), ("head", "head"),
    ("femur_r", "femur_l"), ("tibia_r", "tibia_l"), ("calcn_r", "calcn_l"), ("toes_r", "toes_l"),
    ("scapula_r", "scapula_l"), ("humerus_r", "humerus_l"), ("ulna_r", "ulna_l"),
    ("radius_r", "radius_l"), ("hand_r", "hand_l"),
]  # fmt: skip


@pytest.mark.parametrize("right,left", MIRRORED_JOINTS)
def test_signs_agree_with_joint_axes(right, left):
    """Reflecting z (the body's right in BSM frames) turns each joint's rotation into its partner's at the mirrored q.

    The ankle (talus) is left out: §2.3 lists the same axis on both sides, so its mirror depends
    on the talus joint frames, which only the mesh-level test with the SKEL layer sees. The toes'
    axis has a y component of 2e-6 with the same sign on both sides (bsm.osim's -3.14159 for -pi),
    hence the 1e-5 tolerance; a sign error is an O(1) difference.
    """
    torch.manual_seed(1)
    q = (torch.rand(16, 46, dtype=torch.float64) - 0.5) * 2.0
    reflect = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    m = mirror_pose(q)
    for a, b in ((right, left), (left, right)):
        torch.testing.assert_close(reflect @ JOINT_ROT[a](q) @ reflect, JOINT_ROT[b](m), atol=1e-5, rtol=0)


def test_a_wrong_sign_would_break_the_axis_check():
    # guard for the test above: flipping one sign must make it fail
    torch.manual_seed(2)
    q = (torch.rand(8, 46, dtype=torch.float64) - 0.5) * 2.0
    reflect = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    bad = mirror_pose(q)
    bad[:, 38] = -bad[:, 38]
    assert not torch.allclose(reflect @ JOINT_ROT["scapula_r"](q) @ reflect, JOINT_ROT["scapula_l"](bad), atol=1e-4)


# --- SMPL ---------------------------------------------------------------------------------------


def test_smpl_flip_permutation():
    perm = SMPL_JOINT_FLIP_PERMUTATION.tolist()
    assert perm == [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
    assert [perm[p] for p in perm] == list(range(24))


def test_mirror_smpl_pose_definition_and_involution():
    torch.manual_seed(3)
    pose = torch.randn(5, 72)
    m = mirror_smpl_pose(pose)
    assert m.shape == (5, 72)
    j, mj = pose.view(5, 24, 3), m.view(5, 24, 3)
    # left hip (1) takes the right hip (2) with y and z negated; the pelvis keeps x, negates y, z
    assert torch.equal(mj[:, 1], j[:, 2] * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(mj[:, 0], j[:, 0] * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(mj[:, 22], j[:, 23] * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(mirror_smpl_pose(m), pose)
    assert mirror_smpl_pose(torch.randn(2, 3, 72)).shape == (2, 3, 72)


def test_mirror_smpl_pose_fixes_symmetric_poses():
    zero = torch.zeros(3, 72)
    assert torch.equal(mirror_smpl_pose(zero), zero)
    # symmetric bends: both knees, both hips, both elbows about x by the same angle, spine about x
    sym = torch.zeros(1, 24, 3)
    for a, b, angle in ((1, 2, -0.7), (4, 5, 1.2), (18, 19, 0.4), (16, 17, 0.2)):
        sym[0, a, 0] = sym[0, b, 0] = angle
    sym[0, 3, 0] = sym[0, 6, 0] = sym[0, 9, 0] = 0.3
    sym = sym.view(1, 72)
    assert torch.equal(mirror_smpl_pose(sym), sym)
    # an asymmetric pose is changed
    asym = sym.clone()
    asym[0, 4 * 3] += 0.5  # left knee only
    assert not torch.equal(mirror_smpl_pose(asym), asym)
    # a sideways bend of the spine (about z) is mirrored to the other side
    side = torch.zeros(1, 72)
    side[0, 3 * 3 + 2] = 0.3
    assert mirror_smpl_pose(side)[0, 3 * 3 + 2].item() == pytest.approx(-0.3)


def test_shape_errors():
    with pytest.raises(ValueError, match="46"):
        mirror_pose(torch.zeros(2, 45))
    with pytest.raises(ValueError, match="72"):
        mirror_smpl_pose(torch.zeros(2, 69))
    with pytest.raises(ValueError, match="3"):
        mirror_translation(torch.zeros(2, 2))


def test_mirror_is_isometric_in_angle_space():
    # no scaling: the mirror keeps the magnitude of each DOF
    q = torch.linspace(-math.pi, math.pi, 46)[None]
    assert torch.equal(mirror_pose(q).abs().sort().values, q.abs().sort().values)
