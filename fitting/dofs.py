"""SKEL's pose convention in one place: which of the 46 DOFs drive which joint, about which axes,
and the DOF ↔ per-joint rotation conversions (skel-model.md §2.1–2.3).

Frames: every rotation here is a joint's DOF rotation Rp in its BSM joint frame. A joint with
DOFs d0, d1, d2 composes Rp = Rot(n_d2, q_d2)·Rot(n_d1, q_d1)·Rot(n_d0, q_d0) (the first DOF acts
first). Multi-DOF joints use signed coordinate axes, so Rp is an extrinsic Euler product and its
DOFs come back by `roma.rotmat_to_euler`; 2-DOF joints (hands) are completed to a 3-axis
convention whose extra angle is dropped. 1-DOF joints turn about a fixed (possibly oblique) axis.
Angles are radians.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import roma
import torch
from torch import Tensor

# DOFs per joint, assigned consecutively in joint order (§2.1).
DOFS_PER_JOINT = (3, 3, 1, 1, 1, 1, 3, 1, 1, 1, 1, 3, 3, 3, 3, 3, 1, 1, 2, 3, 3, 1, 1, 2)
NUM_JOINTS = len(DOFS_PER_JOINT)
NUM_DOFS = sum(DOFS_PER_JOINT)
DOF_JOINT = tuple(j for j, n in enumerate(DOFS_PER_JOINT) for _ in range(n))
# DOF ids of each joint, in composition order.
JOINT_DOFS = tuple(tuple(i for i, dj in enumerate(DOF_JOINT) if dj == j) for j in range(NUM_JOINTS))

DOF_NAMES = (
    "pelvis_tilt", "pelvis_list", "pelvis_rotation",
    "hip_flexion_r", "hip_adduction_r", "hip_rotation_r", "knee_angle_r", "ankle_angle_r",
    "subtalar_angle_r", "mtp_angle_r",
    "hip_flexion_l", "hip_adduction_l", "hip_rotation_l", "knee_angle_l", "ankle_angle_l",
    "subtalar_angle_l", "mtp_angle_l",
    "lumbar_bending", "lumbar_extension", "lumbar_twist",
    "thorax_bending", "thorax_extension", "thorax_twist",
    "head_bending", "head_extension", "head_twist",
    "scapula_abduction_r", "scapula_elevation_r", "scapula_upward_rot_r",
    "shoulder_r_x", "shoulder_r_y", "shoulder_r_z", "elbow_flexion_r", "pro_sup_r",
    "wrist_flexion_r", "wrist_deviation_r",
    "scapula_abduction_l", "scapula_elevation_l", "scapula_upward_rot_l",
    "shoulder_l_x", "shoulder_l_y", "shoulder_l_z", "elbow_flexion_l", "pro_sup_l",
    "wrist_flexion_l", "wrist_deviation_l",
)  # fmt: skip

_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def _neg(axis: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(-a for a in axis)


def _pin_axis(alpha: float, beta: float) -> tuple[float, float, float]:
    """Axis of an OpenSim pin joint: Rx(α)·Ry(β)·Rz(γ)·e_z (γ drops out)."""
    return (math.sin(beta), -math.sin(alpha) * math.cos(beta), math.cos(alpha) * math.cos(beta))


# Signed rotation axis of every DOF in its BSM joint frame (§2.3).
DOF_AXES = (
    _Z, _X, _Y,  # pelvis
    _Z, _X, _Y,  # femur_r
    _neg(_Z),  # knee_r: Rz(-q)
    _pin_axis(0.175895, -0.105208),  # ankle_r
    _pin_axis(-1.76818999, 0.906223),  # subtalar_r
    _pin_axis(-3.141589999, 0.6199010),  # mtp_r
    _Z, _neg(_X), _neg(_Y),  # femur_l
    _neg(_Z),  # knee_l
    _pin_axis(0.175895, -0.105208),  # ankle_l (same as right in bsm.osim)
    _pin_axis(1.768189999, -0.906223),  # subtalar_l
    _pin_axis(-3.141589999, -0.6199010),  # mtp_l
    _X, _Z, _Y,  # lumbar
    _X, _Z, _Y,  # thorax
    _X, _Z, _Y,  # head
    _Y, _neg(_Z), _neg(_X),  # scapula_r
    _X, _Y, _Z,  # humerus_r
    (0.0494, 0.0366, 0.99810825),  # elbow_r (oblique)
    (-0.01716099, 0.99266564, -0.11966796),  # pro_sup_r (oblique)
    _X, _neg(_Z),  # hand_r
    _Y, _Z, _X,  # scapula_l
    _X, _Y, _Z,  # humerus_l
    (-0.0494, -0.0366, 0.99810825),  # elbow_l
    (0.01716099, -0.99266564, -0.11966796),  # pro_sup_l
    _neg(_X), _neg(_Z),  # hand_l
)  # fmt: skip

SINGLE_DOF_JOINTS = tuple(j for j, n in enumerate(DOFS_PER_JOINT) if n == 1)
MULTI_DOF_JOINTS = tuple(j for j, n in enumerate(DOFS_PER_JOINT) if n > 1)
SINGLE_DOFS = tuple(JOINT_DOFS[j][0] for j in SINGLE_DOF_JOINTS)  # the DOF of each 1-DOF joint
# 3-DOF joints that only rotate (the spine and scapula DOFs also translate their joint).
BALL_JOINTS = (0, 1, 6, 15, 20)  # pelvis, femur_r, femur_l, humerus_r, humerus_l


def _euler_layout() -> dict[int, tuple[str, tuple[float, ...]]]:
    """Per multi-DOF joint: extrinsic Euler letters (3) and the sign of each DOF's axis."""
    out = {}
    for j in MULTI_DOF_JOINTS:
        letters, signs = "", []
        for i in JOINT_DOFS[j]:
            a = np.asarray(DOF_AXES[i])
            k = int(np.abs(a).argmax())
            letters += "xyz"[k]
            signs.append(float(np.sign(a[k])))
        if len(letters) == 2:  # hands: complete to three axes, the extra angle is dropped
            letters += next(c for c in "xyz" if c not in letters)
        out[j] = (letters, tuple(signs))
    return out


EULER_LAYOUT = _euler_layout()


def _dof_table() -> Tensor:
    """(24,3) DOF ids each joint composes, first acting first; index NUM_DOFS stands for the identity."""
    table = torch.full((NUM_JOINTS, 3), NUM_DOFS, dtype=torch.long)
    for j, own in enumerate(JOINT_DOFS):
        table[j, : len(own)] = torch.tensor(own)
    return table


DOF_TABLE = _dof_table()
# Exact (float64) axes; a caller holding its own copy (SKEL's float32 buffer) passes that instead.
_AXES = torch.tensor(DOF_AXES, dtype=torch.float64)


@functools.lru_cache(maxsize=32)
def _table_on(device: torch.device) -> Tensor:
    # Cached so a call inside a fitting loop does not copy host→device each time.
    return DOF_TABLE.to(device)


def rotations_from_dofs(q: Tensor, axes: Tensor | None = None) -> Tensor:
    """q (B,46) rad → per-joint DOF rotations Rp (B,24,3,3) in the BSM joint frames.

    `axes` (46,3): the DOF axes to use (default: `DOF_AXES` in q's dtype)."""
    b = q.shape[0]
    axes = _AXES.to(q.device, q.dtype) if axes is None else axes
    per_dof = roma.rotvec_to_rotmat(q[..., None] * axes)  # (B,46,3,3)
    eye = torch.eye(3, dtype=q.dtype, device=q.device).expand(b, 1, 3, 3)
    per_dof = torch.cat((per_dof, eye), dim=1)
    t = _table_on(q.device)
    return per_dof[:, t[:, 2]] @ per_dof[:, t[:, 1]] @ per_dof[:, t[:, 0]]


def joint_dofs_from_rotation(joint: int, rot: Tensor) -> Tensor:
    """DOF values (B,n) rad of multi-DOF joint `joint` from its BSM-frame rotation (B,3,3) (Euler decomposition)."""
    letters, signs = EULER_LAYOUT[joint]
    angles = roma.rotmat_to_euler(letters, rot)
    return torch.stack([angles[:, i] * sign for i, sign in enumerate(signs)], dim=-1)


def axis_angle_about(rot: Tensor, axis: tuple[float, float, float]) -> Tensor:
    """The angle (B,) rad about the fixed `axis` that best explains each rotation (B,3,3)."""
    n = torch.as_tensor(axis, dtype=rot.dtype, device=rot.device)
    n = n / n.norm()
    w = torch.stack((rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]), -1) / 2
    cos = (torch.diagonal(rot, dim1=1, dim2=2).sum(-1) - torch.einsum("a,bac,c->b", n, rot, n)) / 2
    return torch.atan2(w @ n, cos)


def dofs_from_rotations(rotations: Tensor) -> Tensor:
    """Per-joint rotations in the BSM joint frames (B,24,3,3) → the closest DOF values q (B,46) rad."""
    q = rotations.new_zeros(rotations.shape[0], NUM_DOFS)
    for j, dofs in enumerate(JOINT_DOFS):  # 24 small batched ops
        if j in EULER_LAYOUT:
            q[:, list(dofs)] = joint_dofs_from_rotation(j, rotations[:, j])
        else:
            q[:, dofs[0]] = axis_angle_about(rotations[:, j], DOF_AXES[dofs[0]])
    return q
