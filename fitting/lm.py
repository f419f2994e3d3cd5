"""Batched, per-sample Levenberg–Marquardt for SKEL fitting, and the SKEL skin linearisation it uses.

Parameters per sample are x = (q (46), β (10), t (3)). Every sample has its own damping and its own
step acceptance, so a person's result never depends on the others in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .skel import NUM_BETAS, NUM_DOFS, SKEL, blend_transforms

NUM_PARAMS = NUM_DOFS + NUM_BETAS + 3
NUM_KINEMATIC = NUM_DOFS + NUM_BETAS  # the translation does not enter the kinematics


@dataclass
class SkinLinearization:
    """Posed skin (B,K,3) and anatomical joints (B,24,3) without translation, and their tangents
    (56,B,…) along each q and β entry (d_skin is a view of a (B,K,3,56) contiguous tensor)."""

    skin: Tensor
    d_skin: Tensor
    joints: Tensor
    d_joints: Tensor


def linearize_skin(skel: SKEL, q: Tensor, betas: Tensor) -> SkinLinearization:
    """Skin and joints of a (vertex-restricted) SKEL and their exact derivatives w.r.t. q and β.

    Forward-mode AD runs only through the 24-joint kinematics, one tangent per q/β entry; the
    skin's tangents follow from linear blend skinning in closed form: d(skin) = dA·v_posed +
    A·d(v_posed), with A the blended joint transforms.
    """
    b, k, n = q.shape[0], skel.num_verts, NUM_KINEMATIC
    x = torch.cat((q, betas), dim=1)
    primal = x[None].expand(n, b, n).reshape(n * b, n)
    tangent = torch.eye(n, dtype=x.dtype, device=x.device)[:, None, :].expand(n, b, n).reshape(n * b, n)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(primal, tangent)
        joints_rest = skel.J_template + (dual[:, NUM_DOFS:] @ skel.J_shapedirs).view(-1, 24, 3)
        pose = skel.pose_skeleton(dual[:, :NUM_DOFS], joints_rest)
        feat = skel.corrective_features(pose.local_rot)
        transforms, d_transforms = forward_ad.unpack_dual(pose.transforms)
        feat, d_feat = forward_ad.unpack_dual(feat)
        joints, d_joints = forward_ad.unpack_dual(pose.joints)
    transforms, feat, joints = transforms[:b], feat[:b], joints[:b]
    v_posed = skel.v_template + (betas @ skel.shapedirs + feat @ skel.posedirs).view(b, k, 3)
    blend = blend_transforms(skel.skin_weights, transforms)  # (B,K,3,4)
    skin = (blend[..., :3] @ v_posed[..., None])[..., 0] + blend[..., 3]
    # Both tangent terms as plain matrix products (elementwise broadcasts are memory-bound):
    # dA·v = Σ_j w_vj dT_j·(v,1) as (w ⊗ (v,1)) (B,K,96) @ dT (B,96,3·56) ...
    homog = torch.cat((v_posed, v_posed.new_ones(b, k, 1)), dim=-1)
    lifted = (skel.skin_weights[None, :, :, None] * homog[:, :, None, :]).reshape(b, k, 96)
    d_t = d_transforms.view(n, b, 24, 3, 4).permute(1, 2, 4, 3, 0).reshape(b, 96, 3 * n)
    d_skin = (lifted @ d_t).view(b, k, 3, n)
    # ... and A·dv with dv = posedirsᵀ·d(features) (+ the shape blend shapes for β).
    d_posed = skel.posedirs.T @ d_feat.view(n, b, -1).permute(1, 2, 0)  # (B,3K,56)
    d_posed[..., NUM_DOFS:] += skel.shapedirs.T
    d_skin = d_skin + blend[..., :3] @ d_posed.view(b, k, 3, n)
    return SkinLinearization(skin, d_skin.permute(3, 0, 1, 2), joints, d_joints.view(n, b, 24, 3))


def limit_hinge(q: Tensor, qids: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Distance outside [low, high] (B,L) of the limited DOFs `qids` and its Jacobian (B,L,46)."""
    limited = q[:, qids.to(q.device)]
    res = torch.relu(low - limited) + torch.relu(limited - high)
    jac = q.new_zeros(q.shape[0], len(qids), NUM_DOFS)
    jac[:, torch.arange(len(qids), device=q.device), qids.to(q.device)] = (limited > high).to(q.dtype) - (limited < low).to(q.dtype)
    return res, jac


def levenberg_marquardt(
    x: Tensor,
    residuals: Callable[[Tensor], Tensor],
    linearize: Callable[[Tensor], tuple[Tensor, Tensor]],
    iterations: int,
    damping: float = 0.1,
) -> Tensor:
    """Minimise |r(x)|² per sample from x (B,P): `linearize(x)` → (r (B,M), J (B,M,P))."""
    lam = torch.full((x.shape[0],), damping, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        cost = residuals(x).square().sum(-1)
    for _ in range(iterations):
        res, jac = linearize(x)
        jtj = jac.transpose(1, 2) @ jac
        grad = jac.transpose(1, 2) @ res[..., None]
        # Marquardt's scaling: damping proportional to the curvature of each parameter.
        system = jtj + torch.diag_embed(lam[:, None] * torch.diagonal(jtj, dim1=1, dim2=2) + 1e-9)
        step = torch.linalg.solve(system, -grad)[..., 0]
        with torch.no_grad():
            trial = x + step
            trial_cost = residuals(trial).square().sum(-1)
        better = torch.isfinite(trial_cost) & (trial_cost < cost)
        x = torch.where(better[:, None], trial, x)
        cost = torch.where(better, trial_cost, cost)
        lam = torch.where(better, lam / 3, lam * 4).clamp(1e-7, 1e7)
    return x
