import math

import pytest
import torch

from skelpgt.fitting import limits
from skelpgt.fitting.limits import (
    LIMIT_BOUNDS,
    LIMIT_NAMES,
    LIMIT_QIDS,
    MIRROR_ASYMMETRIC_QIDS,
    angle_prior,
    clamp_to_limits,
    eval_violation,
    eval_violation_per_joint,
    limit_violation,
    wrap_angles,
)
from skelpgt.fitting.mirror import MIRROR_PERMUTATION, MIRROR_SIGNS, mirror_pose

PI = math.pi

# skel-model.md §4.1, typed in again independently of the module: (q, low, high) in row order.
SPEC_TABLE = [
    (26, -0.628, 0.628), (27, -0.4, -0.1), (28, -0.190, 0.319),
    (36, -0.628, 0.628), (37, -0.4, -0.1), (38, -0.210, 0.219),
    (32, 0.0, 2.35619449), (33, -1.17809725, 1.17809725), (34, -PI / 2, PI / 2), (35, -PI / 4, PI / 4),
    (42, 0.0, 2.35619449), (43, -PI / 2, PI / 2), (44, -PI / 2, PI / 2), (45, -PI / 4, PI / 4),
    (17, -0.52359878, 0.52359878), (18, -PI / 4, PI / 4), (19, -PI / 4, PI / 4),
    (20, -PI / 4, PI / 4), (21, -PI / 4, PI / 4), (22, -PI / 4, PI / 4),
    (23, -PI / 4, PI / 4), (24, -PI / 4, PI / 4), (25, -PI / 4, PI / 4),
    (7, -PI / 4, PI / 4), (8, -PI / 4, PI / 4), (9, -PI / 4, PI / 4),
    (14, -PI / 4, PI / 4), (15, -PI / 4, PI / 4), (16, -PI / 4, PI / 4),
    (6, 0.0, 3 * PI / 4), (13, 0.0, 3 * PI / 4),
    (3, -PI / 4, 3 * PI / 4), (4, -PI / 4, PI / 6), (5, -PI / 4, PI / 4),
    (10, -PI / 4, 3 * PI / 4), (11, -PI / 4, PI / 6), (12, -PI / 4, PI / 4),
    (29, -PI / 2, 3.07079633), (30, -PI / 2, PI / 2), (31, -PI / 2, PI / 2),
    (39, -3.07079633, PI / 2), (40, -PI / 2, PI / 2), (41, -PI / 2, PI / 2),
]  # fmt: skip


def _row(qid: int) -> int:
    return int((LIMIT_QIDS == qid).nonzero()[0, 0])


def _mid_pose(batch: int = 1) -> torch.Tensor:
    """A pose with every limited DOF at the middle of its range and the pelvis turned freely."""
    q = torch.zeros(batch, 46)
    q[:, LIMIT_QIDS] = LIMIT_BOUNDS.mean(dim=1).float()
    q[:, :3] = torch.tensor([2.5, -3.0, 1.0])
    return q


def test_table_matches_spec_in_order():
    assert LIMIT_QIDS.shape == (43,) and LIMIT_BOUNDS.shape == (43, 2)
    assert LIMIT_QIDS.tolist() == [row[0] for row in SPEC_TABLE]
    torch.testing.assert_close(
        LIMIT_BOUNDS, torch.tensor([[lo, hi] for _, lo, hi in SPEC_TABLE], dtype=torch.float64), atol=1e-8, rtol=0
    )
    # every DOF except the pelvis, each exactly once, low < high
    assert sorted(LIMIT_QIDS.tolist()) == list(range(3, 46))
    assert bool((LIMIT_BOUNDS[:, 0] < LIMIT_BOUNDS[:, 1]).all())
    assert len(LIMIT_NAMES) == 43
    assert LIMIT_NAMES[_row(37)] == "scapula_elevation_l" and LIMIT_NAMES[_row(43)] == "pro_sup_l"


def test_angle_prior_matches_formula_and_is_not_wrapped():
    torch.manual_seed(0)
    q = (torch.rand(5, 46) - 0.5) * 6.0
    rho = angle_prior(q)
    assert rho.shape == (5, 43) and rho.dtype == torch.float32
    for k, (qid, lo, hi) in enumerate(SPEC_TABLE):
        x = q[:, qid].double()
        expected = torch.exp(lo - x) ** 2 + torch.exp(x - hi) ** 2
        torch.testing.assert_close(rho[:, k].double(), expected, rtol=1e-5, atol=0)
    # middle of scapula elevation: 2 e^{-0.3}
    mid = torch.zeros(1, 46)
    mid[0, 27] = -0.25
    assert angle_prior(mid)[0, 1].item() == pytest.approx(2 * math.exp(-0.3), rel=1e-6)
    # HSMR applies the barrier to raw parameters: +2pi is a different (huge) penalty
    knee = torch.zeros(2, 46)
    knee[:, 6] = torch.tensor([0.5, 0.5 + 2 * PI])
    rho_knee = angle_prior(knee)[:, 29]
    assert rho_knee[0].item() < 2.0 and rho_knee[1].item() > 1e3


def test_angle_prior_gradient_points_back_inside():
    q = torch.zeros(2, 46)
    q[0, 6] = 3.0  # knee above its upper bound
    q[1, 6] = -0.5  # knee below its lower bound
    q.requires_grad_(True)
    angle_prior(q).sum().backward()
    assert q.grad[0, 6] > 0 and q.grad[1, 6] < 0


def test_wrap_angles():
    x = torch.tensor([PI, -PI, 3 * PI / 2, -3 * PI / 2, 3 * PI, 7.0, -7.0, 0.0, 0.1, 2 * PI], dtype=torch.float64)
    w = wrap_angles(x)
    expected = [PI, PI, -PI / 2, PI / 2, PI, 7.0 - 2 * PI, -7.0 + 2 * PI, 0.0, 0.1, 0.0]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.manual_seed(1)
    big = (torch.rand(1000, dtype=torch.float64) - 0.5) * 40
    wb = wrap_angles(big)
    assert bool(((wb > -PI) & (wb <= PI)).all())
    k = (big - wb) / (2 * PI)
    torch.testing.assert_close(k, k.round(), atol=1e-9, rtol=0)
    # in-range float32 values come back bit-identical (small angles must not be rounded away)
    inside = torch.tensor([1e-8, -1e-8, 0.5, -3.1, 3.1], dtype=torch.float32)
    assert torch.equal(wrap_angles(inside), inside)


def test_limit_violation_values():
    q = _mid_pose(4)
    q[1, 6] = 3 * PI / 4 + math.radians(10.0)  # knee 10 deg over
    q[2, 27] = -0.4 - math.radians(4.0)  # scapula elevation 4 deg under
    q[2, 39] = PI / 2 + math.radians(6.0)  # shoulder_l_x 6 deg over
    q[3, 6] = 0.5 + 2 * PI  # inside after wrapping
    v = limit_violation(q)
    assert v.shape == (4,)
    torch.testing.assert_close(v, torch.tensor([0.0, 10.0, 10.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(limit_violation(q, margin_deg=5.0), torch.tensor([0.0, 5.0, 1.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(limit_violation(q, margin_deg=15.0), torch.zeros(4), atol=0, rtol=0)
    # pelvis DOFs are free
    q[0, :3] = torch.tensor([10.0, -10.0, 5.0])
    assert limit_violation(q)[0].item() == 0.0


def test_zero_pose_violates_only_scapula_elevation():
    # both elevations sit 0.1 rad above [-0.4, -0.1] at q = 0; every other DOF is in range or on a bound
    v = limit_violation(torch.zeros(3, 46))
    torch.testing.assert_close(v, torch.full((3,), 2 * math.degrees(0.1)), atol=1e-4, rtol=0)


def test_clamp_to_limits():
    torch.manual_seed(2)
    q = (torch.rand(64, 46) - 0.5) * 12.0
    c = clamp_to_limits(q)
    assert c.shape == q.shape
    assert torch.equal(c[:, :3], q[:, :3])
    torch.testing.assert_close(limit_violation(c), torch.zeros(64), atol=1e-3, rtol=0)
    # in-box values are kept exactly; out-of-box values go to the nearest bound (after wrapping)
    inside = _mid_pose(1)
    assert torch.equal(clamp_to_limits(inside), inside)
    out = inside.clone()
    out[0, 6] = 3.0  # knee above 3pi/4
    out[0, 32] = -0.3  # elbow below 0
    out[0, 13] = 0.5 - 2 * PI  # knee inside modulo 2pi
    c = clamp_to_limits(out)
    assert c[0, 6].item() == pytest.approx(3 * PI / 4, abs=1e-6)
    assert c[0, 32].item() == 0.0
    assert c[0, 13].item() == pytest.approx(0.5, abs=1e-5)
    assert torch.equal(c[0, 7:13], out[0, 7:13])


def test_eval_violation_hsmr_definition():
    q = _mid_pose(5)
    q[1, 6] = 3 * PI / 4 + math.radians(12.0)  # right knee 12 deg over -> 7 deg beyond tolerance
    q[2, 43] = PI / 2 + math.radians(3.0)  # pro_sup_l within the 5 deg tolerance
    q[3, 32] = -math.radians(20.0)  # right elbow 15 deg beyond
    q[3, 33] = 3 * PI / 8 + math.radians(8.0)  # right pro_sup 3 deg beyond; joint takes the max
    q[4, 3] = 3.0  # hip far out: not part of the evaluation
    q[4, 27] = 1.0  # scapula: not part of the evaluation
    per_joint = eval_violation_per_joint(q)
    assert per_joint.shape == (5, 4)
    assert limits.EVAL_JOINTS == ("elbow_l", "elbow_r", "knee_l", "knee_r")
    expected = torch.zeros(5, 4)
    expected[1, 3] = math.radians(7.0)
    expected[3, 1] = math.radians(15.0)
    torch.testing.assert_close(per_joint, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(eval_violation(q), expected.amax(dim=1), atol=1e-5, rtol=0)
    # two joints out at once: the sample's value is the worst joint, not the sum
    two = _mid_pose(1)
    two[0, 6] = 3 * PI / 4 + math.radians(9.0)  # 4 deg beyond
    two[0, 42] = 3 * PI / 4 + math.radians(11.0)  # 6 deg beyond
    assert eval_violation(two).item() == pytest.approx(math.radians(6.0), abs=1e-5)
    # tolerance is a parameter; 0 deg makes the pro_sup_l case count
    assert eval_violation_per_joint(q, tol_deg=0.0)[2, 0].item() == pytest.approx(math.radians(3.0), abs=1e-5)
    # wrapping: a knee at 0.3 - 2pi is fine
    w = _mid_pose(1)
    w[0, 13] = 0.3 - 2 * PI
    assert eval_violation(w).item() == 0.0


def test_limit_functions_reject_wrong_width():
    for fn in (angle_prior, limit_violation, clamp_to_limits, eval_violation):
        with pytest.raises(ValueError, match="46"):
            fn(torch.zeros(2, 45))


def test_functions_are_batched_and_keep_dtype():
    q = _mid_pose(3).double().reshape(3, 46)[None].expand(2, 3, 46)
    assert angle_prior(q).shape == (2, 3, 43) and angle_prior(q).dtype == torch.float64
    assert limit_violation(q).shape == (2, 3)
    assert clamp_to_limits(q).shape == (2, 3, 46)
    assert eval_violation(q).shape == (2, 3)


def test_limit_table_mirror_consistency():
    """Which limited DOFs map onto their mirror partner's range (HSMR's table, mirror of mirror.py)."""
    perm, signs = MIRROR_PERMUTATION.tolist(), MIRROR_SIGNS.tolist()
    bounds = {int(k): (float(lo), float(hi)) for k, (lo, hi) in zip(LIMIT_QIDS, LIMIT_BOUNDS)}
    mismatched = set()
    for qid, (lo, hi) in bounds.items():
        src_lo, src_hi = bounds[perm[qid]]
        mapped = (src_lo, src_hi) if signs[qid] > 0 else (-src_hi, -src_lo)
        if abs(mapped[0] - lo) > 1e-9 or abs(mapped[1] - hi) > 1e-9:
            mismatched.add(qid)
    # Known asymmetries of HSMR's table: scapula elevation (same range both sides but the mirror
    # negates it), scapula upward rotation (different ranges), pro_sup (left wider than right).
    assert mismatched == {27, 37, 28, 38, 33, 43}
    assert set(MIRROR_ASYMMETRIC_QIDS) == mismatched
    # consequence: mirroring an in-range pose keeps every other DOF in range
    torch.manual_seed(3)
    lo, hi = LIMIT_BOUNDS[:, 0].float(), LIMIT_BOUNDS[:, 1].float()
    q = torch.zeros(256, 46)
    q[:, LIMIT_QIDS] = lo + (hi - lo) * torch.rand(256, 43)
    m = mirror_pose(q)
    keep = torch.tensor([int(k) not in mismatched for k in LIMIT_QIDS])
    x = m[:, LIMIT_QIDS][:, keep]
    assert bool(((x >= lo[keep] - 1e-6) & (x <= hi[keep] + 1e-6)).all())
    # and the excluded scapula elevation really does leave its range
    assert bool((m[:, 37] > -0.1).all())
