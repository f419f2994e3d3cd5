"""SKELify: fit SKEL to a person's 2D keypoints through a per-sample perspective crop camera.

Written from hsmr-pipeline.md §3, with our per-sample Levenberg–Marquardt instead of one LBFGS
problem per batch: every person has its own damping and step acceptance, so its result does not
depend on its batch. Parameters: q (46), β (10) and the camera translation t (3) (SKEL translation
fixed at 0 — t plays its role). The camera is given per person in normalised crop units (focal
f_n, principal point p_n: x_n = f_n·X/Z + p_n, see `camera.crop_intrinsics`); by default HSMR's
crop camera (f_n = 5000/256, p_n = 0). With the source's real camera the label's camera-frame
global orientation means what the fit assumes; through the near-orthographic crop camera an
off-centre person can only be matched in 2D by bending the body (the crop camera ignores the ray
angle), so 2D fits below that camera's floor make labels worse in 3D.

Speed: the 44 keypoints are linear in the skin and the skin is linear-blend skinned, so a keypoint
is Σ_i A_i·m_ji over the (keypoint j, joint i) pairs that share vertices (≈120 of 44×24), with
per-pair moments m_ji = Σ_v R_jv w_vi (v_posed_v, 1) that are themselves linear in β and the pose
features. Those moments are precomputed from the template, shape and pose blend shapes, so a fit
never poses a vertex: the cost per step is the 24-joint kinematics (and its forward-mode tangents)
plus a few small contractions, not the 6890- (or even 550-) vertex skin.

Residuals per person: the confidence-weighted 2D error of the 44 keypoints (37, 38 left out as
HSMR does) divided by the target's torso size (so priors weigh the same for any crop), the
mirror-consistent joint-limit hinge, a β prior and a weak pull of q towards its start (2D
keypoints leave depth nearly free; the pull keeps what they cannot see where the label had it).
Reported `kp2d_err` and the acceptance `score` are always in normalised crop units, whatever the
crop's pixel size; `accept` adds to the score a bound on the 3D move a small 2D gain may buy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .body import load_body
from .camera import FOCAL_NORMALISED, keypoint_error, project, solve_translation
from .device import module_on, resolve_device, tensor_on
from .keypoints import KeypointRegressor
from .limits import LIMIT_QIDS, limit_violation, mirror_consistent_bounds, wrap_angles
from .lm import NUM_DOFS, NUM_KINEMATIC, NUM_PARAMS, levenberg_marquardt, limit_hinge
from .skel import NUM_BETAS, SKEL

UNRELIABLE_KEYPOINTS = (37, 38)  # LSP neck and head top: left out, as HSMR does
_TORSO_PAIRS = ((5, 12), (2, 9))  # shoulder–hip on each side (OpenPose indices)


@dataclass(frozen=True)
class SkelifyConfig:
    """Weights and schedule of SKELify (squared-residual weights, torso-normalised 2D units)."""

    iterations: int = 10
    limit_weight: float = 0.05
    beta_weight: float = 5e-4
    min_confidence: float = 0.1  # keypoints below count as missing
    damping_floor: float = 1e-3  # least curvature of every parameter in the LM step (see _linearize)
    start_weight: float = 0.01  # pull of q towards its start, per rad² (see _stack)
    # Acceptance guard (see `accept`): free 3D move, and allowed move per unit of 2D gain (both torso units).
    move_free: float = 0.02
    move_per_gain: float = 4.0


@dataclass
class SkelifyResult:
    """Fitted SKEL and camera per person, with its fit quality."""

    poses: Tensor  # (B,46) rad, wrapped
    betas: Tensor  # (B,10)
    cam_t: Tensor  # (B,3) camera translation under the fit's camera, metres
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
    """Fits SKEL (male by default) to 2D keypoints. Build once, call `fit` on batches.

    Device: every tensor lives on `device` ('cpu', 'cuda', 'cuda:N'; fitting.device.resolve_device),
    the models copied there (the caller's stay put) and the pair moments computed on the CPU
    first, so they are the same on every device. Public methods (fit, evaluate, accept, camera,
    model_keypoints, relative_keypoints, weighted, intrinsics) take inputs on any device, move them
    to `self.device`, and return their results on `self.device`: a caller on another device
    moves them back (`.cpu()`).
    """

    def __init__(self, skel: SKEL, keypoints: KeypointRegressor, config: SkelifyConfig = SkelifyConfig(), device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        given = (skel, keypoints)
        cpu = torch.device("cpu")
        skel, keypoints = module_on(skel, cpu), module_on(keypoints, cpu)
        self.skel, self.keypoints, self.config = skel, keypoints, config
        self._pair_moments(skel, keypoints.matrix)
        self.active = torch.ones(44, dtype=torch.bool)
        self.active[list(UNRELIABLE_KEYPOINTS)] = False
        bounds = mirror_consistent_bounds().float()
        self.low, self.high = bounds[:, 0], bounds[:, 1]
        self.bounds = bounds
        self.limit_ids = torch.as_tensor(LIMIT_QIDS, dtype=torch.long)
        self.skel, self.keypoints = (module_on(m, self.device) for m in given)
        moved = ("pair_joint", "pair_weight", "pair_template", "pair_shape", "pair_pose", "pair_to_kp", "active", "low", "high", "bounds", "limit_ids")
        for name in moved:
            setattr(self, name, getattr(self, name).to(self.device))

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, config: SkelifyConfig = SkelifyConfig(), device: str | torch.device = "cpu", gender: str = "male") -> "Skelify":
        """SKEL of `gender` and the keypoint regressor from a models dir (`load_body`); fit on `device`."""
        body = load_body(models_dir, gender)
        return cls(body.skel, body.keypoints, config, device=device)

    def _on(self, value, dtype: torch.dtype | None = torch.float32) -> Tensor | None:
        """An input (None passes through) as a tensor on this fitter's device (dtype None = its own)."""
        return tensor_on(value, self.device, dtype)

    def fit(
        self, kp2d: Tensor, poses: Tensor, betas: Tensor, cam_t: Tensor | None = None, focal: Tensor | None = None, principal: Tensor | None = None
    ) -> SkelifyResult:
        """Keypoints (B,44,3: x, y normalised crop units, confidence) from a start (q, β[, t]); camera
        focal (B,) and principal point (B,2) in normalised crop units (default: HSMR's crop camera).

        A person with non-finite keypoints or fewer than 6 confident ones is not fitted: it keeps
        its start, gets NaN metrics and a reason.
        """
        kp2d, poses, betas, cam_t = self._on(kp2d), self._on(poses), self._on(betas), self._on(cam_t)
        focal, principal = self.intrinsics(kp2d.shape[0], focal, principal)
        reason = self._check(kp2d)
        usable = torch.tensor([not r for r in reason], device=self.device)
        kp2d = torch.where(usable[:, None, None], kp2d, torch.zeros_like(kp2d))
        if cam_t is None:
            cam_t = self.camera(kp2d, poses, betas, focal, principal)
        goal = self._goal(kp2d, focal, principal, poses)
        x = levenberg_marquardt(
            torch.cat((poses, betas, cam_t.float()), dim=1),
            lambda x: self._residuals(x, goal),
            lambda x: self._linearize(x, goal),
            self.config.iterations,
        )
        start = torch.cat((poses, betas, cam_t.float()), dim=1)
        x = torch.where(usable[:, None], x, start)
        result = self.evaluate(kp2d, wrap_angles(x[:, :NUM_DOFS]), x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:], focal, principal)
        nan = torch.full_like(result.score, float("nan"))
        result.kp2d_err = torch.where(usable, result.kp2d_err, nan)
        result.score = torch.where(usable, result.score, nan)
        result.reason = reason
        return result

    def _pair_moments(self, skel: SKEL, regressor: Tensor) -> None:
        """Precompute the (keypoint, joint) pair moments of the module docstring (float64 sums, stored float32)."""
        reg, weights = regressor.double(), skel.skin_weights.double()
        support = (reg.abs() @ weights.abs()) > 0  # (44,24): pairs that share at least one vertex
        kp_id, joint_id = torch.nonzero(support, as_tuple=True)
        coeff = reg[kp_id] * weights[:, joint_id].T  # (P,6890): c_pv = R_jv·w_vi
        n = skel.num_verts
        self.pair_joint = joint_id
        self.pair_weight = (coeff.sum(-1)).float()  # (P,) Σ_v c_pv
        self.pair_template = (coeff @ skel.v_template.double()).float()  # (P,3)
        shape = skel.shapedirs.double().view(-1, n, 3)  # (10,N,3)
        pose = skel.posedirs.double().view(-1, n, 3)  # (207,N,3)
        self.pair_shape = torch.einsum("pv,kvc->kpc", coeff, shape).reshape(shape.shape[0], -1).float()  # (10,P·3)
        self.pair_pose = torch.einsum("pv,fvc->fpc", coeff, pose).reshape(pose.shape[0], -1).float()  # (207,P·3)
        self.pair_to_kp = torch.zeros(regressor.shape[0], len(kp_id))  # (44,P) sums the pairs of a keypoint
        self.pair_to_kp[kp_id, torch.arange(len(kp_id))] = 1.0

    def _kinematics(self, q: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Skinning transforms (B,24,3,4) and pose features (B,207) of SKEL at (q, β)."""
        skel = self.skel
        pose = skel.pose_skeleton(q, skel.J_template + (betas @ skel.J_shapedirs).view(-1, 24, 3))
        return pose.transforms, skel.corrective_features(pose.local_rot)

    def _fast_keypoints(self, transforms: Tensor, feat: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Model keypoints (B,44,3) at zero translation from transforms and features; also the pair moments (B,P,3)."""
        b = betas.shape[0]
        moments = self.pair_template + (betas @ self.pair_shape + feat @ self.pair_pose).view(b, -1, 3)
        a = transforms[:, self.pair_joint]  # (B,P,3,4)
        contrib = (a[..., :3] @ moments[..., None])[..., 0] + a[..., 3] * self.pair_weight[:, None]
        return self.pair_to_kp @ contrib, moments

    def _check(self, kp2d: Tensor) -> list[str]:
        finite = torch.isfinite(kp2d).all(dim=(1, 2))
        confident = ((kp2d[..., 2] > self.config.min_confidence) & self.active).sum(-1)
        return [
            "" if f and c >= 6 else ("keypoints have NaN/Inf values" if not f else f"only {int(c)} confident keypoints (need 6)")
            for f, c in zip(finite.tolist(), confident.tolist())
        ]

    @torch.no_grad()
    def accept(self, kp2d: Tensor, current: SkelifyResult, poses: Tensor, betas: Tensor, kp2d_err: Tensor, score: Tensor) -> Tensor:
        """Whether each candidate (q (B,46), β (B,10), its kp2d_err and score (B,)) replaces the current label (B,) bool.

        Its score must be strictly lower, and its root-relative 3D keypoints may move from the
        current label's by at most max(move_free, move_per_gain × 2D gain), the move in units of
        the label's 3D torso and the gain (current − candidate kp2d_err) in units of the target's
        2D torso: 2D keypoints barely see depth, so below the floor set by model differences (SKEL
        vs the keypoints' source body) a tiny 2D gain is bought with a large 3D change.
        """
        kp2d, poses, betas, kp2d_err, score = self._on(kp2d), self._on(poses), self._on(betas), self._on(kp2d_err), self._on(score)
        better = score < torch.nan_to_num(self._on(current.score), nan=float("inf"))
        old, new = self.relative_keypoints(current.poses, current.betas), self.relative_keypoints(poses, betas)
        torso_3d = torch.stack([(old[:, a] - old[:, b]).norm(dim=-1) for a, b in _TORSO_PAIRS], -1).mean(-1).clamp(min=1e-3)
        move = (new - old).norm(dim=-1).mean(-1) / torso_3d
        gain = (self._on(current.kp2d_err) - kp2d_err) / torso_size(kp2d)
        return better & (move <= torch.clamp(self.config.move_per_gain * gain, min=self.config.move_free))

    @torch.no_grad()
    def relative_keypoints(self, poses: Tensor, betas: Tensor) -> Tensor:
        """The 44 keypoints (B,44,3) m of SKEL at (q, β) relative to the pelvis (keypoint 39), from the pair moments."""
        poses, betas = self._on(poses), self._on(betas)
        kp, _ = self._fast_keypoints(*self._kinematics(poses, betas), betas)
        return kp - kp[:, 39:40]

    def intrinsics(self, b: int, focal: Tensor | None = None, principal: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Focal (B,) and principal point (B,2), normalised crop units; missing or non-finite → HSMR's crop camera."""
        f = torch.full((b,), FOCAL_NORMALISED, device=self.device) if focal is None else self._on(focal).reshape(b)
        p = torch.zeros(b, 2, device=self.device) if principal is None else self._on(principal).reshape(b, 2)
        known = torch.isfinite(f) & (f > 0) & torch.isfinite(p).all(-1)
        return torch.where(known, f, FOCAL_NORMALISED), torch.where(known[:, None], p, 0.0)

    @torch.no_grad()
    def camera(self, kp2d: Tensor, poses: Tensor, betas: Tensor, focal: Tensor | None = None, principal: Tensor | None = None) -> Tensor:
        """Closed-form camera translation (B,3) m for a pose under the given camera (SPIN's weighted least squares)."""
        focal, principal = self.intrinsics(kp2d.shape[0], focal, principal)
        return solve_translation(self.model_keypoints(poses, betas), self.weighted(self._on(kp2d)), focal, principal)

    @torch.no_grad()
    def model_keypoints(self, poses: Tensor, betas: Tensor) -> Tensor:
        """The 44 keypoints (B,44,3) of SKEL at zero translation, metres."""
        return self.keypoints(self.skel(self._on(poses), self._on(betas)).skin_verts)

    @torch.no_grad()
    def evaluate(
        self, kp2d: Tensor, poses: Tensor, betas: Tensor, cam_t: Tensor | None = None, focal: Tensor | None = None, principal: Tensor | None = None
    ) -> SkelifyResult:
        """Fit quality of given SKEL parameters against keypoints (B,44,3) under a camera (focal (B,), principal (B,2)); t solved if not given."""
        kp2d, poses, betas, cam_t = self._on(kp2d), self._on(poses), self._on(betas), self._on(cam_t)
        focal, principal = self.intrinsics(kp2d.shape[0], focal, principal)
        if cam_t is None:
            cam_t = self.camera(kp2d, poses, betas, focal, principal)
        projected = project(self.model_keypoints(poses, betas), cam_t, focal, principal)
        err = keypoint_error(projected, self.weighted(kp2d), self.config.min_confidence)
        violation = limit_violation(poses, bounds=self.bounds)
        return SkelifyResult(poses, betas, cam_t, err, violation, acceptance_score(err, violation, betas))

    # -- least squares ------------------------------------------------------------------------

    def weighted(self, kp2d: Tensor) -> Tensor:
        """Keypoints (B,44,3) with the unreliable ones and low-confidence ones switched off (B,44,3), dtype kept."""
        kp2d = self._on(kp2d, dtype=None)
        conf = kp2d[..., 2] * self.active * (kp2d[..., 2] > self.config.min_confidence)
        return torch.cat((kp2d[..., :2], conf[..., None]), dim=-1)

    def _goal(self, kp2d: Tensor, focal: Tensor | None = None, principal: Tensor | None = None, start: Tensor | None = None) -> dict[str, Tensor]:
        """Targets of the residuals: keypoints, weights, camera and the start q (default 0) the fit is pulled towards."""
        kp2d = self._on(kp2d)
        focal, principal = self.intrinsics(kp2d.shape[0], focal, principal)
        start = torch.zeros(kp2d.shape[0], NUM_DOFS, device=self.device) if start is None else self._on(start)
        kp = self.weighted(kp2d)
        weight = kp[..., 2].sqrt()[..., None] / torso_size(kp2d)[:, None, None]
        return {"xy": kp[..., :2], "weight": weight, "focal": focal[:, None, None], "principal": principal[:, None], "start": start}

    def _residuals(self, x: Tensor, goal: dict[str, Tensor]) -> Tensor:
        q, betas, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        kp3d, _ = self._fast_keypoints(*self._kinematics(q, betas), betas)
        return self._stack(project(kp3d, t, goal["focal"][:, 0, 0], goal["principal"][:, 0]), q, betas, goal)

    def _linearize_keypoints(self, q: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Model keypoints (B,44,3) and their exact tangents (56,B,44,3) along each q and β entry.

        Forward-mode AD runs only through the 24-joint kinematics, vectorised over the 56 tangent
        directions (torch.func: the primal is computed once, not once per direction); the keypoint
        tangents follow in closed form from the pair moments: d(A·m) = dA·m + A·dm.
        """
        b, n = q.shape[0], NUM_KINEMATIC
        x = torch.cat((q, betas), dim=1)
        directions = torch.eye(n, dtype=x.dtype, device=x.device)[:, None, :].expand(n, b, n)

        def along(direction: Tensor) -> tuple:
            return torch.func.jvp(lambda x: self._kinematics(x[:, :NUM_DOFS], x[:, NUM_DOFS:]), (x,), (direction,))

        (transforms, feat), (d_transforms, d_feat) = torch.func.vmap(along, out_dims=((None, None), (0, 0)))(directions)
        kp3d, moments = self._fast_keypoints(transforms, feat, betas)
        d_moments = (d_feat @ self.pair_pose).view(n, b, -1, 3)
        d_moments[NUM_DOFS:] += self.pair_shape.view(NUM_BETAS, 1, -1, 3)
        a = transforms[:, self.pair_joint]  # (B,P,3,4)
        d_a = d_transforms.view(n, b, 24, 3, 4)[:, :, self.pair_joint]  # (56,B,P,3,4)
        d_contrib = (
            (d_a[..., :3] @ moments[..., None])[..., 0] + d_a[..., 3] * self.pair_weight[:, None] + (a[..., :3] @ d_moments[..., None])[..., 0]
        )
        return kp3d, self.pair_to_kp @ d_contrib

    def _stack(self, projected: Tensor, q: Tensor, betas: Tensor, goal: dict[str, Tensor]) -> Tensor:
        hinge = limit_hinge(q, self.limit_ids, self.low, self.high)[0]
        # q − start: 2D keypoints leave the depth of limbs (and the body's turn about the ray)
        # nearly free, so without it a fit buys tiny 2D gains with large, invisible 3D changes.
        start = goal["start"]
        return torch.cat(
            (
                ((projected - goal["xy"]) * goal["weight"]).flatten(1),
                hinge * math.sqrt(self.config.limit_weight),
                betas * math.sqrt(self.config.beta_weight),
                (q - start) * math.sqrt(self.config.start_weight),
            ),
            dim=1,
        )

    def _linearize(self, x: Tensor, goal: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Residuals (B,M) and Jacobian (B,M,59): keypoints are linear in the skin, then projected."""
        q, betas, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        kp3d, d_kp3d = self._linearize_keypoints(q, betas)  # (B,44,3), (56,B,44,3)
        cam = kp3d + t[:, None]
        z, f = cam[..., 2:3].clamp(min=1e-6), goal["focal"]  # (B,44,1), (B,1,1)
        projected = f * cam[..., :2] / z + goal["principal"]
        # d(projected)/d(cam) = f/z · [I₂ | −xy/z] (the principal point is a constant), applied to the keypoint tangents and to t.
        d_proj = f / z * (d_kp3d[..., :2] - cam[..., :2] / z * d_kp3d[..., 2:3])
        d_cam_t = (f / z)[..., None] * torch.cat(
            (torch.eye(2, device=x.device).expand(*cam.shape[:2], 2, 2), -(cam[..., :2] / z)[..., None]), dim=-1
        )  # (B,44,2,3)
        res = self._stack(projected, q, betas, goal)
        b, w = x.shape[0], goal["weight"]
        jac = x.new_zeros(b, res.shape[1], NUM_PARAMS)
        jac[:, :88, :NUM_KINEMATIC] = (d_proj * w).permute(1, 2, 3, 0).reshape(b, 88, NUM_KINEMATIC)
        jac[:, :88, NUM_KINEMATIC:] = (d_cam_t * w[..., None]).reshape(b, 88, 3)
        n_limit = len(self.limit_ids)
        jac[:, 88 : 88 + n_limit, :NUM_DOFS] = limit_hinge(q, self.limit_ids, self.low, self.high)[1] * math.sqrt(self.config.limit_weight)
        jac[:, 88 + n_limit : 98 + n_limit, NUM_DOFS:NUM_KINEMATIC] = torch.eye(10, device=x.device) * math.sqrt(self.config.beta_weight)
        jac[:, 98 + n_limit :, :NUM_DOFS] = torch.eye(NUM_DOFS, device=x.device) * math.sqrt(self.config.start_weight)
        # Rows √μ·I with zero residual: the step's model gets μ|Δx|² (a Levenberg damping floor, the
        # cost being minimised is unchanged). Without it, a DOF that no confident keypoint sees (a
        # foot or hand whose keypoints are missing) has ~0 curvature, so Marquardt's damping
        # λ·diag(JᵀJ) leaves it free: the step swings it by tens of radians and is rejected every
        # time, and the person never moves from its start.
        floor = math.sqrt(self.config.damping_floor) * torch.eye(NUM_PARAMS, device=x.device).expand(b, NUM_PARAMS, NUM_PARAMS)
        return torch.cat((res, res.new_zeros(b, NUM_PARAMS)), dim=1), torch.cat((jac, floor), dim=1)
