"""SMPL → SKEL conversion: fit SKEL's skin to each person's SMPL mesh, batched and per sample.

Two methods behind `Converter.convert`:

* `fast` (default): a closed-form start (β mapped linearly between the two shape spaces, each
  bone's rotation from a weighted Procrustes fit of its skin, solved into the joint's DOFs, the
  pelvis placed on its regressed target), then a few Levenberg–Marquardt steps per sample on a
  vertex subset + the 24 anatomical joints + a joint-limit hinge (forward-mode Jacobian), then
  two robust LM steps (IRLS, cost ≈ mean vertex distance) on a uniform vertex sample, which make
  the fit follow the whole mesh whatever the model files, then one full-mesh evaluation.
* `staged-lbfgs`: the official aligner's four stages, masks and loss weights
  (skel-model.md §6.4–6.5) with every loss per sample and each person optimised on its own, so a
  result never depends on its batch (the official code couples a batch through a spectral norm,
  a sequence-length normaliser and one shared line search). β is fitted too (the official code
  copies SMPL's β, right only when the genders match). This is the baseline.

Frames: SMPL's (metres, y up). Targets are SMPL vertices (B,6890,3), or SMPL parameters
(axis-angle pose (B,72), betas (B,10), trans (B,3)) turned into vertices with smplx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import roma
import torch
from scipy.spatial import cKDTree
from torch import Tensor
from tqdm import tqdm

from .body import load_body
from .camera import fit_camera_error
from .device import module_on, resolve_device
from .dofs import dofs_from_rotations
from .keypoints import KeypointRegressor, flip_keypoints_normalised
from .limits import LIMIT_QIDS, limit_violation, mirror_consistent_bounds, wrap_angles
from .mirror import mirror_smpl_pose, mirror_translation
from .lm import NUM_KINEMATIC, NUM_PARAMS, levenberg_marquardt, limit_hinge, linearize_skin
from .skel import NUM_DOFS, PARENTS, SKEL
from .smpl import load_smpl, smpl_forward

METHODS = ("fast", "staged-lbfgs")
# Beyond this |β| a body is extreme for the shape spaces (AMASS subjects reach ≈10): it is still
# converted, and flagged.
MAX_ABS_BETA = 5.0
POLISH_BATCH = 32  # people per polish pass on a CPU (its Jacobian is ~1.5 MB per person)
POLISH_BATCH_CUDA = 256  # on a GPU: larger launches, a few GB at most; a person's result does not depend on it
POLISH_SCALE = 0.01  # m: the robust cost c·|r| equals the squared cost |r|² at 1 cm, so priors keep their weight
BETA_BOUND_WEIGHT = 1.0  # of the soft β bound's hinge², against mean squared vertex errors ~1e-4 m²
# Fields that, at their default, stay out of the digest, so adding them left old digests valid.
_OPTIONAL_FIELDS = {"beta_bound": None}


@dataclass(frozen=True)
class ConvertConfig:
    """Everything that changes a conversion's numbers; its digest is stored with every label."""

    method: str = "fast"
    skel_gender: str = "male"
    smpl_gender: str = "neutral"
    chunk_size: int = 256
    pad_multiple: int = 32
    # fast
    lm_iterations: int = 5
    fit_vertices: int = 100  # before adding their mirror images
    joint_weight: float = 0.0  # anatomical joints regressed from the SMPL mesh (the official aligner's target)
    limit_weight: float = 1e-3
    beta_weight: float = 1e-8
    # then a robust polish: LM steps with cost ≈ c·mean vertex distance (IRLS-weighted residuals),
    # the labels' accuracy measure, on a uniform random vertex sample (an unbiased stand-in for the
    # whole mesh, unlike the spread-out subset above) — whatever that subset missed
    polish_iterations: int = 2
    polish_vertices: int = 1024  # before adding their mirror images
    polish_floor: float = 1e-3  # m, δ in √(|r|² + δ²)
    # staged-lbfgs
    lbfgs_steps: int = 10
    lbfgs_max_iter: int = 20
    # Soft bound on |SKEL β| (e.g. 3 for HSMR's loader, which drops labels beyond it); None = off.
    beta_bound: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown conversion method {self.method!r}; choose one of {METHODS}")
        if self.beta_bound is not None and not self.beta_bound > 0:
            raise ValueError(f"beta_bound must be positive or None, got {self.beta_bound!r}")

    def digest(self) -> str:
        """Stable short hash of the configuration (sorted JSON; optional fields at their default left out)."""
        config = {k: v for k, v in dataclasses.asdict(self).items() if k not in _OPTIONAL_FIELDS or v != _OPTIONAL_FIELDS[k]}
        blob = json.dumps(config, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class ConversionResult:
    """Per-person SKEL fit: parameters, fit metrics (metres / degrees) and a status."""

    poses: Tensor  # (N,46) rad
    betas: Tensor  # (N,10)
    trans: Tensor  # (N,3) m
    pve_mean: Tensor  # (N,) m, mean skin-vertex distance to the SMPL mesh (NaN if not fitted)
    pve_max: Tensor  # (N,) m
    limit_violation: Tensor  # (N,) degrees outside the (mirror-consistent) joint limits, summed
    converged: Tensor  # (N,) bool
    kp2d_err: Tensor  # (N,) mean 2D keypoint error, normalised crop units (NaN without keypoints)
    reason: list[str] = field(default_factory=list)  # '' when converged
    method: str = "fast"
    config_digest: str = ""
    flags: list[str] = field(default_factory=list)  # converted, but worth a look ('' = nothing); '; '-joined

    @staticmethod
    def concat(parts: list["ConversionResult"]) -> "ConversionResult":
        """Join chunk results in order."""
        first = parts[0]
        lists = ("reason", "flags")
        tensors = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first) if f.name not in (*lists, "method", "config_digest")}
        joined = {name: [r for p in parts for r in getattr(p, name)] for name in lists}
        return ConversionResult(**tensors, **joined, method=first.method, config_digest=first.config_digest)


def check_inputs(**arrays: Tensor) -> tuple[list[str], list[str]]:
    """Per-sample reasons a conversion cannot run (non-finite values) and flags of inputs that
    convert but are extreme (|β| > MAX_ABS_BETA); '' = none."""
    n = next(iter(arrays.values())).shape[0]
    reasons, flags = [""] * n, [""] * n
    for name, value in arrays.items():
        bad = ~torch.isfinite(value.reshape(n, -1)).all(dim=1)
        for i in torch.nonzero(bad).flatten().tolist():
            reasons[i] = reasons[i] or f"{name} has NaN/Inf values"
        if name.endswith("betas"):
            extreme = value.reshape(n, -1).abs().amax(dim=1) > MAX_ABS_BETA
            for i in torch.nonzero(extreme & ~bad).flatten().tolist():
                flags[i] = f"{name} outside ±{MAX_ABS_BETA:g} (extreme shape)"
    return reasons, flags


class Converter:
    """Fits SKEL (male or female) to SMPL meshes. Build once, call `convert` on any number of people.

    `device` ('cpu', 'cuda', 'cuda:N'; see fitting.device.resolve_device) holds every tensor of the
    fit; the models are copied there (the caller's stay where they are), the fixed vertex samples
    and maps are computed on the CPU first, so they are the same on every device. `convert` takes
    inputs on any device and returns its results on the CPU. `models_dir`, where the models came
    from, lets `fitting.genders` load SMPL's other genders; None for models built elsewhere.
    """

    def __init__(
        self,
        smpl,
        skel: SKEL,
        config: ConvertConfig = ConvertConfig(),
        keypoints: KeypointRegressor | None = None,
        device: str | torch.device = "cpu",
        models_dir: str | os.PathLike | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.models_dir = None if models_dir is None else Path(models_dir)
        given = (smpl, skel, keypoints)
        cpu = torch.device("cpu")
        smpl, skel = module_on(smpl, cpu), module_on(skel, cpu)
        self.smpl, self.skel, self.config, self.keypoints = smpl, skel, config, keypoints
        self.beta_map, self.beta_offset = _shape_space_map(smpl, skel)
        self.fit_ids = _spread_vertices(skel.v_template, config.fit_vertices)
        # With its mirror image added, the subset treats a person and its flip alike.
        self.fit_ids = torch.unique(torch.cat((self.fit_ids, _vertex_mirror(skel.v_template)[self.fit_ids])))
        self.fit_skel = skel.restricted_to(self.fit_ids)
        self.polish_ids = _uniform_vertices(skel.num_verts, config.polish_vertices)
        self.polish_ids = torch.unique(torch.cat((self.polish_ids, _vertex_mirror(skel.v_template)[self.polish_ids])))
        self.polish_skel = skel.restricted_to(self.polish_ids)
        self.bone_ids, self.bone_weights = _bone_vertex_sets(skel.skin_weights)
        self.joint_regressor = skel.J_regressor_osim
        # A person and its flip meet the same limits (HSMR's table is not mirror-consistent).
        self.bounds = mirror_consistent_bounds().float()
        self.low, self.high = self.bounds[:, 0], self.bounds[:, 1]
        self.limit_ids = torch.as_tensor(LIMIT_QIDS, dtype=torch.long)
        self._move_to(self.device, given)

    def _move_to(self, device: torch.device, models: tuple) -> None:
        """The models (SMPL, SKEL, keypoints; the given ones where already there) and every fixed tensor onto `device`."""
        self.smpl, self.skel, self.keypoints = (None if m is None else module_on(m, device) for m in models)
        if device.type != "cpu":
            self.fit_skel, self.polish_skel = self.skel.restricted_to(self.fit_ids), self.skel.restricted_to(self.polish_ids)
        for name in ("beta_map", "beta_offset", "fit_ids", "polish_ids", "bone_ids", "bone_weights", "bounds", "low", "high", "limit_ids"):
            setattr(self, name, getattr(self, name).to(device))
        self.joint_regressor = self.skel.J_regressor_osim
        self.polish_batch = POLISH_BATCH if device.type == "cpu" else POLISH_BATCH_CUDA

    @classmethod
    def from_models_dir(cls, models_dir, config: ConvertConfig = ConvertConfig(), device: str | torch.device = "cpu") -> "Converter":
        """Load SMPL (config.smpl_gender) and SKEL (config.skel_gender) from a models directory; fit on `device`."""
        body = load_body(models_dir, config.skel_gender)
        return cls(load_smpl(models_dir, config.smpl_gender), body.skel, config, body.keypoints, device=device, models_dir=body.models_dir)

    # -- public -----------------------------------------------------------------------------

    def convert(
        self,
        pose: Tensor | None = None,
        betas: Tensor | None = None,
        trans: Tensor | None = None,
        vertices: Tensor | None = None,
        keypoints_2d: Tensor | None = None,
        progress: bool = False,
    ) -> ConversionResult:
        """SMPL pose (N,72)+betas (N,10)+trans (N,3), or SMPL vertices (N,6890,3) → SKEL fits (N).

        With `keypoints_2d` (N,44,3) in normalised crop units (camera.normalise_keypoints), each
        fit's 44 keypoints are projected with a closed-form camera and `kp2d_err` is reported.
        """
        inputs = _as_inputs(pose, betas, trans, vertices)
        if keypoints_2d is not None:
            if self.keypoints is None:
                raise ValueError("kp2d_err needs the HSMR keypoint regressors: build the Converter with keypoints=")
            inputs["keypoints_2d"] = _checked(keypoints_2d, "keypoints_2d", (44, 3))
        n = next(iter(inputs.values())).shape[0]
        parts = []
        # Fixed chunks bound memory and keep every person's numbers independent of the input size.
        for start in tqdm(range(0, n, self.config.chunk_size), disable=not progress, unit="chunk", desc=self.config.method):
            chunk = {k: v[start : start + self.config.chunk_size] for k, v in inputs.items()}
            parts.append(self._convert_chunk(chunk))
        return ConversionResult.concat(parts)

    def convert_with_flip(
        self, pose: Tensor, betas: Tensor, trans: Tensor | None = None, keypoints_2d: Tensor | None = None, progress: bool = False
    ) -> tuple[ConversionResult, ConversionResult]:
        """Fits of the person and, independently, of its mirror image (the standard SMPL flip)."""
        pose = torch.as_tensor(pose, dtype=torch.float32)
        trans = torch.zeros_like(pose[:, :3]) if trans is None else torch.as_tensor(trans, dtype=torch.float32)
        flip_kp = None if keypoints_2d is None else flip_keypoints_normalised(torch.as_tensor(keypoints_2d, dtype=torch.float32))
        orig = self.convert(pose, betas, trans, keypoints_2d=keypoints_2d, progress=progress)
        return orig, self.convert(mirror_smpl_pose(pose), betas, mirror_translation(trans), keypoints_2d=flip_kp, progress=progress)

    # -- one chunk --------------------------------------------------------------------------

    def _convert_chunk(self, inputs: dict[str, Tensor]) -> ConversionResult:
        keypoints_2d = inputs.pop("keypoints_2d", None)
        reasons, flags = check_inputs(**inputs)
        ok = torch.tensor([not r for r in reasons], dtype=torch.bool)
        n = len(reasons)
        poses, betas, trans = torch.zeros(n, NUM_DOFS), torch.zeros(n, 10), torch.zeros(n, 3)
        pve_mean, pve_max = torch.full((n,), float("nan")), torch.full((n,), float("nan"))
        violation = torch.full((n,), float("nan"))
        kp2d_err = torch.full((n,), float("nan"))
        if ok.any():
            # Good samples are packed and padded to a multiple of `pad_multiple` (capped at the
            # chunk size), so a person goes through the same kernel shapes whatever its batch.
            count = int(ok.sum())
            step = min(self.config.pad_multiple, self.config.chunk_size)
            size = min(self.config.chunk_size, -(-count // step) * step)
            rows = torch.nonzero(ok).flatten()
            rows = torch.cat((rows, rows[-1:].expand(size - count)))
            good = {k: v[rows.to(v.device)].to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                target, smpl_betas = self._targets(good)
            fit = self._fit_fast if self.config.method == "fast" else self._fit_staged
            q, b, t = (v[:count] for v in fit(target, smpl_betas, count))
            ok_rows = torch.nonzero(ok).flatten()
            q = wrap_angles(q)
            if self.config.beta_bound is not None:
                # The hinge leaves a hair's overshoot; HSMR's loader tests |β| > bound exactly.
                bound = self.config.beta_bound
                held = b.abs().amax(dim=1) >= bound * (1 - 1e-3)
                b = b.clamp(-bound, bound)
                for at_bound, row in zip(held.tolist(), ok_rows.tolist()):
                    if at_bound:
                        flags[row] = "; ".join(filter(None, (flags[row], f"SKEL betas held at the soft bound ±{bound:g}")))
            with torch.no_grad():
                skin = self.skel(q, b, t).skin_verts
                dist = (skin - target[:count]).norm(dim=-1)
            poses[ok], betas[ok], trans[ok] = q.cpu(), b.cpu(), t.cpu()
            pve_mean[ok], pve_max[ok] = dist.mean(-1).cpu(), dist.amax(-1).cpu()
            violation[ok] = limit_violation(q, bounds=self.bounds).cpu()
            if keypoints_2d is not None:
                with torch.no_grad():
                    kp = keypoints_2d[ok_rows.to(keypoints_2d.device)].float().to(self.device)
                    kp2d_err[ok] = fit_camera_error(self.keypoints(skin), kp).cpu()
        converged = ok & torch.isfinite(pve_max)
        reasons = [r or ("" if c else "fit diverged (non-finite result)") for r, c in zip(reasons, converged.tolist())]
        return ConversionResult(poses, betas, trans, pve_mean, pve_max, violation, converged, kp2d_err, reasons, self.config.method, self.config.digest(), flags)

    def _targets(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        if "vertices" in inputs:
            return inputs["vertices"].float(), None
        verts, _ = smpl_forward(self.smpl, inputs["pose"].float(), inputs["betas"].float(), inputs["trans"].float())
        return verts, inputs["betas"].float()

    # -- fast: closed-form start + Levenberg–Marquardt -----------------------------------------

    @torch.no_grad()
    def initial_guess(self, target: Tensor, smpl_betas: Tensor | None) -> Tensor:
        """Start parameters (B,59) = (q, β, τ) on the converter's device, from target meshes (B,6890,3) m and SMPL β (B,10) or None:
        mapped β, per-bone Procrustes rotations, pelvis placed."""
        target = target.to(self.device)
        smpl_betas = None if smpl_betas is None else smpl_betas.to(self.device)
        b = target.shape[0]
        betas = target.new_zeros(b, 10) if smpl_betas is None else smpl_betas @ self.beta_map.T + self.beta_offset
        v_shaped, joints = self.skel.shape(betas)
        rest = v_shaped[:, self.bone_ids]  # (B,24,K,3)
        posed = target[:, self.bone_ids]
        w = self.bone_weights.expand(b, -1, -1)
        glob, _ = roma.rigid_points_registration(rest.flatten(0, 1), posed.flatten(0, 1), weights=w.flatten(0, 1))
        glob = glob.view(b, 24, 3, 3)
        parent = glob[:, [0, *PARENTS[1:]]]
        local = parent.transpose(-1, -2) @ glob
        local[:, 0] = glob[:, 0]
        frame = self.skel.bone_alignment(joints) @ self.skel.apose_rot.transpose(-1, -2)
        q = dofs_from_rotations(frame.transpose(-1, -2) @ local @ frame)
        anat = torch.einsum("jv,bvc->bjc", self.joint_regressor, target)
        trans = anat[:, 0] - joints[:, 0]
        return torch.cat((q, betas, trans), dim=1)

    def _fit_fast(self, target: Tensor, smpl_betas: Tensor | None, count: int) -> tuple[Tensor, Tensor, Tensor]:
        goal = self._fit_goal(target)
        x = levenberg_marquardt(
            self.initial_guess(target, smpl_betas),
            lambda x: self._residuals(x, goal),
            lambda x: self._linearize(x, goal),
            self.config.lm_iterations,
        )
        if self.config.polish_iterations:
            step = self.polish_batch
            x = torch.cat([self._polish(x[i : i + step], target[i : i + step]) for i in range(0, x.shape[0], step)])
        return x[:, :NUM_DOFS], x[:, NUM_DOFS : NUM_DOFS + 10], x[:, NUM_DOFS + 10 :]

    def _polish(self, x: Tensor, target: Tensor) -> Tensor:
        """Robust LM steps from x (B,59) towards the target mesh (B,6890,3), on the polish sample."""
        goal = self._fit_goal(target, full=True)
        return levenberg_marquardt(
            x,
            lambda x: self._residuals(x, goal, full=True),
            lambda x: self._linearize(x, goal, full=True),
            self.config.polish_iterations,
        )

    def _fit_goal(self, target: Tensor, full: bool = False) -> dict[str, Tensor]:
        anat = torch.einsum("jv,bvc->bjc", self.joint_regressor, target)
        return {"verts": target[:, self.polish_ids if full else self.fit_ids], "joints": anat}

    def _residuals(self, x: Tensor, goal: dict[str, Tensor], full: bool = False) -> Tensor:
        """Stacked weighted residuals (B,M) at x = (q, β, τ); `full`: robust, on the polish sample."""
        q, betas, trans = x[:, :NUM_DOFS], x[:, NUM_DOFS : NUM_DOFS + 10], x[:, NUM_DOFS + 10 :]
        out = (self.polish_skel if full else self.fit_skel)(q, betas, trans)
        return self._stack_residuals(out.skin_verts, out.joints, q, betas, goal, full)[0]

    def _robust_scale(self, diff: Tensor) -> Tensor:
        """Per-vertex factor (B,K,1) turning |r|² into c·|r|²/√(|r|²+δ²) ≈ c·|r| (IRLS weight)."""
        norm2 = diff.square().sum(-1, keepdim=True)
        return (POLISH_SCALE / (norm2 + self.config.polish_floor**2).sqrt()).sqrt()

    def _weights(self, k: int) -> tuple[float, float, float, float]:
        """Square roots of the vertex, joint, limit and β weights (vertex term = mean over k)."""
        cfg = self.config
        return 1.0 / math.sqrt(k), math.sqrt(cfg.joint_weight / 24), math.sqrt(cfg.limit_weight), math.sqrt(cfg.beta_weight)

    def _stack_residuals(
        self, skin: Tensor, joints: Tensor, q: Tensor, betas: Tensor, goal: dict[str, Tensor], robust: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(B,M): vertices, anatomical joints, joint-limit hinge, β prior — each weighted; and the
        vertex rows' weights (B,K,1) (robust: IRLS-scaled)."""
        w_vert, w_joint, w_limit, w_beta = self._weights(skin.shape[1])
        hinge = limit_hinge(q, self.limit_ids, self.low, self.high)[0]
        diff = skin - goal["verts"]
        w_rows = w_vert * (self._robust_scale(diff) if robust else diff.new_ones(1, 1, 1))
        terms = [
            (diff * w_rows).flatten(1),
            ((joints - goal["joints"]) * w_joint).flatten(1),
            hinge * w_limit,
            betas * w_beta,
        ]
        if self.config.beta_bound is not None:
            terms.append(beta_bound_hinge(betas, self.config.beta_bound)[0] * math.sqrt(BETA_BOUND_WEIGHT))
        return torch.cat(terms, dim=1), w_rows

    def _linearize(self, x: Tensor, goal: dict[str, Tensor], full: bool = False) -> tuple[Tensor, Tensor]:
        """Residuals (B,M) and their Jacobian (B,M,59) at x = (q, β, τ) (`full`: the IRLS
        Jacobian, robust weights held fixed)."""
        q, betas, trans = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        lin = linearize_skin(self.polish_skel if full else self.fit_skel, q, betas)
        b, k = x.shape[0], lin.skin.shape[1]
        res, w_rows = self._stack_residuals(lin.skin + trans[:, None], lin.joints + trans[:, None], q, betas, goal, full)
        _, w_joint, w_limit, w_beta = self._weights(k)
        w_rows = w_rows.expand(b, k, 3).reshape(b, 3 * k, 1)
        eye3 = torch.eye(3, device=x.device)
        n_vert, n_joint = 3 * k, 72
        jac = x.new_zeros(b, res.shape[1], NUM_PARAMS)
        jac[:, :n_vert, :NUM_KINEMATIC] = lin.d_skin.permute(1, 2, 3, 0).reshape(b, n_vert, NUM_KINEMATIC) * w_rows
        jac[:, :n_vert, NUM_KINEMATIC:] = eye3.repeat(k, 1) * w_rows
        rows = slice(n_vert, n_vert + n_joint)
        jac[:, rows, :NUM_KINEMATIC] = lin.d_joints.reshape(NUM_KINEMATIC, b, n_joint).permute(1, 2, 0) * w_joint
        jac[:, rows, NUM_KINEMATIC:] = eye3.repeat(24, 1) * w_joint
        start = n_vert + n_joint
        n_limit = len(self.limit_ids)
        jac[:, start : start + n_limit, :NUM_DOFS] = limit_hinge(q, self.limit_ids, self.low, self.high)[1] * w_limit
        jac[:, start + n_limit : start + n_limit + 10, NUM_DOFS:NUM_KINEMATIC] = torch.eye(10, device=x.device) * w_beta
        if self.config.beta_bound is not None:
            d_bound = beta_bound_hinge(betas, self.config.beta_bound)[1]
            jac[:, start + n_limit + 10 :, NUM_DOFS:NUM_KINEMATIC] = torch.diag_embed(d_bound) * math.sqrt(BETA_BOUND_WEIGHT)
        return res, jac

    # -- staged-lbfgs: the official schedule, one person at a time ------------------------------

    def _fit_staged(self, target: Tensor, smpl_betas: Tensor | None, count: int) -> tuple[Tensor, Tensor, Tensor]:
        stages = _official_stages(self.smpl.lbs_weights, self.skel)
        results = [self._fit_staged_one(target[i : i + 1], None if smpl_betas is None else smpl_betas[i : i + 1], stages) for i in range(count)]
        return tuple(torch.cat(parts) for parts in zip(*results))  # type: ignore[return-value]

    def _fit_staged_one(self, target: Tensor, smpl_betas: Tensor | None, stages: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
        betas0 = target.new_zeros(1, 10) if smpl_betas is None else smpl_betas @ self.beta_map.T + self.beta_offset
        q = target.new_zeros(1, NUM_DOFS)
        trans = torch.einsum("jv,bvc->bjc", self.joint_regressor, target)[:, 0] - self.skel.shape(betas0)[1][:, 0]
        betas = betas0.clone()
        anat = torch.einsum("jv,bvc->bjc", self.joint_regressor, target)
        for stage in stages:
            q_start = q.detach().clone()
            params = [q.requires_grad_(True), betas.requires_grad_(True)]
            if stage["trans"]:
                params.append(trans.requires_grad_(True))
            opt = torch.optim.LBFGS(params, lr=stage["lr"], max_iter=self.config.lbfgs_max_iter, tolerance_change=stage["tol"], line_search_fn="strong_wolfe")
            free, vmask, jmask = stage["free"], stage["verts"], stage["joints"]

            def closure():
                opt.zero_grad()
                q_used = q * free + q_start * (1 - free)
                out = self.skel(q_used, betas, trans)
                err = (out.skin_verts[:, vmask] - target[:, vmask]).square().sum() / vmask.sum()
                loss = stage["w_verts"] * err
                loss = loss + stage["w_joint"] * ((out.joints - anat).square() * jmask[None, :, None]).mean()
                loss = loss + stage["w_pose"] * q_used[:, 3:].norm()
                if self.config.beta_bound is not None:
                    loss = loss + BETA_BOUND_WEIGHT * beta_bound_hinge(betas, self.config.beta_bound)[0].square().sum()
                loss.backward()
                return loss

            for _ in range(self.config.lbfgs_steps):
                opt.step(closure)
            with torch.no_grad():
                q = (q * free + q_start * (1 - free)).detach()
                betas, trans = betas.detach(), trans.detach()
        return q, betas, trans


# -- helpers ------------------------------------------------------------------------------------


def beta_bound_hinge(betas: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """How far each |β| (B,10) lies beyond ±bound (B,10), and its derivative (B,10) w.r.t. β."""
    over = betas.abs() - bound
    return torch.relu(over), torch.sign(betas) * (over > 0).to(betas.dtype)


def _checked(value, name: str, shape: tuple[int, ...]) -> Tensor:
    value = torch.as_tensor(value, dtype=torch.float32)
    if value.shape[1:] != shape:
        raise ValueError(f"{name}: expected shape (N, {', '.join(map(str, shape))}), got {tuple(value.shape)}")
    return value


def _as_inputs(pose, betas, trans, vertices) -> dict[str, Tensor]:
    if vertices is not None:
        vertices = torch.as_tensor(vertices, dtype=torch.float32)
        if vertices.dim() != 3 or vertices.shape[1:] != (6890, 3):
            raise ValueError(f"vertices: expected shape (N, 6890, 3), got {tuple(vertices.shape)}")
        return {"vertices": vertices}
    if pose is None or betas is None:
        raise ValueError("give either SMPL pose + betas (+ trans) or SMPL vertices")
    pose = torch.as_tensor(pose, dtype=torch.float32)
    betas = torch.as_tensor(betas, dtype=torch.float32)
    n = pose.shape[0]
    if pose.dim() != 2 or pose.shape[1] != 72:
        raise ValueError(f"pose: expected shape (N, 72) axis-angle, got {tuple(pose.shape)}")
    if betas.dim() == 1:
        betas = betas.expand(n, -1)
    if betas.shape[0] != n or betas.shape[1] < 10:
        raise ValueError(f"betas: expected shape (N, 10) or (10,), got {tuple(betas.shape)}")
    trans = torch.zeros(n, 3) if trans is None else torch.as_tensor(trans, dtype=torch.float32)
    if trans.shape != (n, 3):
        raise ValueError(f"trans: expected shape (N, 3), got {tuple(trans.shape)}")
    return {"pose": pose, "betas": betas[:, :10].contiguous(), "trans": trans}


def _shape_space_map(smpl, skel: SKEL) -> tuple[Tensor, Tensor]:
    """Linear map β_skel = A·β_smpl + c matching the two shaped templates in least squares."""
    n = skel.num_verts
    s_skel = skel.shapedirs.T.double()  # (3N,10)
    s_smpl = smpl.shapedirs[:, :, :10].reshape(n * 3, 10).double()
    offset = (smpl.v_template - skel.v_template).reshape(n * 3, 1).double()
    sol = torch.linalg.lstsq(s_skel, torch.cat((s_smpl, offset), dim=1)).solution
    return sol[:, :10].float(), sol[:, 10].float()


def _spread_vertices(verts: Tensor, count: int) -> Tensor:
    """`count` vertex ids spread evenly over the surface (farthest-point sampling, deterministic)."""
    count = min(count, verts.shape[0])
    chosen = torch.zeros(count, dtype=torch.long)
    dist = torch.full((verts.shape[0],), float("inf"))
    chosen[0] = int(verts[:, 1].argmax())
    for i in range(1, count):  # once per model load
        dist = torch.minimum(dist, (verts - verts[chosen[i - 1]]).norm(dim=-1))
        chosen[i] = int(dist.argmax())
    return chosen.sort().values


def _uniform_vertices(n: int, count: int) -> Tensor:
    """`count` of n vertex ids drawn uniformly without replacement (fixed seed), sorted: every
    vertex counts alike, as in the mean vertex error."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[: min(count, n)].sort().values


def _vertex_mirror(verts: Tensor) -> Tensor:
    """For each template vertex, the vertex nearest its mirror image (x → −x)."""
    v = verts.double().numpy()
    return torch.from_numpy(cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))[1])


def _bone_vertex_sets(weights: Tensor, k: int = 128) -> tuple[Tensor, Tensor]:
    """Per bone, the k skin vertices it drives most (24,k) and their weights (24,k)."""
    w, ids = weights.T.topk(k, dim=1)
    return ids, w.clamp(min=1e-6)


def _official_stages(smpl_weights: Tensor, skel: SKEL) -> list[dict]:
    """The aligner's four stages (§6.5): free DOFs, vertex/joint masks, weights, lr, tolerance."""

    device = smpl_weights.device

    def verts_on(joints: list[int]) -> Tensor:
        return (smpl_weights[:, joints] > 0.5).any(dim=1)

    def dofs_except(excluded: list[int]) -> Tensor:
        free = torch.ones(NUM_DOFS, device=device)
        free[excluded] = 0.0
        return free

    all_joints = torch.ones(24, device=device)
    upper_limb_joints = torch.ones(24, device=device)
    upper_limb_joints[[3, 4, 5, 8, 9, 10, 18, 23]] = 0.0
    scapulae = torch.zeros(24, device=device)
    scapulae[[14, 19]] = 1.0
    root_only = torch.zeros(NUM_DOFS, device=device)
    root_only[:3] = 1.0
    common = {"w_verts": 600.0, "w_pose": 1e-4, "lr": 0.1, "tol": 1e-7, "trans": False}
    return [
        {**common, "free": root_only, "verts": verts_on([0, 3]), "joints": all_joints, "w_verts": 300.0, "w_joint": 0.0, "w_pose": 0.0, "lr": 1.0, "tol": 1e-4, "trans": True},
        {**common, "free": dofs_except([0, 1, 2, 19]), "verts": verts_on([0, 1, 2, 3, 6, 9, 12, 15, 16, 17]), "joints": upper_limb_joints, "w_joint": 500.0},
        {**common, "free": dofs_except([0, 1, 2]), "verts": ~verts_on([1, 2, 16, 17]), "joints": all_joints, "w_joint": 1000.0},
        {**common, "free": torch.ones(NUM_DOFS, device=device), "verts": torch.ones(skel.num_verts, dtype=torch.bool, device=device), "joints": scapulae, "w_joint": 1000.0},
    ]
