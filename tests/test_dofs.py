"""fitting.dofs: the one DOF layout (joints, Euler letters and signs) agrees with the DOF axes it is built from."""
import math

import roma
import torch
from skelpgt.fitting.dofs import (
    DOF_AXES,
    DOF_TABLE,
    EULER_LAYOUT,
    JOINT_DOFS,
    MULTI_DOF_JOINTS,
    NUM_DOFS,
    SINGLE_DOFS,
    axis_angle_about,
    dofs_from_rotations,
    rotations_from_dofs,
)


def test_layout_gives_every_dof_to_exactly_one_joint_in_composition_order():
    assert [d for own in JOINT_DOFS for d in own] == list(range(NUM_DOFS))
    for j, own in enumerate(JOINT_DOFS):
        assert DOF_TABLE[j].tolist() == list(own) + [NUM_DOFS] * (3 - len(own))
    assert sorted(SINGLE_DOFS + tuple(d for j in MULTI_DOF_JOINTS for d in JOINT_DOFS[j])) == list(range(NUM_DOFS))


def test_euler_letters_and_signs_rebuild_each_multi_dof_joint_rotation():
    # An independent composition (roma's extrinsic Euler) must give the rotations the layout's own product gives.
    q = (torch.rand(32, NUM_DOFS, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5) * 2 * math.pi
    rot = rotations_from_dofs(q)
    for j, (letters, signs) in EULER_LAYOUT.items():
        angles = torch.stack([q[:, d] * s for d, s in zip(JOINT_DOFS[j], signs)], dim=-1)
        angles = torch.cat((angles, angles.new_zeros(len(q), 3 - angles.shape[1])), dim=-1)  # hands: third angle 0
        torch.testing.assert_close(roma.euler_to_rotmat(letters, angles), rot[:, j], atol=1e-12, rtol=0)


def test_dofs_come_back_from_their_rotations_inside_the_principal_range():
    q = (torch.rand(64, NUM_DOFS, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.5) * 2.8  # |q| < 1.4 < π/2
    # The oblique elbow/forearm axes are unit only to ~5e-9, so those joints turn by q·|n|.
    norm = torch.tensor(DOF_AXES, dtype=torch.float64).norm(dim=-1)
    assert (norm - 1).abs().max() < 1e-8
    torch.testing.assert_close(dofs_from_rotations(rotations_from_dofs(q)), q * norm, atol=1e-12, rtol=0)
    for d in SINGLE_DOFS:
        r = roma.rotvec_to_rotmat(q[:, d, None] * torch.tensor(DOF_AXES[d], dtype=torch.float64))
        torch.testing.assert_close(axis_angle_about(r, DOF_AXES[d]), q[:, d] * norm[d], atol=1e-12, rtol=0)


def test_a_model_passes_its_own_axes():
    q = torch.rand(4, NUM_DOFS, dtype=torch.float64)
    axes32 = torch.tensor(DOF_AXES, dtype=torch.float32)
    own = rotations_from_dofs(q, axes32)
    assert not torch.equal(own, rotations_from_dofs(q))  # float64 poses see the float32-rounded oblique axes
    torch.testing.assert_close(own, rotations_from_dofs(q), atol=1e-6, rtol=0)
