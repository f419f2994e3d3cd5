"""Whole motion sequences → SKEL with continuous joint-angle curves.

Frames are first converted independently (batched, `Converter.convert`); only the way each
rotation is written in DOFs is then made continuous over time:

1. Every 3-DOF ball joint without coupled translations (pelvis, hips, shoulders) is put on the
   Euler branch nearest the previous frame: (q0, q1, q2) and (q0+π, π−q1, q2+π) give the same
   rotation, and each angle may move by 2π. The other DOFs are unwrapped by 2π.
2. Near gimbal lock (middle DOF at ±90°, where the Z-up root of AMASS data sits whenever the
   person faces along ±y) only q2 + σ·q0 is determined; q0 and q2 are allowed to move at most
   twice the joint's own rotation change per frame, q2 + σ·q0 kept exact.
3. A few batched Levenberg–Marquardt steps on the skin (a fixed vertex subset) with a small pull
   towards the continuous start repair the small rotation error step 2 may leave.

With `shared_betas`, one β per sequence (the median of the per-frame fits; the official aligner
shares β too) is held fixed in step 3. Frames: SMPL's (metres, y up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from .convert import ConversionResult, Converter
from .dofs import BALL_JOINTS, DOF_AXES, JOINT_DOFS, NUM_DOFS
from .limits import limit_violation, unwrap_angles, wrap_angles
from .lm import NUM_KINEMATIC, levenberg_marquardt, linearize_skin
from .mirror import mirror_smpl_pose, mirror_translation
from .smpl import smpl_forward


@dataclass(frozen=True)
class SequenceConfig:
    """Settings of the continuity pass (angles in degrees, weights unitless)."""

    shared_betas: bool = False
    polish_iterations: int = 10
    pull_weight: float = 1e-2  # residual weight of |q − q_continuous| (rad) next to the rms vertex error (m)
    rate_factor: float = 2.0  # near lock, q0/q2 move at most rate_factor × the joint's rotation change ...
    rate_margin_deg: float = 2.0  # ... plus this, per frame
    polish_vertices: int = 500  # strided skin-vertex subset of the polish
    chunk_size: int = 64


def ball_joint_dofs() -> np.ndarray:
    """DOF ids (5,3) of the ball joints, in composition order (first DOF acts first)."""
    return np.array([JOINT_DOFS[joint] for joint in BALL_JOINTS])


def _lock_sign(dofs: np.ndarray) -> np.ndarray:
    """u2·(u1×u0) per ball joint (5,): at q1 = ±90°, Rot(u2,q2)Rot(u1,q1)Rot(u0,q0) = Rot(u2, q2 ± σq0)·Rot(u1,q1)."""
    axes = np.asarray(DOF_AXES, dtype=np.float64)[dofs]  # (5,3,3)
    return np.einsum("jc,jc->j", axes[:, 2], np.cross(axes[:, 1], axes[:, 0]))


def _nearest_turn(angle: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """`angle` shifted by a multiple of 2π to lie nearest `ref`."""
    return angle + 2 * math.pi * np.round((ref - angle) / (2 * math.pi))


def rotation_steps(q: Tensor, skel) -> Tensor:
    """Geodesic angle (T-1,24) rad between each joint's DOF rotation at consecutive frames of q (T,46), on q's device."""
    rot = skel.pose_rotations(q.double().to(skel.dof_axes.device))
    return roma.rotmat_geodesic_distance(rot[:-1], rot[1:]).to(q.device)


def continuous_dofs(q: Tensor, steps: Tensor, config: SequenceConfig = SequenceConfig()) -> Tensor:
    """DOFs (T,46) rad of consecutive frames → the same rotations written continuously over time.

    `steps` (T-1,24) is each joint's rotation change between frames (`rotation_steps`), which
    bounds how fast q0/q2 of a ball joint may move near gimbal lock.
    """
    if q.shape[0] < 2:
        return q.clone()
    out = unwrap_angles(q.double(), dim=0).numpy().copy()
    raw = q.double().numpy()
    dofs = ball_joint_dofs()
    sigma = _lock_sign(dofs)
    limit = config.rate_factor * steps.double().numpy()[:, list(BALL_JOINTS)] + math.radians(config.rate_margin_deg)
    prev = raw[0][dofs]  # (5,3) first frame: principal branch (|q1| ≤ 90°), angles in [−π, π]
    far = np.cos(prev[:, 1]) < 0
    prev[far] = prev[far] + np.array([math.pi, 0.0, math.pi])
    prev[far, 1] = math.pi - prev[far, 1]
    prev = _nearest_turn(prev, np.zeros_like(prev))
    out[0][dofs] = prev
    for t in range(1, raw.shape[0]):  # sequential by nature: each frame follows the previous one
        a = raw[t][dofs]
        b = a + np.array([math.pi, 0.0, math.pi])
        b[:, 1] = math.pi - a[:, 1]
        cands = np.stack([_nearest_turn(c, prev) for c in (a, b)])  # (2,5,3)
        delta = cands - prev
        # q0/q2 are ill-defined near lock: there the branch is told apart by q1 (and weakly by q0/q2).
        weight = np.cos(cands[..., 1]) ** 2 + 1e-2
        cost = delta[..., 1] ** 2 + weight * (delta[..., 0] ** 2 + delta[..., 2] ** 2)
        pick = cands[cost.argmin(axis=0), np.arange(len(dofs))]  # (5,3)
        # q0/q2 move at most r per frame, q2 + s·q0 (s = σ·sign(sin q1)) kept: this binds only
        # near lock, where the exact angles race while the rotation barely moves.
        s = sigma * np.where(np.sin(pick[:, 1]) >= 0, 1.0, -1.0)
        d0, d2 = pick[:, 0] - prev[:, 0], pick[:, 2] - prev[:, 2]
        ds = d2 + s * d0
        r = limit[t - 1]
        lo, hi = np.maximum(ds - r, -r), np.minimum(ds + r, r)  # feasible s·Δq0: |Δq0| ≤ r, |Δq2| ≤ r
        sd0 = np.clip(s * d0, lo, np.maximum(lo, hi))
        new0 = prev[:, 0] + s * sd0
        pick[:, 2] = pick[:, 2] + s * (pick[:, 0] - new0)
        pick[:, 0] = new0
        out[t][dofs] = pick
        prev = pick
    return torch.from_numpy(out).to(q.dtype)


def _polish(converter: Converter, target: Tensor, q0: Tensor, betas: Tensor, trans: Tensor, config: SequenceConfig, free_betas: bool) -> tuple[Tensor, Tensor, Tensor]:
    """LM on x = (q, β, τ): skin-subset error + pull_weight·|q − q0|; β frozen unless free_betas."""
    skel = converter.skel
    ids = torch.linspace(0, skel.num_verts - 1, min(config.polish_vertices, skel.num_verts)).round().long().to(target.device)
    sub = skel.restricted_to(ids)
    goal = target[:, ids]
    k = len(ids)
    w_vert, w_pull = 1.0 / math.sqrt(k), config.pull_weight
    beta_mask = torch.ones(1, NUM_KINEMATIC, device=target.device)
    if not free_betas:
        beta_mask[:, NUM_DOFS:] = 0.0

    def residuals(x: Tensor) -> Tensor:
        q, b, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        skin = sub(q, b, t).skin_verts
        return torch.cat((((skin - goal) * w_vert).flatten(1), (q - q0) * w_pull), dim=1)

    def linearize(x: Tensor) -> tuple[Tensor, Tensor]:
        q, b, t = x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]
        lin = linearize_skin(sub, q, b)
        n = x.shape[0]
        res = torch.cat((((lin.skin + t[:, None] - goal) * w_vert).flatten(1), (q - q0) * w_pull), dim=1)
        jac = x.new_zeros(n, res.shape[1], x.shape[1])
        jac[:, : 3 * k, :NUM_KINEMATIC] = lin.d_skin.permute(1, 2, 3, 0).reshape(n, 3 * k, NUM_KINEMATIC) * w_vert * beta_mask
        jac[:, : 3 * k, NUM_KINEMATIC:] = torch.eye(3, device=x.device).repeat(k, 1) * w_vert
        jac[:, 3 * k :, :NUM_DOFS] = torch.eye(NUM_DOFS, device=x.device) * w_pull
        return res, jac

    x = levenberg_marquardt(torch.cat((q0, betas, trans), dim=1), residuals, linearize, config.polish_iterations)
    return x[:, :NUM_DOFS], x[:, NUM_DOFS:NUM_KINEMATIC], x[:, NUM_KINEMATIC:]


def convert_sequence(
    converter: Converter,
    pose: Tensor,
    betas: Tensor,
    trans: Tensor | None = None,
    config: SequenceConfig = SequenceConfig(),
    progress: bool = False,
    independent: ConversionResult | None = None,
) -> ConversionResult:
    """Consecutive frames of one person: SMPL pose (T,72), betas (T,10)|(10,), trans (T,3) → SKEL fits (T) with continuous DOF curves.

    `independent`: the frames' own `converter.convert` result, when the caller already has it.
    """
    pose = torch.as_tensor(pose, dtype=torch.float32)
    trans = torch.zeros(pose.shape[0], 3) if trans is None else torch.as_tensor(trans, dtype=torch.float32)
    res = converter.convert(pose, betas, trans, progress=progress) if independent is None else independent
    res = dataclasses.replace(res, **{f.name: getattr(res, f.name).clone() for f in dataclasses.fields(res) if isinstance(getattr(res, f.name), Tensor)})
    res.config_digest = sequence_digest(converter.config.digest(), config)
    dev = converter.device
    ok = res.converged
    if int(ok.sum()) < 1:
        return res
    rows = torch.nonzero(ok).flatten()  # failed frames keep their reason; the curve skips them
    q_ind = res.poses[rows]
    q_cont = continuous_dofs(q_ind, rotation_steps(q_ind, converter.skel), config).float()
    b = res.betas[rows]
    if config.shared_betas:
        b = b.median(dim=0).values.expand_as(b).contiguous()
        redo = torch.ones(len(rows), dtype=torch.bool)
    else:
        # Only frames whose rotations the rate limit changed need a fit again; the others are
        # the same rotations written differently, so their mesh is exactly the independent one.
        rotations = [converter.skel.pose_rotations(v.double().to(dev)) for v in (q_cont, q_ind)]
        redo = roma.rotmat_geodesic_distance(*rotations).amax(dim=1).cpu() > 1e-5
    betas_in = torch.as_tensor(betas, dtype=torch.float32)
    betas_in = betas_in.expand(pose.shape[0], -1) if betas_in.dim() == 1 else betas_in
    with torch.no_grad():
        target, _ = smpl_forward(converter.smpl, *(v.to(dev) for v in (pose[rows], betas_in[rows, :10].contiguous(), trans[rows])))
    # Fitted on the converter's device, kept (like `res`) on the CPU.
    q, t = q_cont.to(dev), res.trans[rows].to(dev)
    b = b.to(dev)
    if redo.any():
        sel = torch.nonzero(redo).flatten().to(dev)
        parts = [
            _polish(converter, target[sel[s]], q[sel[s]], b[sel[s]], t[sel[s]], config, not config.shared_betas)
            for s in _chunks(len(sel), config.chunk_size)
        ]
        q[sel], b[sel], t[sel] = (torch.cat(p) for p in zip(*parts))
        with torch.no_grad():
            dist = torch.cat([(converter.skel(q[sel[s]], b[sel[s]], t[sel[s]]).skin_verts - target[sel[s]]).norm(dim=-1) for s in _chunks(len(sel), config.chunk_size)])
        done = rows[sel.cpu()]
        res.pve_mean[done], res.pve_max[done] = dist.mean(-1).cpu(), dist.amax(-1).cpu()
    q, b, t = q.cpu(), b.cpu(), t.cpu()
    res.poses[rows], res.betas[rows], res.trans[rows] = q, b, t
    res.limit_violation[rows] = limit_violation(wrap_angles(q), bounds=converter.bounds)
    return res


def convert_sequence_with_flip(
    converter: Converter, pose: Tensor, betas: Tensor, trans: Tensor, config: SequenceConfig = SequenceConfig(), keypoints_2d: Tensor | None = None
) -> tuple[ConversionResult, ConversionResult]:
    """A sequence (T,72) and its mirror image, each with continuous DOF curves; kp2d_err is the per-frame fit's."""
    orig, flip = converter.convert_with_flip(pose, betas, trans, keypoints_2d=keypoints_2d)
    return (
        convert_sequence(converter, pose, betas, trans, config, independent=orig),
        convert_sequence(converter, mirror_smpl_pose(pose), betas, mirror_translation(trans), config, independent=flip),
    )


def sequence_digest(config_digest: str, config: SequenceConfig) -> str:
    """Digest of a conversion config plus the sequence pass's settings (its labels' numbers depend on both)."""
    blob = json.dumps({"convert": config_digest, "sequence": dataclasses.asdict(config)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, s + size) for s in range(0, n, size)]
