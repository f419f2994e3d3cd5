"""SMPL-family body parameters from an npz file, whatever layout it uses → SMPL's 72-value pose.

Layouts read (per frame/person N):

* `poses` / `pose`: SMPL (N,72); SMPL-H (N,156) = root + 21 body + 2×15 hand joints; SMPL-X
  (N,165) = root + 21 body + jaw + 2 eyes + 2×15 hand joints.
* `root_orient` (N,3) + `pose_body` (N,63) (AMASS SMPL-X releases); `global_orient` (N,3) +
  `body_pose` (N,63|69).
* `betas` (K,) or (N,K), K ≥ 10 (AMASS: 16), first 10 kept; `trans` (N,3).
* `gender` (AMASS: a 0-d string or bytes; per row (N,) also read) and `mocap_framerate` /
  `mocap_frame_rate`.

SMPL's root and 21 body joints are the first 22 joints of all three models; SMPL's two hand
joints (22, 23) have no counterpart in SMPL-H/SMPL-X and are zeroed there. SMPL-X betas are read as SMPL betas (the two
shape spaces differ: an approximation). Axis-angles of norm > π are rewritten with norm ≤ π
(same rotation), so downstream code sees one convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SMPL_POSE = 72
BODY = 66  # root + 21 body joints, axis-angle
GENDERS = ("neutral", "male", "female")
_FULL_POSE_DIMS = {72: "smpl", 156: "smplh", 165: "smplx"}


class SmplParamsError(ValueError):
    """A field of an npz cannot be read as SMPL parameters: names the field and why (reason starts with a quarantine kind)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field {field!r}: {reason}")
        self.field, self.reason = field, reason


@dataclass
class SmplParams:
    """SMPL pose (N,72) rad axis-angle, betas (N,10), trans (N,3) m (float32), per-row gender ('' = unknown), frame rate."""

    pose: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    genders: list[str]
    framerate: float | None
    layout: str  # smpl | smplh | smplx | amass (root_orient + pose_body) | split (global_orient + body_pose)
    pose_field: str


def canonical_axis_angle(aa: np.ndarray) -> np.ndarray:
    """Axis-angles (..., 3) → the same rotations with norm ≤ π."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    wrapped = angle - 2 * math.pi * np.round(angle / (2 * math.pi))  # in [−π, π]: a negative angle flips the axis
    scale = np.divide(wrapped, angle, out=np.ones_like(angle), where=angle > 0)
    return aa * scale


def _pose(z) -> tuple[np.ndarray, str, str]:
    files = set(z.files)
    for name in ("poses", "pose"):
        if name in files:
            p = np.asarray(z[name])
            if p.ndim != 2 or p.shape[1] not in _FULL_POSE_DIMS:
                raise SmplParamsError(name, f"shape: got {p.shape}, expected (N, 72) SMPL, (N, 156) SMPL-H or (N, 165) SMPL-X")
            return p if p.shape[1] == SMPL_POSE else p[:, :BODY], _FULL_POSE_DIMS[p.shape[1]], name
    for root_name, body_name, layout in (("root_orient", "pose_body", "amass"), ("global_orient", "body_pose", "split")):
        if root_name in files and body_name in files:
            root, body = np.asarray(z[root_name]), np.asarray(z[body_name])
            if root.ndim != 2 or root.shape[1] != 3:
                raise SmplParamsError(root_name, f"shape: got {root.shape}, expected (N, 3)")
            if body.ndim != 2 or body.shape[1] not in (63, 69) or body.shape[0] != root.shape[0]:
                raise SmplParamsError(body_name, f"shape: got {body.shape}, expected ({root.shape[0]}, 63) or ({root.shape[0]}, 69)")
            return np.concatenate((root, body), axis=1), layout, body_name
    if "body_pose" in files:  # SPIN-style full pose under this name
        p = np.asarray(z["body_pose"])
        if p.ndim == 2 and p.shape[1] in _FULL_POSE_DIMS:
            return p if p.shape[1] == SMPL_POSE else p[:, :BODY], _FULL_POSE_DIMS[p.shape[1]], "body_pose"
        raise SmplParamsError("body_pose", f"shape: got {p.shape} without 'global_orient': expected (N, 72)")
    raise SmplParamsError("poses", "missing: needs 'poses'/'pose' (N,72|156|165), 'root_orient'+'pose_body' or 'global_orient'+'body_pose'")


def _gender(z, n: int) -> list[str]:
    if "gender" not in z.files:
        return [""] * n
    g = np.asarray(z["gender"])
    values = [g.item()] * n if g.ndim == 0 else list(g.reshape(-1))
    if len(values) != n:
        raise SmplParamsError("gender", f"shape: got {g.shape}, expected a scalar or ({n},)")
    out = []
    for v in values:
        s = (v.decode() if isinstance(v, bytes) else str(v)).strip().lower()
        if s not in GENDERS:
            raise SmplParamsError("gender", f"type: value {s!r}, expected one of {GENDERS}")
        out.append(s)
    return out


def read_smpl_params(z, require_betas: bool = True) -> SmplParams:
    """Open npz (np.load result) → SmplParams; SmplParamsError naming the field if it cannot be read."""
    body, layout, pose_field = _pose(z)
    n = body.shape[0]
    if n == 0:
        raise SmplParamsError(pose_field, "missing: 0 rows, nothing to convert")
    pose = np.zeros((n, SMPL_POSE), np.float32)
    pose[:, : body.shape[1]] = canonical_axis_angle(body.reshape(n, -1, 3)).reshape(n, body.shape[1])
    files = set(z.files)
    if "betas" in files:
        betas = np.asarray(z["betas"])
        if betas.ndim == 1:
            betas = np.broadcast_to(betas[None], (n, betas.shape[0]))
        if betas.ndim != 2 or betas.shape[0] != n or betas.shape[1] < 10:
            raise SmplParamsError("betas", f"shape: got {betas.shape}, expected (K,) or ({n}, K) with K ≥ 10")
    elif require_betas:
        raise SmplParamsError("betas", "missing: no betas field")
    else:
        betas = np.zeros((n, 10))
    trans = np.asarray(z["trans"]) if "trans" in files else np.zeros((n, 3))
    if trans.shape != (n, 3):
        raise SmplParamsError("trans", f"shape: got {trans.shape}, expected ({n}, 3)")
    rate = None
    for name in ("mocap_framerate", "mocap_frame_rate"):
        if name in files:
            value = np.asarray(z[name])
            if value.size != 1 or not np.isfinite(value.astype(np.float64)).all():
                raise SmplParamsError(name, f"type: expected one finite number, got shape {value.shape}")
            rate = float(value.reshape(-1)[0])
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return SmplParams(as32(pose), as32(betas[:, :10]), as32(trans), _gender(z, n), rate, layout, pose_field)
