"""Perspective camera of HMR2.0/HSMR crops, in normalised crop units.

A crop of side `bbox_size = max(scale)·200` px around `center` maps pixels to normalised units
x_n = (x − cx)/bbox_size (the crop spans [−0.5, 0.5]²). The camera looks down +z with focal
f_n = 5000/256 in those units and the principal point at the crop centre; model points are in
the camera frame (metres).
"""

from __future__ import annotations

from torch import Tensor
import torch

FOCAL_NORMALISED = 5000.0 / 256.0


def normalise_keypoints(kp_px: Tensor, center: Tensor, scale: Tensor) -> Tensor:
    """Pixel keypoints (B,K,3: x, y, conf) → normalised crop units (B,K,3), confidence kept."""
    size = (scale * 200.0).amax(dim=-1)[:, None, None]
    xy = (kp_px[..., :2] - center[:, None, :]) / size
    return torch.cat((xy, kp_px[..., 2:3]), dim=-1)


def solve_translation(points: Tensor, kp: Tensor, focal: float = FOCAL_NORMALISED) -> Tensor:
    """Camera translation (B,3) putting model points (B,K,3) onto 2D keypoints (B,K,3) (SPIN's LSQ)."""
    x, y, z = points.unbind(-1)
    u, v, conf = kp.unbind(-1)
    w = conf.clamp(min=0).sqrt()
    zero, f = torch.zeros_like(u), torch.full_like(u, focal)
    # Each keypoint gives f·t_x − u·t_z = u·Z − f·X and f·t_y − v·t_z = v·Z − f·Y.
    rows = torch.cat((torch.stack((f, zero, -u), -1), torch.stack((zero, f, -v), -1)), dim=1)
    rhs = torch.cat((u * z - f * x, v * z - f * y), dim=1)
    weights = torch.cat((w, w), dim=1)[..., None]
    a, b = rows * weights, rhs[..., None] * weights
    ata = a.transpose(1, 2) @ a + 1e-9 * torch.eye(3, dtype=a.dtype, device=a.device)
    return torch.linalg.solve(ata, a.transpose(1, 2) @ b)[..., 0]


def project(points: Tensor, translation: Tensor, focal: float = FOCAL_NORMALISED) -> Tensor:
    """Perspective projection of points (B,K,3) moved by translation (B,3) → (B,K,2) normalised."""
    cam = points + translation[:, None]
    return focal * cam[..., :2] / cam[..., 2:3].clamp(min=1e-6)


def keypoint_error(projected: Tensor, kp: Tensor, min_conf: float = 0.1) -> Tensor:
    """Mean 2D distance (B,) over keypoints with confidence > min_conf, normalised crop units."""
    mask = (kp[..., 2] > min_conf).to(projected.dtype)
    dist = (projected - kp[..., :2]).norm(dim=-1)
    count = mask.sum(-1)
    return torch.where(count > 0, (dist * mask).sum(-1) / count.clamp(min=1), torch.full_like(count, float("nan")))


def fit_camera_error(points: Tensor, kp: Tensor, focal: float = FOCAL_NORMALISED) -> Tensor:
    """kp2d_err (B,): model keypoints (B,44,3) projected with the closed-form camera for kp (B,44,3)."""
    use = kp.clone()
    gt_conf = use[:, 25:, 2].clamp(min=0).sum(-1)
    # Like SPIN: rely on the 19 annotated joints when they are there, else on all 44.
    use[:, :25, 2] = torch.where(gt_conf[:, None] >= 4, torch.zeros_like(use[:, :25, 2]), use[:, :25, 2])
    t = solve_translation(points, use, focal)
    return keypoint_error(project(points, t, focal), kp)
