"""Sequences: continuous SKEL joint-angle curves through gimbal lock and a 360° turn, mesh kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch

from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.dofs import DOF_AXES, DOFS_PER_JOINT, dofs_from_rotations
from skelpgt.fitting.motion import smpl_rotation_steps, synthetic_motion
from skelpgt.fitting.sequence import BALL_JOINTS, SequenceConfig, ball_joint_dofs, continuous_dofs, convert_sequence, rotation_steps

FRAMES = 120


def _max_step_deg(q: torch.Tensor) -> float:
    return float((q[1:] - q[:-1]).abs().max().rad2deg())


def test_branch_and_turn_rewriting_keeps_every_rotation(skel_model):
    """Frames written on the far Euler branch and shifted by 2π come back continuous, same rotations."""
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(0, 1, 40)[:, None]
    q = 0.6 * torch.sin(2 * math.pi * t * torch.rand(1, 46, generator=g) + torch.rand(1, 46, generator=g) * 6)
    scrambled = q.clone()
    dofs = ball_joint_dofs()
    flip = torch.rand(40, len(dofs), generator=g) < 0.5
    for j, (a, b, c) in enumerate(dofs.tolist()):
        rows = flip[:, j]
        scrambled[rows, a] += math.pi
        scrambled[rows, b] = math.pi - scrambled[rows, b]
        scrambled[rows, c] += math.pi
    scrambled += 2 * math.pi * torch.randint(-2, 3, scrambled.shape, generator=g)
    out = continuous_dofs(scrambled, rotation_steps(scrambled, skel_model))
    same = roma.rotmat_geodesic_distance(skel_model.pose_rotations(out.double()), skel_model.pose_rotations(q.double()))
    assert same.max() < 1e-5
    torch.testing.assert_close(out - out[:1], q - q[:1], atol=1e-5, rtol=0)  # the original curves, up to a constant 2πk
    assert _max_step_deg(scrambled) > 90 and _max_step_deg(out) == pytest.approx(_max_step_deg(q), abs=1e-3)


def test_sequence_continuous_through_gimbal_lock_and_full_turn(family_dir):
    """Z-up root, 360° turn through the pelvis lock: DOF steps ≤ 2 × the largest SMPL step + 5°, mesh error per frame kept."""
    converter = Converter.from_models_dir(family_dir, ConvertConfig())
    pose, trans = synthetic_motion(FRAMES, seed=0, forward_lean_deg=10.0)
    betas = torch.zeros(10)
    independent = converter.convert(pose, betas, trans)
    seq = convert_sequence(converter, pose, betas, trans, SequenceConfig(), independent=independent)
    assert bool(seq.converged.all()) and bool(independent.converged.all())

    bound = 2 * float(smpl_rotation_steps(pose).max().rad2deg()) + 5.0
    pelvis_q1 = independent.poses[:, 1]
    assert float(pelvis_q1.cos().abs().min()) < 0.1, "the motion must take the pelvis to gimbal lock"
    assert _max_step_deg(independent.poses) > 90  # what per-frame conversion gives: the check can fail
    assert _max_step_deg(seq.poses) <= bound

    # same mesh, frame by frame: at most 1 mm more mean vertex error on any frame (near lock the
    # pelvis trades a little accuracy for continuity), no worse on average
    assert float((seq.pve_mean - independent.pve_mean).max()) < 1e-3
    assert float(seq.pve_mean.mean()) <= float(independent.pve_mean.mean()) * 1.02
    # frames the continuity pass only rewrote keep their mesh exactly: same rotations, same betas
    rot = roma.rotmat_geodesic_distance(converter.skel.pose_rotations(seq.poses.double()), converter.skel.pose_rotations(independent.poses.double()))
    assert int((rot.amax(dim=1) < 1e-4).sum()) >= FRAMES // 2


def test_shared_betas_one_shape_per_sequence(models_dir):
    converter = Converter.from_models_dir(models_dir, ConvertConfig())
    pose, trans = synthetic_motion(16, seed=3)
    betas = torch.linspace(-1, 1, 10)
    independent = converter.convert(pose, betas, trans)
    seq = convert_sequence(converter, pose, betas, trans, SequenceConfig(shared_betas=True), independent=independent)
    assert float((seq.betas - seq.betas[:1]).abs().max()) == 0.0
    assert float((independent.betas - independent.betas[:1]).abs().max()) > 0  # per-frame fits differ
    assert float(seq.pve_mean.mean()) < float(independent.pve_mean.mean()) + 1e-3


def test_ball_joints_are_the_rotation_only_three_dof_joints():
    assert all(DOFS_PER_JOINT[j] == 3 for j in BALL_JOINTS)
    assert np.array_equal(ball_joint_dofs()[0], [0, 1, 2])


@pytest.mark.parametrize("joint", [15, 20, 1])  # right and left shoulder, right hip
def test_shoulder_and_hip_lock_stay_continuous(skel_model, joint):
    """A limb rotation passing 3° from its Euler lock: per-frame DOFs race, the continuous ones keep to the bound."""
    frames = 60
    dofs = ball_joint_dofs()[list(BALL_JOINTS).index(joint)]
    u0, u1, u2 = (torch.tensor(DOF_AXES[d], dtype=torch.float64) for d in dofs)
    theta = torch.linspace(-1.0, 1.0, frames, dtype=torch.float64)
    near_lock = roma.rotvec_to_rotmat(u1 * math.radians(87.0))  # middle DOF 3° short of 90°
    path = roma.rotvec_to_rotmat(theta[:, None] * u0) @ near_lock  # turns about the first axis, seen from outside
    rot = torch.eye(3, dtype=torch.float64).repeat(frames, 24, 1, 1)
    rot[:, joint] = path
    q_ind = dofs_from_rotations(rot)
    out = continuous_dofs(q_ind, rotation_steps(q_ind, skel_model))
    step = float(roma.rotmat_geodesic_distance(path[1:], path[:-1]).max().rad2deg())
    assert _max_step_deg(q_ind) > 2 * step + 5  # per-frame decomposition races through the lock
    assert _max_step_deg(out) <= 2 * step + 5
    err = roma.rotmat_geodesic_distance(skel_model.pose_rotations(out.double())[:, joint], path)
    # away from lock the rotation is the given one; near it q0 lags behind (the mesh polish of
    # convert_sequence then trades that lag against continuity)
    far = out[:, dofs[1]].cos().abs() > 0.75  # more than ~50° from lock
    assert int(far.sum()) >= 8 and float(err[far].max()) < 1e-6
