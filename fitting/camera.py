"""Perspective camera of HMR2.0/HSMR crops, in normalised crop units.

A crop of side `bbox_size = max(scale)·200` px around `center` maps pixels to normalised units
x_n = (x − cx)/bbox_size (the crop spans [−0.5, 0.5]²). The camera looks down +z with focal
f_n = 5000/256 in those units and the principal point at the crop centre; model points are in
the camera frame (metres).

Per-sample perspective cameras use the same units: a full-image camera (focal f px, principal
point c px) seen through a crop (centre b px, side s px) has focal f_n = f/s and principal point
p_n = (c − b)/s, so x_n = f_n·X/Z + p_n (`crop_intrinsics`). `focal` arguments take a float
(every sample) or a (B,) tensor; `principal` is None (the crop centre, 0) or (B,2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FOCAL_NORMALISED = 5000.0 / 256.0


def normalise_keypoints(kp_px: Tensor, center: Tensor, scale: Tensor) -> Tensor:
    """Pixel keypoints (B,K,3: x, y, conf) → normalised crop units (B,K,3), confidence kept."""
    size = (scale * 200.0).amax(dim=-1)[:, None, None]
    xy = (kp_px[..., :2] - center[:, None, :]) / size
    return torch.cat((xy, kp_px[..., 2:3]), dim=-1)


def crop_intrinsics(focal_px: Tensor, principal_px: Tensor, center: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Full-image intrinsics (focal (B,) px, principal point (B,2) px) → crop's (focal (B,), principal (B,2)) in normalised crop units."""
    size = (scale * 200.0).amax(dim=-1)
    return focal_px / size, (principal_px - center) / size[:, None]


def full_image_intrinsics(width: Tensor, height: Tensor) -> tuple[Tensor, Tensor]:
    """CLIFF's estimate from the image size (B,) px: focal = √(W² + H²) px (B,), principal point = image centre (B,2) px."""
    width, height = width.float(), height.float()
    return torch.hypot(width, height), torch.stack((width / 2, height / 2), dim=-1)


def _focal_of(focal: float | Tensor, like: Tensor) -> Tensor:
    """Focal broadcastable against (B,K) keypoint columns: a float, or (B,) → (B,1)."""
    if isinstance(focal, Tensor):
        return focal.to(like.dtype).reshape(-1, 1).expand_as(like)
    return torch.full_like(like, float(focal))


def solve_translation(points: Tensor, kp: Tensor, focal: float | Tensor = FOCAL_NORMALISED, principal: Tensor | None = None) -> Tensor:
    """Camera translation (B,3) putting model points (B,K,3) onto 2D keypoints (B,K,3) (SPIN's LSQ), focal float or (B,), principal (B,2)."""
    x, y, z = points.unbind(-1)
    u, v, conf = kp.unbind(-1)
    if principal is not None:  # keypoints relative to the principal point: the equations below then hold as written
        u, v = u - principal[:, 0:1].to(u.dtype), v - principal[:, 1:2].to(v.dtype)
    w = conf.clamp(min=0).sqrt()
    zero, f = torch.zeros_like(u), _focal_of(focal, u)
    # Each keypoint gives f·t_x − u·t_z = u·Z − f·X and f·t_y − v·t_z = v·Z − f·Y.
    rows = torch.cat((torch.stack((f, zero, -u), -1), torch.stack((zero, f, -v), -1)), dim=1)
    rhs = torch.cat((u * z - f * x, v * z - f * y), dim=1)
    weights = torch.cat((w, w), dim=1)[..., None]
    a, b = rows * weights, rhs[..., None] * weights
    ata = a.transpose(1, 2) @ a + 1e-9 * torch.eye(3, dtype=a.dtype, device=a.device)
    return torch.linalg.solve(ata, a.transpose(1, 2) @ b)[..., 0]


def project(points: Tensor, translation: Tensor, focal: float | Tensor = FOCAL_NORMALISED, principal: Tensor | None = None) -> Tensor:
    """Perspective projection of points (B,K,3) moved by translation (B,3) → (B,K,2) normalised (focal float or (B,), principal (B,2))."""
    cam = points + translation[:, None]
    f = focal.to(cam.dtype)[:, None, None] if isinstance(focal, Tensor) else focal
    projected = f * cam[..., :2] / cam[..., 2:3].clamp(min=1e-6)
    return projected if principal is None else projected + principal.to(cam.dtype)[:, None]


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


def _focal_errors(points: Tensor, kp: Tensor, size: Tensor, focal: Tensor) -> Tensor:
    """Per-person weighted RMS reprojection error (B,S), crop units, at focals (B,S) px with closed-form translations."""
    b, s = focal.shape
    pts = points[:, None].expand(b, s, *points.shape[1:]).reshape(b * s, *points.shape[1:])
    obs = kp[:, None].expand(b, s, *kp.shape[1:]).reshape(b * s, *kp.shape[1:])
    f = focal.reshape(-1)
    diff = project(pts, solve_translation(pts, obs, f), f) - obs[..., :2]
    w = obs[..., 2].clamp(min=0)
    err = ((w * diff.square().sum(-1)).sum(-1) / w.sum(-1).clamp(min=1e-12)).sqrt().reshape(b, s) / size[:, None]
    return err


def fit_focal(
    points: Tensor, kp: Tensor, size: Tensor, group: Tensor, start: Tensor, span: float = 4.0, steps: int = 25, iterations: int = 24, floor: float = 1e-3,
    prior: float = 1.0,
) -> Tensor:
    """Focal length (G,) px per image from its people's 3D-consistent bodies, by a 1-D search over log focal.

    points (B,K,3) m: each person's model keypoints (any translation, camera-frame orientation);
    kp (B,K,3): their 2D keypoints x, y px relative to the image's principal point, weight (0 = unused);
    size (B,) px: the person's crop side (errors are compared in crop units); group (B,) long: the
    person's image in [0, G); start (G,) px: the search's centre (e.g. CLIFF's √(W² + H²)); the
    search spans [start/span, start·span]. Each person's translation is solved in closed form
    (`solve_translation`) at every focal; the image's cost is Σ_i e_i(f)² / (min_f e_i² + floor²):
    a person whose keypoints its body cannot match at any focal (noisy keypoints, a bad label)
    weighs less. Plus prior·(log f − log start)²: a person's term is ≈ 1 at its best focal, so a
    prior of 1 lets a factor e in focal cost as much as one person's fit; it only decides where
    the people's terms are flat in f (bodies whose label is wrong fit about as badly at any focal:
    without it such an image's focal ran to the search's edge, ×/÷ 4 — measured on corrupted
    synthetic labels). Grid of `steps` log-spaced focals, then golden-section search around the best.
    An image without a person with ≥ 3 weighted keypoints keeps its start.
    """
    device = points.device  # everything follows the model keypoints' device, and the focals come back there
    points, kp, size, start, group = points.double(), kp.double().to(device), size.double().to(device), start.double().to(device), group.to(device)
    n_groups = start.shape[0]
    usable = (kp[..., 2] > 0).sum(-1) >= 3
    points, kp, size, group = points[usable], kp[usable], size[usable], group[usable]
    if not len(group):
        return start.float()
    offsets = torch.linspace(-math.log(span), math.log(span), steps, dtype=torch.float64, device=device)
    log_start = start.log()
    grid = log_start[:, None] + offsets  # (G,S)
    err = _focal_errors(points, kp, size, grid[group].exp())
    weight = 1.0 / (err.amin(-1).square() + floor**2)  # (B,)

    def image_cost(e: Tensor, log_f: Tensor) -> Tensor:  # per-person errors (B,S), log focal (G,S) → image costs (G,S)
        data = e.new_zeros(n_groups, e.shape[1]).index_add_(0, group, weight[:, None] * e.square())
        return data + prior * (log_f - log_start[:, None]).square()

    def cost(log_f: Tensor) -> Tensor:  # (G,S) log focal → (G,S) image cost
        return image_cost(_focal_errors(points, kp, size, log_f[group].exp()), log_f)

    best = image_cost(err, grid).argmin(-1)  # (G,)
    step = offsets[1] - offsets[0]
    lo, hi = grid.gather(1, best[:, None])[:, 0] - step, grid.gather(1, best[:, None])[:, 0] + step
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(iterations):  # golden section on the bracket around the best grid point
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        c = cost(torch.stack((a, b), -1))
        left = c[:, 0] < c[:, 1]
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
    seen = torch.zeros(n_groups, dtype=torch.bool, device=device).index_fill_(0, group.unique(), True)
    return torch.where(seen, ((lo + hi) / 2).exp(), start).float()
