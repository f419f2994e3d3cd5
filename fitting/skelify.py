"""SKELify: fit SKEL to a person's 2D keypoints through the HMR2.0/HSMR crop camera.

Written from hsmr-pipeline.md §3, with our per-sample Levenberg–Marquardt instead of one LBFGS
problem per batch: every person has its own damping and step acceptance, so its result does not
depend on its batch. Parameters: q (46), β (10) and the camera translation t (3) of the crop
camera (focal 5000/256 in normalised crop units, SKEL translation fixed at 0 — t plays its role).

Residuals per person: the confidence-weighted 2D error of the 44 keypoints (37, 38 left out as
HSMR does) divided by the target's torso size (so priors weigh the same for any crop), the
mirror-consistent joint-limit hinge, and a β prior. Reported `kp2d_err` and the acceptance
`score` are always in normalised crop units, whatever the crop's pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import FOCAL_NORMALISED, keypoint_error, project, solve_translation
from .keypoints import KeypointRegressor
from .limits import LIMIT_QIDS, limit_violation, mirror_consistent_bounds, wrap_angles
from .lm import NUM_DOFS, NUM_KINEMATIC, NUM_PARAMS, levenberg_marquardt, limit_hinge, linearize_skin
from .skel import SKEL

UNRELIABLE_KEYPOINTS = (37, 38)  # LSP neck and head top: left out, as HSMR does
_TORSO_PAIRS = ((5, 12), (2, 9))  # shoulder–hip on each side (OpenPose indices)


@dataclass(frozen=True)
class SkelifyConfig:
    """Weights and schedule of SKELify (squared-residual weights, torso-normalised 2D units)."""

    iterations: int = 10
    limit_weight: float = 0.05
    beta_weight: float = 5e-4
    min_confidence: float = 0.1  # keypoints below count as missing


@dataclass
class SkelifyResult:
    """Fitted SKEL and camera per person, with its fit quality."""

    poses: Tensor  # (B,46) rad, wrapped
    betas: Tensor  # (B,10)
    cam_t: Tensor  # (B,3) crop-camera translation, metres
    kp2d_err: Tensor  # (B,) mean 2D error of confident keypoints, normalised crop units
    limit_violation: Tensor  # (B,) degrees outside the (mirror-consistent) limits
    score: Tensor  # (B,) acceptance score (lower is better), see acceptance_score
    reason: list[str] | None = None  # per person: '' when fitted, else why it was skipped


def acceptance_score(kp2d_err: Tensor, violation_deg: Tensor, betas: Tensor) -> Tensor:
    """One score for any label (current or candidate): 2D error in normalised crop units plus
    1e-3 per degree outside the joint limits plus 1e-3·mean β². Lower is better."""
    return kp2d_err + 1e-3 * violation_deg + 1e-3 * betas.square().mean(-1)


def torso_size(kp: Tensor) -> Tensor:
    """Mean shoulder–hip length (B,) of target keypoints (B,44,3), normalised units (≥ 0.05)."""
    lengths = torch.stack([(kp[:, a, :2] - kp[:, b, :2]).norm(dim=-1) for a, b in _TORSO_PAIRS], -1)
    return lengths.mean(-1).clamp(min=0.05)


class Skelify:
    """Fits SKEL (male by default) to 2D keypoints. Build once, call `fit` on batches."""

    def __init__(self, skel: SKEL, keypoints: KeypointRegressor, config: SkelifyConfig = SkelifyConfig()) -> None:
        self.skel, self.keypoints, self.config = skel, keypoints, config
        # Only the skin vertices the keypoint regressors read are posed while fitting.
        support = torch.nonzero(keypoints.matrix.abs().sum(0) > 0).flatten()
        self.fit_skel = skel.restricted_to(support)
        self.regressor = keypoints.matrix[:, support]
        self.active = torch.ones(44, dtype=torch.bool)
        self.active[list(UNRELIABLE_KEYPOINTS)] = False
        bounds = mirror_consistent_bounds().float()
        self.low, self.high = bounds[:, 0], bounds[:, 1]
        self.bounds = bounds
        self.limit_ids = torch.as_tensor(LIMIT_QIDS, dtype=torch.long)

    def fit(self, kp2d: Tensor, poses: Tensor, betas: Tensor, cam_t: Tensor | None = None) -> SkelifyResult:
        """Keypoints (B,44,3: x, y normalised crop units, confidence) from a start (q, β[, t]).

        A person with non-finite keypoints or fewer than 6 confident ones is not fitted: it keeps
        its start, gets NaN metrics and a reason.
        """
        kp2d, poses, betas = kp2d.float(), poses.float(), betas.float()
        reason = self._check(kp2d)
        usable = torch.tensor([not r for r in reason])
        kp2d = torch.where(usable[:, None, None], kp2d, torch.zeros_like(kp2d))
        if cam_t is None:
            cam_t = self.camera(kp2d, poses, betas)
        goal = self._goal(kp2d)
        x = levenberg_marquardt(
            torch.cat((poses, betas, cam_t.float()), dim=1),
            lambda x: self._residuals(x, goal),
            lambda x: self._linearize(x, goal),
            self.config.iterations,
        )
        start = torch.cat((poses, betas, cam_t.float()), dim=1)
        x = torch.where(usable[:, None], x, start)
        result = self.evaluate(kp2d, wrap_angles(x[:, :NUM_DOFS]), x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:])
        nan = torch.full_like(result.score, float("nan"))
        result.kp2d_err = torch.where(usable, result.kp2d_err, nan)
        result.score = torch.where(usable, result.score, nan)
        result.reason = reason
        return result

    def _check(self, kp2d: Tensor) -> list[str]:
        finite = torch.isfinite(kp2d).all(dim=(1, 2))
        confident = ((kp2d[..., 2] > self.config.min_confidence) & self.active).sum(-1)
        return [
            "" if f and c >= 6 else ("keypoints have NaN/Inf values" if not f else f"only {int(c)} confident keypoints (need 6)")
            for f, c in zip(finite.tolist(), confident.tolist())
        ]

    @torch.no_grad()
    def camera(self, kp2d: Tensor, poses: Tensor, betas: Tensor) -> Tensor:
        """Closed-form crop-camera translation (B,3) for a pose (SPIN's weighted least squares)."""
        return solve_translation(self.model_keypoints(poses, betas), self._weighted(kp2d))

    @torch.no_grad()
    def model_keypoints(self, poses: Tensor, betas: Tensor) -> Tensor:
        """The 44 keypoints (B,44,3) of SKEL at zero translation, metres."""
        return self.keypoints(self.skel(poses, betas).skin_verts)

    @torch.no_grad()
    def evaluate(self, kp2d: Tensor, poses: Tensor, betas: Tensor, cam_t: Tensor | None = None) -> SkelifyResult:
        """Fit quality of given SKEL parameters against keypoints (camera solved if not given)."""
        if cam_t is None:
            cam_t = self.camera(kp2d, poses, betas)
        projected = project(self.model_keypoints(poses, betas), cam_t)
        err = keypoint_error(projected, self._weighted(kp2d), self.config.min_confidence)
        violation = limit_violation(poses, bounds=self.bounds)
        return SkelifyResult(poses, betas, cam_t, err, violation, acceptance_score(err, violation, betas))

    # -- least squares ------------------------------------------------------------------------

    def _weighted(self, kp2d: Tensor) -> Tensor:
        """Keypoints with the unreliable ones and low-confidence ones switched off."""
        conf = kp2d[..., 2] * self.active * (kp2d[..., 2] > self.config.min_confidence)
        return torch.cat((kp2d[..., :2], conf[..., None]), dim=-1)

    def _goal(self, kp2d: Tensor) -> dict[str, Tensor]:
        kp = self._weighted(kp2d)
        return {"xy": kp[..., :2], "weight": kp[..., 2].sqrt()[..., None] / torso_size(kp2d)[:, None, None]}

    def _residuals(self, x: Tensor, goal: dict[str, Tensor]) -> Tensor:
        q, betas, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        kp3d = self.regressor @ self.fit_skel(q, betas).skin_verts
        return self._stack(project(kp3d, t), q, betas, goal)

    def _stack(self, projected: Tensor, q: Tensor, betas: Tensor, goal: dict[str, Tensor]) -> Tensor:
        hinge = limit_hinge(q, self.limit_ids, self.low, self.high)[0]
        return torch.cat(
            (
                ((projected - goal["xy"]) * goal["weight"]).flatten(1),
                hinge * math.sqrt(self.config.limit_weight),
                betas * math.sqrt(self.config.beta_weight),
            ),
            dim=1,
        )

    def _linearize(self, x: Tensor, goal: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Residuals (B,M) and Jacobian (B,M,59): keypoints are linear in the skin, then projected."""
        q, betas, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        lin = linearize_skin(self.fit_skel, q, betas)
        kp3d = self.regressor @ lin.skin  # (B,44,3)
        d_kp3d = self.regressor @ lin.d_skin  # (56,B,44,3)
        cam = kp3d + t[:, None]
        z = cam[..., 2:3].clamp(min=1e-6)
        projected = FOCAL_NORMALISED * cam[..., :2] / z
        # d(projected)/d(cam) = f/z · [I₂ | −xy/z], applied to the keypoint tangents and to t.
        d_proj = FOCAL_NORMALISED / z * (d_kp3d[..., :2] - cam[..., :2] / z * d_kp3d[..., 2:3])
        d_cam_t = FOCAL_NORMALISED / z[..., None] * torch.cat(
            (torch.eye(2).expand(*cam.shape[:2], 2, 2), -(cam[..., :2] / z)[..., None]), dim=-1
        )  # (B,44,2,3)
        res = self._stack(projected, q, betas, goal)
        b, w = x.shape[0], goal["weight"]
        jac = x.new_zeros(b, res.shape[1], NUM_PARAMS)
        jac[:, :88, :NUM_KINEMATIC] = (d_proj * w).permute(1, 2, 3, 0).reshape(b, 88, NUM_KINEMATIC)
        jac[:, :88, NUM_KINEMATIC:] = (d_cam_t * w[..., None]).reshape(b, 88, 3)
        n_limit = len(self.limit_ids)
        jac[:, 88 : 88 + n_limit, :NUM_DOFS] = limit_hinge(q, self.limit_ids, self.low, self.high)[1] * math.sqrt(self.config.limit_weight)
        jac[:, 88 + n_limit :, NUM_DOFS:NUM_KINEMATIC] = torch.eye(10) * math.sqrt(self.config.beta_weight)
        return res, jac
