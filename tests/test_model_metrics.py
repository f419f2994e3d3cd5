"""Regressor metrics on toy inputs with hand-computed values."""

import math

import roma
import torch
from skelpgt.model.metrics import (
    ALL_44,
    limit_violation_rates,
    mpjpe,
    pa_mpjpe,
    pck,
    procrustes_align,
    pve,
)  # fmt: skip


def test_mpjpe_by_hand():
    gt = torch.zeros(1, 44, 3)
    pred = torch.zeros(1, 44, 3)
    pred[0, 25, 0] = 0.03  # one of the 14 joints 3 cm off, root (39) untouched
    pred[0, 43, 1] = 0.04
    assert torch.allclose(mpjpe(pred, gt), torch.tensor([(30.0 + 40.0) / 14]))
    # a global offset disappears after root subtraction
    assert torch.allclose(mpjpe(pred + 1.0, gt), mpjpe(pred, gt), atol=1e-3)
    assert torch.allclose(mpjpe(pred, gt, joints=ALL_44), torch.tensor([70.0 / 44]))


def test_pa_mpjpe_of_similarity_copy_is_zero():
    torch.manual_seed(0)
    gt = torch.randn(3, 44, 3, dtype=torch.float64)
    rot = roma.random_rotmat(3, dtype=torch.float64)
    pred = 2.5 * gt @ rot.transpose(1, 2) + torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64)
    assert pa_mpjpe(pred, gt).abs().max() < 1e-6
    assert mpjpe(pred, gt).min() > 100
    assert torch.allclose(procrustes_align(pred, gt), gt, atol=1e-9)
    # a reflection is not a rotation: its error must stay > 0
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert pa_mpjpe(mirrored, gt).min() > 1.0


def test_pve_and_pck_by_hand():
    v = torch.zeros(2, 5, 3)
    w = v.clone()
    w[0, :, 2] = 0.01
    assert torch.allclose(pve(w, v), torch.tensor([10.0, 0.0]))
    gt = torch.zeros(2, 44, 3)
    gt[..., 2] = 1.0
    gt[1, 5, 2] = 0.0  # invisible instance is ignored
    pred = torch.zeros(2, 44, 2)
    pred[0, 0, 0] = 0.07  # wrong at 0.05, right at 0.1
    pred[1, 1, 0] = 0.2  # wrong at both
    p05 = pck(pred, gt, 0.05)
    p10 = pck(pred, gt, 0.1)
    assert math.isclose(float(p05), (42 + 0.5 + 0.5) / 44, rel_tol=1e-6)
    assert math.isclose(float(p10), (43 + 0.5) / 44, rel_tol=1e-6)


def test_limit_violation_rates():
    q = torch.zeros(4, 46)
    q[1, 6] = -math.radians(25)  # right knee hyper-extended by 25 deg
    q[2, 13] = -math.radians(35)  # left knee by 35 deg
    r = limit_violation_rates(q)
    assert r["knee_elbow@10"] == 50.0 and r["knee_elbow@20"] == 50.0 and r["knee_elbow@30"] == 25.0
    assert r["all_dofs@30"] >= 25.0
