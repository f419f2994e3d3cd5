"""SKEL layer: the properties of skel-model.md §2–3, checked on the synthetic stand-in."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import roma
import torch

from skelpgt.fitting.mirror import mirror_pose, mirror_translation
from skelpgt.fitting.pickles import ModelFileError, load_model_pickle
from skelpgt.fitting.skel import DOF_JOINT, NUM_DOFS, PARENTS, SKEL
from skelpgt.fitting.synthetic import SKEL_JOINT_MIRROR

MIRROR_X = torch.tensor([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def skel_model(family_dir):
    """The male SKEL of each stand-in family (overrides conftest's family-A one in this module)."""
    return SKEL.from_file(family_dir, gender="male")


def _subtree(joint: int) -> set[int]:
    out = {joint}
    for j in range(1, 24):  # parents precede children
        if PARENTS[j] in out:
            out.add(j)
    return out


def _random(b: int, seed: int = 0, scale: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 46, generator=g) * scale, torch.randn(b, 10, generator=g), torch.randn(b, 3, generator=g)


def test_zero_pose_returns_template(skel_model):
    zero_q, zero_b = torch.zeros(2, 46), torch.zeros(2, 10)
    out = skel_model(zero_q, zero_b)
    assert out.skin_verts.dtype == torch.float32
    torch.testing.assert_close(out.skin_verts, skel_model.v_template.expand(2, -1, -1), atol=1e-6, rtol=0)
    _, betas, trans = _random(2)
    out = skel_model(zero_q, betas, trans)
    torch.testing.assert_close(out.skin_verts, out.v_shaped + trans[:, None], atol=1e-6, rtol=0)


def test_rest_joints_are_regressed_from_shaped_skin(skel_model):
    _, betas, _ = _random(3, seed=1)
    out = skel_model(torch.zeros(3, 46), betas)
    expected = torch.einsum("jv,bvc->bjc", skel_model.J_regressor_osim, out.v_shaped)
    # float32: family B's regressor rows sum a few hundred vertices, in another order than the einsum
    torch.testing.assert_close(out.joints, expected, atol=3e-6, rtol=0)
    torch.testing.assert_close(out.joints_tpose, expected, atol=3e-6, rtol=0)


@pytest.mark.parametrize("dof", range(NUM_DOFS))
def test_each_dof_moves_only_its_subtree(skel_model, dof):
    betas = torch.zeros(1, 10)
    rest = skel_model(torch.zeros(1, 46), betas)
    q = torch.zeros(1, 46)
    q[0, dof] = 0.4
    posed = skel_model(q, betas)
    moved = (posed.joints - rest.joints).norm(dim=-1)[0] > 1e-6
    subtree = _subtree(DOF_JOINT[dof])
    outside = [j for j in range(24) if j not in subtree]
    assert not moved[outside].any(), f"DOF {dof} moved joints {torch.nonzero(moved).flatten().tolist()} outside {sorted(subtree)}"
    assert (posed.skin_verts - rest.skin_verts).norm(dim=-1).max() > 1e-3, f"DOF {dof} moves no skin"
    ori_changed = (posed.joints_ori - rest.joints_ori).abs().amax(dim=(-1, -2))[0] > 1e-6
    assert not ori_changed[outside].any()
    assert ori_changed[DOF_JOINT[dof]], f"DOF {dof} does not rotate its own joint"


def test_pelvis_dofs_rotate_the_body_rigidly(skel_model):
    _, betas, _ = _random(1, seed=2)
    rest = skel_model(torch.zeros(1, 46), betas)
    q = torch.zeros(1, 46)
    q[0, :3] = torch.tensor([0.7, -0.4, 1.1])
    posed = skel_model(q, betas)
    pelvis = rest.joints[:, :1]
    rot, t = roma.rigid_points_registration(rest.skin_verts - pelvis, posed.skin_verts - pelvis)
    aligned = (rest.skin_verts - pelvis) @ rot.transpose(-1, -2) + t[:, None] + pelvis
    assert (aligned - posed.skin_verts).norm(dim=-1).max() < 1e-5
    assert roma.rotmat_geodesic_distance(rot, torch.eye(3)).item() > 0.5  # it did rotate
    torch.testing.assert_close(posed.joints[:, 0], rest.joints[:, 0], atol=1e-6, rtol=0)


def test_mirrored_pose_gives_mirrored_mesh(skel_model, vertex_mirror):
    poses, betas, trans = _random(4, seed=3, scale=0.5)
    torch.testing.assert_close(mirror_pose(mirror_pose(poses)), poses, atol=0, rtol=0)
    out = skel_model(poses, betas, trans)
    mirrored = skel_model(mirror_pose(poses), betas, mirror_translation(trans))
    assert (mirrored.skin_verts - out.skin_verts[:, vertex_mirror] * MIRROR_X).abs().max() < 2e-5
    assert (mirrored.joints - out.joints[:, list(SKEL_JOINT_MIRROR)] * MIRROR_X).abs().max() < 2e-5
    # A non-mirrored pose (identity permutation) would not match:
    assert (skel_model(poses, betas, mirror_translation(trans)).skin_verts - out.skin_verts[:, vertex_mirror] * MIRROR_X).abs().max() > 1e-2


def test_batch_with_mixed_betas_equals_per_sample_calls(skel_model):
    poses, betas, trans = _random(5, seed=4)
    batch = skel_model(poses, betas, trans, skelmesh=True)
    for i in range(5):
        single = skel_model(poses[i : i + 1], betas[i : i + 1], trans[i : i + 1], skelmesh=True)
        for field in ("skin_verts", "joints", "joints_ori", "skel_verts"):
            torch.testing.assert_close(getattr(batch, field)[i : i + 1], getattr(single, field), atol=2e-6, rtol=0)


def test_gradients_reach_every_dof_and_beta(skel_model):
    poses, betas, trans = _random(3, seed=5)
    poses.requires_grad_(True)
    betas.requires_grad_(True)
    trans.requires_grad_(True)
    out = skel_model(poses, betas, trans)
    target = torch.randn_like(out.skin_verts)
    ((out.skin_verts * target).sum() + out.joints.square().sum()).backward()
    for name, t in (("poses", poses), ("betas", betas), ("trans", trans)):
        assert torch.isfinite(t.grad).all(), name
        assert (t.grad.abs() > 0).all(), f"{name}: no gradient at {torch.nonzero(t.grad == 0).tolist()}"


def test_gradient_is_finite_at_zero_pose(skel_model):
    poses = torch.zeros(2, 46, requires_grad=True)
    out = skel_model(poses, torch.zeros(2, 10))
    out.skin_verts.sum().backward()
    assert torch.isfinite(poses.grad).all()


def test_skeleton_mesh_sits_on_its_bones_at_rest(skel_model):
    out = skel_model(torch.zeros(1, 46), torch.zeros(1, 10), skelmesh=True)
    bone = skel_model.skel_weights_rigid.coalesce().indices()[1]
    for j, child in ((1, 2), (2, 3), (15, 16), (20, 21), (11, 12)):
        centre = out.skel_verts[0, bone == j].mean(0)
        midpoint = 0.5 * (out.joints[0, j] + out.joints[0, child])
        assert (centre - midpoint).norm() < 1e-3, f"bone {j}"
    assert skel_model(torch.zeros(1, 46), torch.zeros(1, 10)).skel_verts is None


def test_skeleton_follows_its_bone_when_posed(skel_model):
    q = torch.zeros(1, 46)
    q[0, 6] = 1.0  # right knee
    rest = skel_model(torch.zeros(1, 46), torch.zeros(1, 10), skelmesh=True)
    posed = skel_model(q, torch.zeros(1, 10), skelmesh=True)
    bone = skel_model.skel_weights_rigid.coalesce().indices()[1]
    shin = bone == 2
    # Each shin vertex keeps its distance to the knee joint (rigid motion about the knee).
    d_rest = (rest.skel_verts[0, shin] - rest.joints[0, 2]).norm(dim=-1)
    d_posed = (posed.skel_verts[0, shin] - posed.joints[0, 2]).norm(dim=-1)
    torch.testing.assert_close(d_posed, d_rest, atol=1e-5, rtol=0)
    assert (posed.skel_verts[0, shin] - rest.skel_verts[0, shin]).norm(dim=-1).max() > 0.05
    assert (posed.skel_verts[0, bone == 6] - rest.skel_verts[0, bone == 6]).abs().max() < 1e-6


def test_from_file_accepts_file_folder_and_models_dir(models_dir):
    a = SKEL.from_file(models_dir / "skel" / "skel_female.pkl", gender="female")
    b = SKEL.from_file(models_dir / "skel", gender="female")
    c = SKEL.from_file(models_dir, gender="female")
    for m in (b, c):
        torch.testing.assert_close(m.v_template, a.v_template)
    assert not torch.equal(a.v_template, SKEL.from_file(models_dir).v_template)  # female ≠ male


def test_old_and_broken_files_give_clear_errors(models_dir, tmp_path):
    data = load_model_pickle(models_dir / "skel" / "skel_male.pkl")
    v10 = {k: v for k, v in data.items() if k not in ("version", "skin_weights")}
    v10["weights"] = data["skin_weights"].toarray()
    with open(tmp_path / "skel_male.pkl", "wb") as f:
        pickle.dump(v10, f)
    with pytest.raises(ModelFileError, match=r"skel_male\.pkl.*no 'version' key.*v1\.0.*1\.1\.1"):
        SKEL.from_file(tmp_path)

    with open(tmp_path / "skel_male.pkl", "wb") as f:
        pickle.dump({**data, "version": "1.1"}, f)
    with pytest.raises(ModelFileError, match=r"version '1\.1', expected '1\.1\.1'"):
        SKEL.from_file(tmp_path)

    raw = (models_dir / "skel" / "skel_male.pkl").read_bytes()
    (tmp_path / "skel_male.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"skel_male\.pkl: not a readable model pickle"):
        SKEL.from_file(tmp_path)

    with open(tmp_path / "skel_male.pkl", "wb") as f:
        pickle.dump({**data, "posedirs": np.zeros((6890, 3, 200))}, f)
    with pytest.raises(ModelFileError, match=r"'posedirs' has shape \(6890, 3, 200\)"):
        SKEL.from_file(tmp_path)

    with pytest.raises(ModelFileError, match="no skel_female.pkl"):
        SKEL.from_file(tmp_path / "nowhere", gender="female")
    with pytest.raises(ValueError, match="only as 'male' or 'female'"):
        SKEL.from_file(models_dir, gender="neutral")


def test_rejects_wrong_input_shapes(skel_model):
    with pytest.raises(ValueError, match=r"poses \(B,46\)"):
        skel_model(torch.zeros(2, 45), torch.zeros(2, 10))


def test_matches_a_literal_float64_reading_of_the_spec(family_dir, skel_model):
    from skel_reference import reference_forward

    data = load_model_pickle(family_dir / "skel" / "skel_male.pkl")
    poses, betas, trans = _random(3, seed=6, scale=0.8)
    out = skel_model(poses, betas * 1.5, trans)
    for i in range(3):
        skin, joints, ori = reference_forward(data, poses[i].double().numpy(), (betas[i] * 1.5).double().numpy(), trans[i].double().numpy())
        assert np.abs(out.skin_verts[i].double().numpy() - skin).max() < 1e-5
        assert np.abs(out.joints[i].double().numpy() - joints).max() < 1e-5
        assert np.abs(out.joints_ori[i].double().numpy() - ori).max() < 2e-5
