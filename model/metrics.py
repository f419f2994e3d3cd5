"""Evaluation metrics of hsmr-pipeline.md §6.2: MPJPE, PA-MPJPE, PVE, 2D PCK, joint-limit violations.

All 3D metrics take (B,K,3) arrays in metres and return per-sample values in millimetres (B,);
callers average. Root-relative metrics subtract `root` from both sides first.
"""

from __future__ import annotations

import torch
from skelpgt.fitting.keypoints import ROOT_INDEX
from skelpgt.fitting.limits import eval_violation_per_joint, limit_violation
from torch import Tensor

EVAL_14 = tuple(range(25, 38)) + (43,)  # HMR2/HSMR 14 joints for 3DPW/H36M (§6.1)
ALL_44 = tuple(range(44))


def root_relative(points: Tensor, root: int = ROOT_INDEX) -> Tensor:
    return points - points[:, root : root + 1]


def mpjpe(pred: Tensor, gt: Tensor, joints=EVAL_14, root: int | None = ROOT_INDEX) -> Tensor:
    """Mean per-joint position error (B,) mm, after subtracting joint `root` (None: no centring)."""
    if root is not None:
        pred, gt = root_relative(pred, root), root_relative(gt, root)
    j = list(joints)
    return (pred[:, j] - gt[:, j]).norm(dim=-1).mean(-1) * 1000.0


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """Similarity transform (scale, rotation with det +1, translation) of pred (B,K,3) onto gt, per sample (batched SVD)."""
    p = pred.double()
    g = gt.double()
    mp, mg = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    pc, gc = p - mp, g - mg
    cov = gc.transpose(1, 2) @ pc  # (B,3,3) = Σ g pᵀ
    u, s, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.ones_like(s)
    fix[:, -1] = d
    rot = u @ torch.diag_embed(fix) @ vh  # maps centred pred onto centred gt
    var = (pc**2).sum(dim=(1, 2))
    scale = (s * fix).sum(-1) / var.clamp(min=1e-12)
    aligned = scale[:, None, None] * (pc @ rot.transpose(1, 2)) + mg
    return aligned.to(pred.dtype)


def pa_mpjpe(pred: Tensor, gt: Tensor, joints=EVAL_14) -> Tensor:
    """MPJPE (B,) mm after per-sample similarity Procrustes alignment over `joints`."""
    j = list(joints)
    aligned = procrustes_align(pred[:, j], gt[:, j])
    return (aligned - gt[:, j]).norm(dim=-1).mean(-1) * 1000.0


def pve(pred_verts: Tensor, gt_verts: Tensor, pred_root: Tensor | None = None, gt_root: Tensor | None = None) -> Tensor:
    """Per-vertex error (B,) mm; if roots (B,3) are given, both meshes are made relative to them first."""
    if pred_root is not None:
        pred_verts = pred_verts - pred_root[:, None]
    if gt_root is not None:
        gt_verts = gt_verts - gt_root[:, None]
    return (pred_verts - gt_verts).norm(dim=-1).mean(-1) * 1000.0


def pck(pred_2d: Tensor, gt_2d: Tensor, threshold: float, expand: Tensor | float = 1.0, min_conf: float = 0.5) -> Tensor:
    """PCK@threshold (scalar): pred (B,K,2), gt (B,K,3) in normalised crop units (×`expand`, §6.2);
    visible = gt conf > min_conf; mean over keypoints with ≥ 1 visible instance of the per-keypoint accuracy."""
    expand = torch.as_tensor(expand, dtype=pred_2d.dtype, device=pred_2d.device)
    if expand.ndim == 1:
        expand = expand[:, None]
    dist = (pred_2d[..., :2] - gt_2d[..., :2]).norm(dim=-1) * expand
    vis = gt_2d[..., 2] > min_conf
    hits = ((dist < threshold) & vis).sum(0).to(pred_2d.dtype)
    count = vis.sum(0)
    ok = count > 0
    if not ok.any():
        return torch.tensor(float("nan"))
    return (hits[ok] / count[ok]).mean()


def limit_violation_rates(q: Tensor, tolerances=(10.0, 20.0, 30.0)) -> dict[str, float]:
    """HSMR's reality metric (§6.2): % of samples whose worst knee/elbow violation exceeds 0 at each tolerance (deg).

    Also reports ours over all DOFs (`all_dofs@T`): % of samples with any DOF more than T deg outside its limits.
    """
    out = {}
    for tol in tolerances:
        per_joint = eval_violation_per_joint(q, tol_deg=tol)  # (B,4) rad
        out[f"knee_elbow@{tol:g}"] = float((per_joint.amax(-1) > 0).float().mean() * 100.0)
        out[f"all_dofs@{tol:g}"] = float((limit_violation(q, margin_deg=tol) > 0).float().mean() * 100.0)
    return out
