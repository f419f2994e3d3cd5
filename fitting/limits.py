"""Joint limits of the 46 SKEL DOFs as HSMR uses them, the soft angle prior, and violation metrics.

Source: docs/reference/skel-model.md §4 (HSMR ``skel_utils/limits.py`` and ``reality.py``).
All angles are radians unless a name says ``deg``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .mirror import MIRROR_PERMUTATION, MIRROR_SIGNS

__all__ = [
    "LIMIT_NAMES",
    "LIMIT_QIDS",
    "LIMIT_BOUNDS",
    "MIRROR_ASYMMETRIC_QIDS",
    "EVAL_JOINTS",
    "EVAL_QIDS",
    "angle_prior",
    "wrap_angles",
    "unwrap_angles",
    "limit_violation",
    "clamp_to_limits",
    "eval_violation_per_joint",
    "eval_violation",
]

_PI = math.pi

# HSMR's table, row order kept: a caller that averages the (B, 43) prior or indexes rows by
# position must see the same layout as HSMR's SKEL_LIM_QIDS / SKEL_LIM_BOUNDS.
_TABLE: tuple[tuple[str, int, float, float], ...] = (
    ("scapula_abduction_r", 26, -0.628, 0.628),
    ("scapula_elevation_r", 27, -0.4, -0.1),
    ("scapula_upward_rot_r", 28, -0.190, 0.319),
    ("scapula_abduction_l", 36, -0.628, 0.628),
    ("scapula_elevation_l", 37, -0.4, -0.1),
    ("scapula_upward_rot_l", 38, -0.210, 0.219),
    ("elbow_flexion_r", 32, 0.0, 3 * _PI / 4),
    ("pro_sup_r", 33, -3 * _PI / 8, 3 * _PI / 8),
    ("wrist_flexion_r", 34, -_PI / 2, _PI / 2),
    ("wrist_deviation_r", 35, -_PI / 4, _PI / 4),
    ("elbow_flexion_l", 42, 0.0, 3 * _PI / 4),
    ("pro_sup_l", 43, -_PI / 2, _PI / 2),
    ("wrist_flexion_l", 44, -_PI / 2, _PI / 2),
    ("wrist_deviation_l", 45, -_PI / 4, _PI / 4),
    ("lumbar_bending", 17, -_PI / 6, _PI / 6),
    ("lumbar_extension", 18, -_PI / 4, _PI / 4),
    ("lumbar_twist", 19, -_PI / 4, _PI / 4),
    ("thorax_bending", 20, -_PI / 4, _PI / 4),
    ("thorax_extension", 21, -_PI / 4, _PI / 4),
    ("thorax_twist", 22, -_PI / 4, _PI / 4),
    ("head_bending", 23, -_PI / 4, _PI / 4),
    ("head_extension", 24, -_PI / 4, _PI / 4),
    ("head_twist", 25, -_PI / 4, _PI / 4),
    ("ankle_angle_r", 7, -_PI / 4, _PI / 4),
    ("subtalar_angle_r", 8, -_PI / 4, _PI / 4),
    ("mtp_angle_r", 9, -_PI / 4, _PI / 4),
    ("ankle_angle_l", 14, -_PI / 4, _PI / 4),
    ("subtalar_angle_l", 15, -_PI / 4, _PI / 4),
    ("mtp_angle_l", 16, -_PI / 4, _PI / 4),
    ("knee_angle_r", 6, 0.0, 3 * _PI / 4),
    ("knee_angle_l", 13, 0.0, 3 * _PI / 4),
    # Rows below were added by HSMR for optimisation stability (hips, shoulders; bsm.osim ranges).
    ("hip_flexion_r", 3, -_PI / 4, 3 * _PI / 4),
    ("hip_adduction_r", 4, -_PI / 4, _PI / 6),
    ("hip_rotation_r", 5, -_PI / 4, _PI / 4),
    ("hip_flexion_l", 10, -_PI / 4, 3 * _PI / 4),
    ("hip_adduction_l", 11, -_PI / 4, _PI / 6),
    ("hip_rotation_l", 12, -_PI / 4, _PI / 4),
    ("shoulder_r_x", 29, -_PI / 2, _PI / 2 + 1.5),
    ("shoulder_r_y", 30, -_PI / 2, _PI / 2),
    ("shoulder_r_z", 31, -_PI / 2, _PI / 2),
    ("shoulder_l_x", 39, -_PI / 2 - 1.5, _PI / 2),
    ("shoulder_l_y", 40, -_PI / 2, _PI / 2),
    ("shoulder_l_z", 41, -_PI / 2, _PI / 2),
)

LIMIT_NAMES: tuple[str, ...] = tuple(row[0] for row in _TABLE)
LIMIT_QIDS: Tensor = torch.tensor([row[1] for row in _TABLE], dtype=torch.long)
# float64 source of truth; functions cast to the caller's dtype so float64 checks stay exact.
LIMIT_BOUNDS: Tensor = torch.tensor([[row[2], row[3]] for row in _TABLE], dtype=torch.float64)

# DOFs whose bounds do NOT map onto their mirror partner's bounds under the left/right mirror of
# ``mirror.py`` (new[i] = sign[i] * q[perm[i]]); everywhere else the table is mirror-consistent.
#  * 27/37 scapula_elevation: both sides [-0.4, -0.1], but the mirror negates elevation, so the
#    mirror of an in-range right scapula lies in [0.1, 0.4] on the left (HSMR's table as shipped).
#  * 28/38 scapula_upward_rot: right [-0.190, 0.319] vs left [-0.210, 0.219].
#  * 33/43 pro_sup: right ±3π/8, left ±π/2 (left is wider).
MIRROR_ASYMMETRIC_QIDS: tuple[int, ...] = (27, 28, 33, 37, 38, 43)

# HSMR's evaluation (reality.py) joints, in its Table 4 column order; a joint's violation is the
# max over its DOFs.
EVAL_JOINTS: tuple[str, ...] = ("elbow_l", "elbow_r", "knee_l", "knee_r")
EVAL_QIDS: tuple[tuple[int, ...], ...] = ((42, 43), (32, 33), (13,), (6,))


@functools.lru_cache(maxsize=32)
def _table_on(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    # Cached per device/dtype so optimisation loops do not copy the table host->device every step.
    bounds = LIMIT_BOUNDS.to(device=device, dtype=dtype)
    return LIMIT_QIDS.to(device), bounds[:, 0], bounds[:, 1]


@functools.lru_cache(maxsize=32)
def _eval_on(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # Flatten the per-joint DOF lists to (qid, joint) pairs so one scatter-max gives per-joint values.
    qids, joints = [], []
    for j, group in enumerate(EVAL_QIDS):
        qids.extend(group)
        joints.extend([j] * len(group))
    qid_t = torch.tensor(qids, dtype=torch.long)
    rows = [int((LIMIT_QIDS == k).nonzero()[0, 0]) for k in qids]
    bounds = LIMIT_BOUNDS[rows].to(dtype=dtype)
    return (
        qid_t.to(device),
        torch.tensor(joints, dtype=torch.long, device=device),
        bounds[:, 0].to(device),
        bounds[:, 1].to(device),
    )


def _check_q(q: Tensor) -> None:
    if q.shape[-1] != 46:
        raise ValueError(f"expected SKEL poses with 46 DOFs in the last dimension, got shape {tuple(q.shape)}")


def angle_prior(q: Tensor) -> Tensor:
    """HSMR's soft joint-limit barrier: q (..., 46) rad -> rho (..., 43), rho = e^{2(L-q)} + e^{2(q-U)} per table row."""
    _check_q(q)
    qids, low, high = _table_on(q.device, q.dtype)
    x = q[..., qids]
    # Not wrapped, as in HSMR: the barrier is meant to pull the raw parameters back, not their angle.
    return torch.exp(2.0 * (low - x)) + torch.exp(2.0 * (x - high))


def wrap_angles(q: Tensor) -> Tensor:
    """Wrap angles of any shape (rad) into (-pi, pi]; same shape out."""
    # ceil((q - pi) / 2pi) is exactly 0 on (-pi, pi], so in-range values come back bit-identical
    # (a remainder-based formula rounds small angles in float32); ceil also puts -pi on +pi.
    return q - (2.0 * _PI) * torch.ceil((q - _PI) / (2.0 * _PI))


def unwrap_angles(q: Tensor, dim: int = 0) -> Tensor:
    """Remove 2π jumps along `dim` (frames of a sequence): each step becomes its wrapped difference."""
    steps = wrap_angles(torch.diff(q, dim=dim))
    first = q.narrow(dim, 0, 1)
    return torch.cat((first, first + torch.cumsum(steps, dim=dim)), dim=dim)


def _outside(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    # Distance to the interval, 0 inside: at most one of the two terms is non-zero.
    return torch.relu(low - x) + torch.relu(x - high)


def limit_violation(q: Tensor, margin_deg: float = 0.0, bounds: Tensor | None = None) -> Tensor:
    """Total excess of the 43 limited DOFs beyond [L - margin, U + margin]: q (..., 46) rad -> (...) degrees, 0 inside.

    `bounds` (43,2) replaces HSMR's table, e.g. with `mirror_consistent_bounds()`.
    """
    _check_q(q)
    qids, low, high = _table_on(q.device, q.dtype)
    if bounds is not None:
        bounds = bounds.to(device=q.device, dtype=q.dtype)
        low, high = bounds[:, 0], bounds[:, 1]
    margin = math.radians(margin_deg)
    x = wrap_angles(q[..., qids])
    return torch.rad2deg(_outside(x, low - margin, high + margin)).sum(dim=-1)


def clamp_to_limits(q: Tensor) -> Tensor:
    """Project q (..., 46) rad into the limit box: limited DOFs wrapped then clamped, pelvis q0-q2 untouched."""
    _check_q(q)
    qids, low, high = _table_on(q.device, q.dtype)
    # Wrap first so an angle that is inside the box modulo 2pi is kept (as the same rotation),
    # consistent with limit_violation; clamping the raw value would snap it to the far bound.
    x = torch.clamp(wrap_angles(q[..., qids]), min=low, max=high)
    return q.index_copy(-1, qids, x)


def eval_violation_per_joint(q: Tensor, tol_deg: float = 5.0) -> Tensor:
    """HSMR evaluation violation per joint: q (..., 46) rad -> (..., 4) rad for EVAL_JOINTS (elbow_l, elbow_r, knee_l, knee_r)."""
    _check_q(q)
    qids, joints, low, high = _eval_on(q.device, q.dtype)
    tol = math.radians(tol_deg)
    per_dof = _outside(wrap_angles(q[..., qids]), low - tol, high + tol)
    out = per_dof.new_zeros(*per_dof.shape[:-1], len(EVAL_JOINTS))
    # Violations are >= 0, so a scatter-max into zeros is the per-joint max over its DOFs.
    return out.scatter_reduce(-1, joints.expand_as(per_dof), per_dof, reduce="amax", include_self=True)


def eval_violation(q: Tensor, tol_deg: float = 5.0) -> Tensor:
    """HSMR evaluation violation (knees, elbows, forearms; 5 deg tolerance): q (..., 46) rad -> (...) rad, worst joint; 0 = no violation."""
    return eval_violation_per_joint(q, tol_deg).amax(dim=-1)


def mirror_consistent_bounds() -> Tensor:
    """(43,2) bounds like LIMIT_BOUNDS, with every left DOF given the mirror of its right twin's
    range, so a fit of a person and of its mirror image are held by the same limits.

    HSMR's table is not mirror-consistent (scapula elevation has the same signed range on both
    sides although the mirror flips its sign; pro_sup and scapula_upward_rot differ in width).
    Fitting priors use this version; reported violations keep HSMR's table.
    """
    bounds = torch.as_tensor(LIMIT_BOUNDS, dtype=torch.float64).clone()
    row_of = {int(q): i for i, q in enumerate(LIMIT_QIDS)}
    for row, q in enumerate(LIMIT_QIDS):
        name = LIMIT_NAMES[row]
        twin = int(MIRROR_PERMUTATION[int(q)])
        if not name.endswith("_l") or twin not in row_of:
            continue
        low, high = LIMIT_BOUNDS[row_of[twin]]
        sign = float(MIRROR_SIGNS[int(q)])
        bounds[row] = torch.tensor(sorted((sign * low, sign * high)), dtype=torch.float64)
    return bounds
