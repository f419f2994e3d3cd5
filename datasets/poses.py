"""Random SMPL and SKEL poses for synthetic data and benchmarks: plausible, broad, and hard.

SMPL poses are axis-angle per joint in SMPL's frame (x = subject's left, y up, z front; the
T-pose has the arms along ±x). Ranges are per joint and per axis, sampled on the left side and
mirrored (y, z components negated) for the right, so both sides see the same distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from skelpgt.fitting.limits import LIMIT_QIDS, mirror_consistent_bounds

# (left-side SMPL joint, right twin or None) → per-axis (low, high) in radians, left convention.
_RANGES: dict[tuple[int, int | None], tuple[tuple[float, float], ...]] = {
    (1, 2): ((-1.6, 0.4), (-0.4, 0.4), (-0.2, 0.7)),  # hip: flexion is −x, abduction +z
    (4, 5): ((0.0, 2.0), (-0.1, 0.1), (-0.05, 0.05)),  # knee: flexion +x only
    (7, 8): ((-0.4, 0.5), (-0.2, 0.2), (-0.2, 0.2)),  # ankle
    (10, 11): ((-0.2, 0.2), (-0.1, 0.1), (-0.1, 0.1)),  # foot
    (3, None): ((-0.2, 0.5), (-0.3, 0.3), (-0.25, 0.25)),  # spine1
    (6, None): ((-0.1, 0.3), (-0.2, 0.2), (-0.15, 0.15)),  # spine2
    (9, None): ((-0.1, 0.3), (-0.2, 0.2), (-0.15, 0.15)),  # spine3
    (12, None): ((-0.3, 0.4), (-0.4, 0.4), (-0.2, 0.2)),  # neck
    (15, None): ((-0.3, 0.3), (-0.4, 0.4), (-0.2, 0.2)),  # head
    (13, 14): ((-0.15, 0.15), (-0.2, 0.2), (-0.3, 0.3)),  # collar
    (16, 17): ((-0.6, 0.6), (-1.3, 0.5), (-1.3, 1.2)),  # shoulder: forward −y, up +z
    (18, 19): ((-0.1, 0.1), (-2.2, 0.0), (-0.1, 0.1)),  # elbow: flexion −y
    (20, 21): ((-0.5, 0.5), (-0.3, 0.3), (-0.6, 0.6)),  # wrist
    (22, 23): ((-0.2, 0.2), (-0.2, 0.2), (-0.2, 0.2)),  # hand
}

# Hard cases as (left joint, axis, value) settings on top of a plausible sample.
_HARD = {
    "deep_squat": [(1, 0, -2.1), (2, 0, -2.1), (4, 0, 2.3), (5, 0, 2.3), (7, 0, 0.5), (8, 0, 0.5), (3, 0, 0.4)],
    "arms_overhead": [(16, 2, 1.3), (17, 2, -1.3), (18, 1, -0.3), (19, 1, 0.3)],
    "twisted_spine": [(3, 1, 0.45), (6, 1, 0.4), (9, 1, 0.4), (12, 1, 0.3)],
    "high_kick": [(1, 0, -1.9), (4, 0, 0.1), (2, 0, 0.3), (3, 0, -0.2)],
    "deep_bow": [(3, 0, 0.8), (6, 0, 0.5), (9, 0, 0.4), (1, 0, -0.9), (2, 0, -0.9)],
}
HARD_POSES = tuple(_HARD)


def sample_smpl_poses(n: int, seed: int = 0, hard_fraction: float = 0.0, global_rotation: float = 0.6) -> Tensor:
    """(n,72) SMPL axis-angle poses: plausible per-joint ranges; a fraction set to hard cases."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.zeros(n, 24, 3)
    mirror = torch.tensor([1.0, -1.0, -1.0])
    for (left, right), ranges in _RANGES.items():
        bounds = torch.tensor(ranges)
        for joint, sign in ((left, None), (right, mirror)):
            if joint is None:
                continue
            value = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(n, 3, generator=g)
            pose[:, joint] = value if sign is None else value * sign
    pose[:, 0] = torch.randn(n, 3, generator=g) * global_rotation
    hard = torch.rand(n, generator=g) < hard_fraction
    kinds = torch.randint(len(_HARD), (n,), generator=g)
    for i in torch.nonzero(hard).flatten().tolist():
        for joint, axis, value in _HARD[HARD_POSES[int(kinds[i])]]:
            pose[i, joint, axis] = value
    return pose.reshape(n, 72)


def sample_skel_poses(n: int, seed: int = 0, global_rotation: float = 0.5) -> Tensor:
    """(n,46) SKEL poses uniform inside the mirror-consistent joint limits, random pelvis."""
    g = torch.Generator().manual_seed(seed)
    bounds = mirror_consistent_bounds().float()
    q = torch.zeros(n, 46)
    q[:, list(LIMIT_QIDS)] = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(n, len(LIMIT_QIDS), generator=g)
    q[:, :3] = torch.randn(n, 3, generator=g) * global_rotation
    return q
