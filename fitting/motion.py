"""A smooth synthetic SMPL motion for sequence checks, and SMPL's per-frame joint rotation change.

The motion is what breaks per-frame Euler decompositions: a Z-up root (AMASS convention, so the
root holds a 90° turn about x) that turns a full 360° about the vertical and so passes the
pelvis through gimbal lock, with swaying, walking legs and arms raised overhead.
"""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor


def _rx(a: Tensor) -> Tensor:
    return roma.rotvec_to_rotmat(a[:, None] * torch.tensor([1.0, 0.0, 0.0]))


def _ry(a: Tensor) -> Tensor:
    return roma.rotvec_to_rotmat(a[:, None] * torch.tensor([0.0, 1.0, 0.0]))


def _rz(a: Tensor) -> Tensor:
    return roma.rotvec_to_rotmat(a[:, None] * torch.tensor([0.0, 0.0, 1.0]))


def synthetic_motion(frames: int = 120, seed: int = 0, turn_deg: float = 360.0, forward_lean_deg: float = 0.0) -> tuple[Tensor, Tensor]:
    """SMPL axis-angle poses (T,72) and translations (T,3) m of a smooth Z-up motion.

    The root turns `turn_deg` about the world's z (starting 20° before facing +y, so it crosses
    the lock at 0° and 180°), sways sideways, and leans forward by up to `forward_lean_deg`
    (a lean moves the root's path off the exact lock point). `seed` shifts the limb phases.
    """
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(8, generator=g) * 2 * math.pi
    t = torch.linspace(0.0, 1.0, frames)
    # smoothstep: starts and ends at rest, peak angular speed 1.5× the mean
    ease = t * t * (3 - 2 * t)
    yaw = torch.deg2rad(-20.0 + turn_deg * ease)
    sway = torch.deg2rad(torch.tensor(8.0)) * torch.sin(4 * math.pi * t + phase[0])
    lean = torch.deg2rad(torch.tensor(forward_lean_deg)) * torch.sin(3 * math.pi * t + phase[1]) ** 2
    root = _rz(yaw) @ _rx(torch.full_like(t, math.pi / 2)) @ _rz(sway) @ _rx(lean)
    pose = torch.zeros(frames, 24, 3)
    pose[:, 0] = roma.rotmat_to_rotvec(root)
    step = 6 * math.pi * t
    hip = torch.deg2rad(torch.tensor(35.0)) * torch.sin(step + phase[2])
    pose[:, 1, 0], pose[:, 2, 0] = -hip, hip  # hips: flexion
    pose[:, 4, 0] = torch.deg2rad(torch.tensor(30.0)) * (1 + torch.sin(step + phase[2] - 1.0))  # knees
    pose[:, 5, 0] = torch.deg2rad(torch.tensor(30.0)) * (1 + torch.sin(step + phase[2] + math.pi - 1.0))
    pose[:, 3, 1] = torch.deg2rad(torch.tensor(15.0)) * torch.sin(2 * math.pi * t + phase[3])  # spine twist
    raise_ = torch.deg2rad(torch.tensor(80.0)) * (1 - torch.cos(4 * math.pi * t + phase[4])) / 2
    pose[:, 16, 2], pose[:, 17, 2] = -raise_ - 0.6, raise_ + 0.6  # shoulders: from the A-pose up to overhead
    pose[:, 16, 1] = torch.deg2rad(torch.tensor(40.0)) * torch.sin(4 * math.pi * t + phase[5])  # arm swing fore/aft
    pose[:, 17, 1] = torch.deg2rad(torch.tensor(40.0)) * torch.sin(4 * math.pi * t + phase[6])
    pose[:, 18, 1] = -torch.deg2rad(torch.tensor(60.0)) * (1 + torch.sin(2 * math.pi * t + phase[7])) / 2  # elbows
    pose[:, 19, 1] = torch.deg2rad(torch.tensor(60.0)) * (1 + torch.sin(2 * math.pi * t + phase[7])) / 2
    trans = torch.stack((0.3 * torch.sin(2 * math.pi * t), 0.2 * t, 0.9 + 0.02 * torch.sin(step)), dim=-1)
    return pose.reshape(frames, 72), trans


def smpl_rotation_steps(pose: Tensor) -> Tensor:
    """Geodesic angle (T-1,24) rad between each SMPL joint's rotation (root: global) at consecutive frames of pose (T,72)."""
    rot = roma.rotvec_to_rotmat(pose.double().reshape(pose.shape[0], 24, 3))
    return roma.rotmat_geodesic_distance(rot[:-1], rot[1:])
