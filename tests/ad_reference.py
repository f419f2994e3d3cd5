"""Reference Jacobians by plain forward-mode AD, to check the closed-form linearisations against."""

from __future__ import annotations

import torch
from torch.autograd import forward_ad


def forward_mode_jacobian(residuals, x: torch.Tensor, goal: dict[str, torch.Tensor]) -> torch.Tensor:
    """Jacobian (B,M,P) of `residuals(x, goal)` (B,M) w.r.t. x (B,P): one tangent per parameter."""
    b, p = x.shape
    primal = x[None].expand(p, b, p).reshape(p * b, p)
    tangent = torch.eye(p)[:, None, :].expand(p, b, p).reshape(p * b, p)
    goal_rep = {k: v.repeat(p, *([1] * (v.dim() - 1))) for k, v in goal.items()}
    with forward_ad.dual_level():
        out = residuals(forward_ad.make_dual(primal, tangent), goal_rep)
        return forward_ad.unpack_dual(out).tangent.view(p, b, -1).permute(1, 2, 0)
