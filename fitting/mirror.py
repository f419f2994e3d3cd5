"""Left/right mirror of SKEL poses, root translations and SMPL poses.

The SKEL mirror follows HSMR's flip of q (skel-model.md §5 end, hsmr-pipeline.md §2.4): a fixed
permutation of the right/left DOF blocks with a sign per DOF. The signs agree with the joint axes
of skel-model.md §2.3 (BSM frames, z = body's right): reflecting in the sagittal plane keeps
rotations about z and reverses rotations about in-plane axes, and the left joints' declared axes
are already mirrored wherever a DOF maps with sign +1. One exception in the table: the ankle
(q7/q14) lists the same axis on both sides, so its mirror is exact only if the talus joint frames
themselves are mirror images; the mesh-level test with the SKEL layer decides.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .dofs import JOINT_DOFS, NUM_DOFS

__all__ = [
    "MIRROR_PERMUTATION",
    "MIRROR_SIGNS",
    "SMPL_JOINT_FLIP_PERMUTATION",
    "mirror_pose",
    "mirror_translation",
    "mirror_smpl_pose",
]

# Right/left joint pairs (skel-model.md §2.2), right first: femur, tibia (knee), talus (ankle),
# calcn (subtalar), toes (mtp), scapula, humerus, ulna (elbow), radius (pro_sup), hand (wrist).
# Their DOF blocks swap, DOF by DOF in composition order.
_MIRRORED_JOINTS = ((1, 6), (2, 7), (3, 8), (4, 9), (5, 10), (14, 19), (15, 20), (16, 21), (17, 22), (18, 23))

# Rotations about axes lying in the sagittal plane change sense under the mirror:
# pelvis list/rotation, spine and head bending/twist, scapula abduction/elevation, shoulder x/y.
_NEGATED: tuple[int, ...] = (1, 2, 17, 19, 20, 22, 23, 25, 26, 27, 36, 37, 29, 30, 39, 40)


def _build_permutation() -> list[int]:
    perm = list(range(NUM_DOFS))
    for right, left in _MIRRORED_JOINTS:
        for r, l in zip(JOINT_DOFS[right], JOINT_DOFS[left], strict=True):
            perm[r], perm[l] = l, r
    return perm


# new_q[i] = MIRROR_SIGNS[i] * q[MIRROR_PERMUTATION[i]]
MIRROR_PERMUTATION: Tensor = torch.tensor(_build_permutation(), dtype=torch.long)
MIRROR_SIGNS: Tensor = torch.tensor([-1.0 if i in _NEGATED else 1.0 for i in range(NUM_DOFS)], dtype=torch.float32)

# SMPL's 24-joint left/right swap (the one HMR2.0/SPIN use to flip SMPL poses).
SMPL_JOINT_FLIP_PERMUTATION: Tensor = torch.tensor(
    [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22], dtype=torch.long
)

# Axis-angle (x, y, z) under the x -> -x mirror: x is normal to the mirror plane and is kept,
# the in-plane y and z components change sense. The same vector negates x of a translation.
_SMPL_AA_SIGNS = (1.0, -1.0, -1.0)
_TRANSLATION_SIGNS = (-1.0, 1.0, 1.0)


@functools.lru_cache(maxsize=32)
def _pose_tables(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Cached so repeated calls inside training/fitting loops do not copy host->device each time.
    return MIRROR_PERMUTATION.to(device), MIRROR_SIGNS.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _smpl_tables(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return SMPL_JOINT_FLIP_PERMUTATION.to(device), torch.tensor(_SMPL_AA_SIGNS, device=device, dtype=dtype)


def mirror_pose(q: Tensor) -> Tensor:
    """Left/right mirror of SKEL poses: q (..., 46) rad -> (..., 46) rad, new[i] = sign[i] * q[perm[i]]."""
    if q.shape[-1] != NUM_DOFS:
        raise ValueError(f"expected SKEL poses with {NUM_DOFS} DOFs in the last dimension, got shape {tuple(q.shape)}")
    perm, signs = _pose_tables(q.device, q.dtype)
    return q[..., perm] * signs


def mirror_translation(t: Tensor) -> Tensor:
    """Mirror root translations in the SMPL frame (x = subject's left): t (..., 3) m -> (..., 3) m with x negated."""
    if t.shape[-1] != 3:
        raise ValueError(f"expected translations with 3 components in the last dimension, got shape {tuple(t.shape)}")
    return t * t.new_tensor(_TRANSLATION_SIGNS)


def mirror_smpl_pose(pose: Tensor) -> Tensor:
    """HMR2.0/SPIN SMPL pose flip: axis-angle pose (..., 72) rad -> (..., 72), joints swapped left/right, y and z negated."""
    if pose.shape[-1] != 72:
        raise ValueError(f"expected SMPL poses with 72 values in the last dimension, got shape {tuple(pose.shape)}")
    perm, signs = _smpl_tables(pose.device, pose.dtype)
    joints = pose.reshape(*pose.shape[:-1], 24, 3)
    return (joints[..., perm, :] * signs).reshape(pose.shape)
