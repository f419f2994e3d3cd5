"""Training losses of hsmr-pipeline.md §5.5 (per batch, divided by B, summed over joints/coordinates).

  kp2d   Σ_j c_j Σ_xy |x̂_j − x*_j|           predicted SKEL keypoints through the predicted camera
  kp3d   Σ_j c³ᴰ_j Σ_xyz |(X_j − X_39) − (X*_j − X*_39)|   target = the sample's `keypoints_3d` (any label)
  orient Σ (R_0 − R*_0)²                        pelvis DOF rotation (valid labels)
  body   Σ_{j=1..23} (R_j − R*_j)²              per-joint DOF rotations of all other joints
  betas  Σ_k (β_k − β*_k)²                      has_betas (invalid labels regress β to 0)
  prior  mean joint-limit violation (deg)       off by default (HSMR weight 0)
  tokens cross-entropy of the backbone token holding each visible keypoint (over all tokens)
         off by default (not in HSMR): a dense signal that makes from-scratch training (the CPU
         demo) leave the mean pose within minutes instead of hours
R = per-joint rotations from q (`fitting.dofs.rotations_from_dofs`) for both sides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from skelpgt.fitting.body import load_body
from skelpgt.fitting.camera import FOCAL_NORMALISED, project
from skelpgt.fitting.dofs import rotations_from_dofs
from skelpgt.fitting.keypoints import ROOT_INDEX
from skelpgt.fitting.limits import limit_violation
from torch import Tensor, nn
from torch.nn import functional as F

from .network import cam_translation


@dataclass
class LossWeights:
    kp3d: float = 0.05
    kp2d: float = 0.01
    orient: float = 0.002
    body: float = 0.001
    betas: float = 0.0005
    prior: float = 0.0
    tokens: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class BodyModel(nn.Module):
    """SKEL + 44-keypoint regressor: (q, β) → keypoints (B,44,3) and skin (B,6890,3), translation 0."""

    def __init__(self, models_dir, gender: str = "male"):
        super().__init__()
        body = load_body(models_dir, gender)
        self.skel, self.regressor = body.skel, body.keypoints

    def forward(self, q: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        out = self.skel(q, betas)
        return self.regressor(out.skin_verts), out.skin_verts


def projected_keypoints(kp3d: Tensor, cam: Tensor) -> Tensor:
    """Model keypoints (B,K,3) through the weak-perspective camera (s, tx, ty) → (B,K,2) crop units."""
    return project(kp3d, cam_translation(cam, FOCAL_NORMALISED), FOCAL_NORMALISED)


def compute_losses(pred: dict, batch: dict, body: BodyModel, weights: LossWeights, token_index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Network output + batch → (weighted total, dict of unweighted terms incl. 'total').
    `token_index` (B,44): backbone token of each keypoint (−1: none), needed when weights.tokens > 0."""
    b = pred["q"].shape[0]
    kp_pred, _ = body(pred["q"], pred["betas"])
    has = batch["has_pose"]
    x2d = projected_keypoints(kp_pred, pred["cam"])
    kp2d = batch["kp2d"]
    l_2d = (kp2d[..., 2:3] * (x2d - kp2d[..., :2]).abs()).sum((1, 2)).sum() / b
    rel_p = kp_pred - kp_pred[:, ROOT_INDEX : ROOT_INDEX + 1]
    kp3d = batch["kp3d"]
    rel_t = kp3d[..., :3] - kp3d[:, ROOT_INDEX : ROOT_INDEX + 1, :3]
    l_3d = (kp3d[..., 3:4] * (rel_p - rel_t).abs()).sum((1, 2)).sum() / b
    r_p, r_t = rotations_from_dofs(pred["q"]), rotations_from_dofs(batch["q"])
    sq = ((r_p - r_t) ** 2).sum((2, 3))  # (B,24)
    l_orient = (has * sq[:, 0]).sum() / b
    l_body = (has * sq[:, 1:].sum(1)).sum() / b
    l_betas = (batch["has_betas"] * ((pred["betas"] - batch["betas"]) ** 2).sum(1)).sum() / b
    terms = {"kp2d": l_2d, "kp3d": l_3d, "orient": l_orient, "body": l_body, "betas": l_betas}
    if weights.prior > 0:
        terms["prior"] = limit_violation(pred["q"]).mean()
    if weights.tokens > 0:
        target = torch.where(kp2d[..., 2] > 0, token_index, torch.full_like(token_index, -1))
        logits = pred["token_logits"].transpose(1, 2)  # (B,44,N): one softmax over the tokens per keypoint
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-1, reduction="sum")
        terms["tokens"] = ce / (target >= 0).sum().clamp(min=1)
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    terms["total"] = total
    return total, terms
