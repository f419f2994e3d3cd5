"""SKEL body model: a batched, differentiable torch layer reading the official v1.1.1 pickles.

Written from `docs/reference/skel-model.md` §2–3 (the model's maths), not from the official code.

Frames and units: metres, SMPL's frame (y up, the body faces +z, the subject's left is +x).
q (B, 46) are radians; q = 0 is the T-pose, in which the skin equals the shaped template.
q0–q2 (pelvis) are the global rotation about the regressed pelvis joint; translation `trans`
is added last to skin, joints and skeleton.

Differences from the official forward, all deliberate:
* every row of a batch gets its own shape and gradient (the official code computes row 0 once
  when all betas are equal, so autograd then reaches only betas[0]);
* joint locations use the joint regressor folded into the shape space (J = J_osim·V0 +
  (J_osim·S)·β), equal to J_osim·v_shaped up to float32 summation order;
* `pose_dep_bs=False` works (the official one raises).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# The DOF layout lives in .dofs; DOF_JOINT, DOF_NAMES and DOFS_PER_JOINT stay importable from here.
from .dofs import DOF_AXES, DOF_JOINT, DOF_NAMES, DOFS_PER_JOINT, NUM_DOFS, NUM_JOINTS, rotations_from_dofs  # noqa: F401
from .pickles import ModelFileError, dense, load_model_pickle

SKEL_VERSION = "1.1.1"
NUM_BETAS = 10

JOINT_NAMES = (
    "pelvis", "femur_r", "tibia_r", "talus_r", "calcn_r", "toes_r",
    "femur_l", "tibia_l", "talus_l", "calcn_l", "toes_l",
    "lumbar_body", "thorax", "head", "scapula_r", "humerus_r", "ulna_r", "radius_r", "hand_r",
    "scapula_l", "humerus_l", "ulna_l", "radius_l", "hand_l",
)  # fmt: skip
PARENTS = (-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 12, 14, 15, 16, 17, 12, 19, 20, 21, 22)

# Joints whose bone-alignment rotation is the identity (pelvis and the leaves).
_UNALIGNED_JOINTS = (0, 5, 10, 13, 18, 23)
_LEAVES = (5, 10, 13, 18, 23)
# SKEL joint → SMPL joint whose pose corrective it drives; duplicates resolve to the last SKEL
# joint in index order (what the official CPU forward does). SMPL 9, 12, 22, 23 stay at rest.
_SKEL_TO_SMPL = (0, 2, 5, 8, 8, 11, 1, 4, 7, 7, 10, 3, 6, 15, 14, 17, 19, 0, 21, 13, 16, 18, 0, 20)
# Skin-vertex pairs that rescale the skeleton mesh per bone axis (§3.12): (bone, bone axis,
# world axis, v1, v2).
_SCALE_PAIRS = (
    (13, 0, 2, 410, 384), (13, 1, 1, 414, 384), (13, 2, 0, 196, 3708),
    (18, 0, 1, 6179, 6137), (18, 1, 0, 5670, 5906),
    (23, 0, 1, 6179, 6137), (23, 1, 0, 5670, 5906),
)  # fmt: skip
_THORAX_WIDTH_PAIRS = ((3027, 3495), (3027, 3506))
_FLOAT64_EPS = 2.220446049250313e-16
_PARENT_INDEX = [0, *PARENTS[1:]]

REQUIRED_KEYS = (
    "version", "skin_template_v", "skin_template_f", "skel_template_v", "skel_template_f",
    "shapedirs", "posedirs", "J_regressor", "J_regressor_osim", "per_joint_rot", "skin_weights",
    "skel_weights", "skel_weights_rigid", "osim_kintree_table", "apose_rel_transfo",
)  # fmt: skip


@dataclass
class SKELOutput:
    """Posed SKEL: skin (B,6890,3), joints (B,24,3), joint frames (B,24,3,3), skeleton or None."""

    skin_verts: Tensor
    joints: Tensor
    joints_ori: Tensor
    skel_verts: Tensor | None
    joints_tpose: Tensor
    v_shaped: Tensor


@dataclass
class PosedSkeleton:
    """Kinematic state (B,24,…): bone alignment Rk, local and global rotations, joint positions,
    and the skinning transforms [R | t − R·J_rest] (B,24,3,4)."""

    align: Tensor
    local_rot: Tensor
    rotations: Tensor
    joints: Tensor
    transforms: Tensor


def resolve_skel_path(path: str | os.PathLike, gender: str) -> Path:
    """The SKEL pickle for `gender` from a pickle path, a SKEL folder, or a models dir with skel/."""
    if gender not in ("male", "female"):
        raise ValueError(f"SKEL exists only as 'male' or 'female', got gender={gender!r}")
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / f"skel_{gender}.pkl", path / "skel" / f"skel_{gender}.pkl"):
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"{path}: no skel_{gender}.pkl here or in {path / 'skel'} "
        "(expected the official skel_models_v1.1 files, or run `skelpgt models make-synthetic`)"
    )


def check_skel_dict(data: object, path: Path) -> dict:
    """Validate an unpickled SKEL file; raise ModelFileError naming the file and what is wrong."""
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a dict in the SKEL pickle, found {type(data).__name__}")
    if "version" not in data:
        hint = " (it has 'weights', the v1.0 layout)" if "weights" in data else ""
        raise ModelFileError(
            f"{path}: no 'version' key{hint}: this is a pre-1.1.1 SKEL file; version {SKEL_VERSION} "
            "is required (download skel_models_v1.1.zip again)"
        )
    if str(data["version"]) != SKEL_VERSION:
        raise ModelFileError(
            f"{path}: SKEL file version {data['version']!r}, expected {SKEL_VERSION!r} "
            "(download skel_models_v1.1.zip again)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelFileError(f"{path}: SKEL v{SKEL_VERSION} file lacks keys {missing}")
    n = np.shape(data["skin_template_v"])[0]
    nk = np.shape(data["skel_template_v"])[0]
    expected = {
        "skin_template_v": (n, 3),
        "J_regressor_osim": (NUM_JOINTS, n),
        "skin_weights": (n, NUM_JOINTS),
        "posedirs": (n, 3, 207),
        "osim_kintree_table": (2, NUM_JOINTS),
        "apose_rel_transfo": (NUM_JOINTS, 4, 4),
        "skel_template_v": (nk, 3),
        "skel_weights": (nk, NUM_JOINTS),
        "skel_weights_rigid": (nk, NUM_JOINTS),
    }
    for key, shape in expected.items():
        if tuple(np.shape(data[key])) != shape:
            raise ModelFileError(f"{path}: field {key!r} has shape {tuple(np.shape(data[key]))}, expected {shape}")
    sd = np.shape(data["shapedirs"])
    if len(sd) != 3 or sd[:2] != (n, 3) or sd[2] < NUM_BETAS:
        raise ModelFileError(f"{path}: field 'shapedirs' has shape {sd}, expected ({n}, 3, >={NUM_BETAS})")
    if np.size(data["per_joint_rot"]) != NUM_JOINTS * 9:
        raise ModelFileError(f"{path}: field 'per_joint_rot' has {np.size(data['per_joint_rot'])} values, expected 216")
    if n <= max(v for *_, v1, v2 in _SCALE_PAIRS for v in (v1, v2)):
        raise ModelFileError(f"{path}: skin has {n} vertices; SKEL needs the 6890-vertex SMPL topology")
    parents = np.asarray(data["osim_kintree_table"])[0].astype(np.int64)
    parents = np.where((parents < 0) | (parents >= NUM_JOINTS), -1, parents)
    if tuple(parents.tolist()) != PARENTS:
        raise ModelFileError(f"{path}: field 'osim_kintree_table' parents {parents.tolist()} differ from SKEL's {list(PARENTS)}")
    return data


def _first_children(kintree: np.ndarray) -> np.ndarray:
    """child[j] = joint of the first kintree column whose parent is j; 0 for leaves (official rule)."""
    parents, ids = kintree[0].astype(np.int64), kintree[1].astype(np.int64)
    child = np.zeros(NUM_JOINTS, dtype=np.int64)
    for j in range(NUM_JOINTS):
        hits = np.flatnonzero(parents == j)
        child[j] = ids[hits[0]] if hits.size else 0
    return child


def _chain_levels(parents: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Joints grouped by depth (with their parents), so the chain is composed one level at a time."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    levels = []
    for d in range(1, max(depth) + 1):
        joints = [j for j in range(len(parents)) if depth[j] == d]
        levels.append((joints, [parents[j] for j in joints]))
    return levels


def blend_transforms(weights: Tensor, transforms: Tensor) -> Tensor:
    """Per-vertex blend (...,N,3,4) of joint transforms (...,24,3,4) with skinning weights (N,24)."""
    lead = transforms.shape[:-3]
    flat = transforms.reshape(*lead, NUM_JOINTS, 12)
    return (weights @ flat).view(*lead, weights.shape[0], 3, 4)


def rot_between(u: Tensor, w: Tensor) -> Tensor:
    """Rotation (...,3,3) turning direction u (...,3) onto w (...,3), SKEL's formula (§3.4)."""
    a = u / u.norm(dim=-1, keepdim=True)
    c_ = w / w.norm(dim=-1, keepdim=True)
    v = torch.cross(a, c_, dim=-1)
    c = (a * c_).sum(-1)
    s = v.norm(dim=-1) + _FLOAT64_EPS
    k = _skew(v)
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    rot = eye + k + (k @ k) * ((1 - c) / s**2)[..., None, None]
    return torch.nan_to_num(rot, nan=0.0)


def _skew(v: Tensor) -> Tensor:
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), -1).view(*v.shape, 3)


def _arc_offset(angle: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """(x, y) of the end of a planar arc of `length` bent by `angle` (constant-curvature spine)."""
    small = angle.abs() < 1e-5
    safe = torch.where(small, torch.ones_like(angle), angle)
    x = torch.where(small, length * angle / 2, length / safe * (1 - torch.cos(safe)))
    y = torch.where(small, length * (1 - angle**2 / 6), length / safe * torch.sin(safe))
    return x, y


def _scapula_offset(abduction: Tensor, elevation: Tensor, width: Tensor, height: Tensor) -> Tensor:
    """Right-scapula point on its thoracic ellipsoid, parent frame (B,3) (§3.7)."""
    e = elevation - math.pi / 4
    return torch.stack(
        (-(width / 4) * torch.cos(e) * torch.cos(abduction), -(height / 2) * torch.sin(e), (width / 4) * torch.sin(abduction)),
        dim=-1,
    )


def relative_offsets(joints: Tensor) -> Tensor:
    """Joint offsets from their parents (B,24,3); the root keeps its absolute position."""
    rel = joints - joints[:, _PARENT_INDEX]
    rel[:, 0] = joints[:, 0]
    return rel


def bone_alignment(joints: Tensor, per_joint_rot: Tensor, apose_offset: Tensor, child: Tensor) -> Tensor:
    """Rk (B,24,3,3) = RotBetween(P·e, d)·P: BSM bone directions e turned onto the body's d (§3.4)."""
    rel = relative_offsets(joints)
    d = rel[:, child].clone()
    d[:, 16] = rel[:, 17] + rel[:, 18]
    d[:, 21] = rel[:, 22] + rel[:, 23]
    d[:, 12] = d[:, 11]
    e = apose_offset[child].clone()
    e[16] = apose_offset[17] + apose_offset[18]
    e[21] = apose_offset[22] + apose_offset[23]
    source = torch.einsum("jab,jb->ja", per_joint_rot, e)
    align = rot_between(source.expand_as(d), d)
    fixed = torch.zeros(NUM_JOINTS, dtype=torch.bool, device=joints.device)
    fixed[list(_UNALIGNED_JOINTS)] = True
    eye = torch.eye(3, dtype=joints.dtype, device=joints.device)
    return torch.where(fixed[:, None, None], eye, align) @ per_joint_rot


class SKEL(nn.Module):
    """SKEL skin + anatomical skeleton. Call as skel(poses[B,46], betas[B,10], trans[B,3])."""

    def __init__(self, data: dict, gender: str = "male", source: str = "<dict>") -> None:
        super().__init__()
        check_skel_dict(data, Path(source))
        self.gender = gender
        self.source = source
        v_template = _float32(data["skin_template_v"])
        shapedirs = _float32(dense(data["shapedirs"])[:, :, :NUM_BETAS])
        j_osim = _float32(data["J_regressor_osim"])
        n = v_template.shape[0]
        self.num_verts = n
        self.vertex_ids: Tensor | None = None  # set on vertex-restricted copies
        self.register_buffer("v_template", v_template)
        self.register_buffer("shapedirs", shapedirs.reshape(n * 3, NUM_BETAS).T.contiguous())  # (10, 3N)
        self.register_buffer("posedirs", _float32(data["posedirs"]).reshape(n * 3, 207).T.contiguous())
        self.register_buffer("J_regressor_osim", j_osim)
        self.register_buffer("J_template", j_osim @ v_template)  # (24, 3)
        self.register_buffer("J_shapedirs", torch.einsum("jv,vck->kjc", j_osim, shapedirs).reshape(NUM_BETAS, -1))
        self.register_buffer("skin_weights", _float32(data["skin_weights"]))
        self.register_buffer("per_joint_rot", _float32(data["per_joint_rot"]).reshape(NUM_JOINTS, 3, 3))
        apose = _float32(data["apose_rel_transfo"])
        self.register_buffer("apose_rot", apose[:, :3, :3].contiguous())
        self.register_buffer("apose_offset", apose[:, :3, 3].contiguous())
        self.register_buffer("faces", torch.from_numpy(np.array(data["skin_template_f"], dtype=np.int64)))
        self.register_buffer("dof_axes", torch.tensor(DOF_AXES, dtype=torch.float32))
        child = _first_children(np.asarray(data["osim_kintree_table"]))
        self.register_buffer("child", torch.as_tensor(child))
        self.parents = PARENTS
        self._levels = _chain_levels(PARENTS)
        src = {k: j for j, k in enumerate(_SKEL_TO_SMPL)}  # later SKEL joints overwrite earlier ones
        corrective_src = [src.get(k, -1) for k in range(1, 24)]
        self.register_buffer("corrective_src", torch.tensor([max(s, 0) for s in corrective_src]))
        self.register_buffer("corrective_mask", torch.tensor([float(s >= 0) for s in corrective_src]))
        # Skeleton mesh (optional output); kept sparse, it is ~247k vertices for the real model.
        self.register_buffer("skel_template_v", _float32(data["skel_template_v"]))
        self.register_buffer("skel_faces", torch.from_numpy(np.array(data["skel_template_f"], dtype=np.int64)))
        self.register_buffer("skel_weights", _sparse(data["skel_weights"]))
        self.register_buffer("skel_weights_rigid", _sparse(data["skel_weights_rigid"]))

    @classmethod
    def from_file(cls, path: str | os.PathLike, gender: str = "male") -> "SKEL":
        """Load `skel_<gender>.pkl` (v1.1.1, as distributed) from a file, SKEL folder or models dir."""
        pkl = resolve_skel_path(path, gender)
        data = load_model_pickle(pkl)
        if isinstance(data, dict):
            data = check_skel_dict(data, pkl)
        return cls(data, gender=gender, source=str(pkl))

    def restricted_to(self, vertex_ids: Tensor) -> "SKEL":
        """The same model posing only the skin vertices `vertex_ids` (K,): a cheap fitting target."""
        sub = copy.copy(self)
        sub._buffers = dict(self._buffers)
        idx = torch.as_tensor(vertex_ids, dtype=torch.long, device=self.v_template.device)
        cols = (idx[:, None] * 3 + torch.arange(3, device=idx.device)).reshape(-1)
        sub.v_template = self.v_template[idx]
        sub.shapedirs = self.shapedirs[:, cols].contiguous()
        sub.posedirs = self.posedirs[:, cols].contiguous()
        sub.skin_weights = self.skin_weights[idx]
        sub.num_verts = len(idx)
        sub.vertex_ids = idx
        return sub

    # -- pieces of the forward, each usable on its own -------------------------------------

    def shape(self, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Shaped template (B,N,3) and rest joints J (B,24,3) for betas (B,10)."""
        b = betas.shape[0]
        v_shaped = self.v_template + (betas @ self.shapedirs).view(b, self.num_verts, 3)
        joints = self.J_template + (betas @ self.J_shapedirs).view(b, NUM_JOINTS, 3)
        return v_shaped, joints

    def pose_rotations(self, poses: Tensor) -> Tensor:
        """Per-joint DOF rotations Rp (B,24,3,3) in the BSM joint frames, from q (B,46)."""
        # The model's own float32 axes: float64 poses see the axes the float32 model has.
        return rotations_from_dofs(poses, self.dof_axes)

    def bone_alignment(self, joints: Tensor) -> Tensor:
        """Shape-dependent rotation Rk (B,24,3,3) aligning each BSM bone with the SKEL body."""
        return bone_alignment(joints, self.per_joint_rot, self.apose_offset, self.child)

    def coupled_translations(self, poses: Tensor, joints: Tensor) -> Tensor:
        """Pose-coupled joint translations Δ (B,24,3) of the spine and scapulae, parent frame."""
        b = poses.shape[0]
        delta = poses.new_zeros(b, NUM_JOINTS, 3)
        y = joints[..., 1]
        for j, parent, bend, ext in ((11, 0, 17, 18), (12, 11, 20, 21), (13, 12, 23, 24)):
            length = (y[:, j] - y[:, parent]).abs()
            xb, yb = _arc_offset(poses[:, bend], length)
            xe, ye = _arc_offset(poses[:, ext], length)
            delta[:, j] = torch.stack((-xb, yb + ye - 2 * length, -xe), dim=-1)
        width = (joints[:, 19] - joints[:, 14]).norm(dim=-1)
        height = (joints[:, 12] - joints[:, 11]).norm(dim=-1)
        zero = torch.zeros_like(width)
        delta[:, 14] = _scapula_offset(poses[:, 26], poses[:, 27], width, height) - _scapula_offset(zero, zero, width, height)
        mirror_x = poses.new_tensor([-1.0, 1.0, 1.0])
        delta[:, 19] = mirror_x * (
            _scapula_offset(-poses[:, 36], -poses[:, 37], width, height) - _scapula_offset(zero, zero, width, height)
        )
        return delta

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        poses: Tensor,
        betas: Tensor,
        trans: Tensor | None = None,
        skelmesh: bool = False,
        pose_dep_bs: bool = True,
    ) -> SKELOutput:
        """Pose q (B,46) rad, shape β (B,10), translation (B,3) m → SKELOutput in SMPL's frame."""
        b = poses.shape[0]
        if poses.shape != (b, NUM_DOFS) or betas.shape != (b, NUM_BETAS):
            raise ValueError(f"expected poses (B,46) and betas (B,10), got {tuple(poses.shape)} and {tuple(betas.shape)}")
        if trans is None:
            trans = poses.new_zeros(b, 3)
        v_shaped, joints_rest = self.shape(betas)
        pose = self.pose_skeleton(poses, joints_rest)
        v_posed = v_shaped + self.pose_offsets(pose.local_rot) if pose_dep_bs else v_shaped
        skin = self.skin(v_posed, pose.transforms) + trans[:, None]
        if skelmesh and self.vertex_ids is not None:
            raise ValueError("a vertex-restricted SKEL cannot pose the skeleton mesh (it needs the whole skin)")
        skel_verts = self._skeleton_mesh(v_shaped, joints_rest, pose.align, pose.transforms) + trans[:, None] if skelmesh else None
        return SKELOutput(
            skin_verts=skin,
            joints=pose.joints + trans[:, None],
            joints_ori=pose.rotations @ pose.align,
            skel_verts=skel_verts,
            joints_tpose=joints_rest,
            v_shaped=v_shaped,
        )

    def pose_skeleton(self, poses: Tensor, joints_rest: Tensor) -> "PosedSkeleton":
        """Kinematics only (no skin): q (B,46) and rest joints (B,24,3) → PosedSkeleton."""
        align = self.bone_alignment(joints_rest)  # Rk
        frame = align @ self.apose_rot.transpose(-1, -2)  # M = Rk Raᵀ
        local_rot = frame @ self.pose_rotations(poses) @ frame.transpose(-1, -2)
        local_t = relative_offsets(joints_rest) + self.coupled_translations(poses, joints_rest)
        glob_rot, glob_t = self._compose_chain(local_rot, local_t)
        # Skinning transforms: rest joint removed, so they act on rest-pose points.
        skin_t = glob_t - (glob_rot @ joints_rest[..., None])[..., 0]
        transforms = torch.cat((glob_rot, skin_t[..., None]), dim=-1)
        return PosedSkeleton(align, local_rot, glob_rot, glob_t, transforms)

    def corrective_features(self, local_rot: Tensor) -> Tensor:
        """SMPL-layout pose features (B,207) = vec(R_k − I) of the SKEL rotations mapped to SMPL joints."""
        eye = torch.eye(3, dtype=local_rot.dtype, device=local_rot.device)
        feat = (local_rot[:, self.corrective_src] - eye) * self.corrective_mask[:, None, None]
        return feat.reshape(local_rot.shape[0], 207)

    def pose_offsets(self, local_rot: Tensor) -> Tensor:
        """Pose-corrective vertex offsets (B,N,3) inherited from SMPL (§3.9)."""
        return (self.corrective_features(local_rot) @ self.posedirs).view(local_rot.shape[0], self.num_verts, 3)

    def skin(self, v_posed: Tensor, transforms: Tensor) -> Tensor:
        """Linear blend skinning of rest-pose points (B,N,3) with joint transforms (B,24,3,4)."""
        per_vertex = blend_transforms(self.skin_weights, transforms)
        return (per_vertex[..., :3] @ v_posed[..., None])[..., 0] + per_vertex[..., 3]

    def _compose_chain(self, local_rot: Tensor, local_t: Tensor) -> tuple[Tensor, Tensor]:
        """Global rotations (B,24,3,3) and positions (B,24,3) along the kinematic tree."""
        glob_rot = local_rot.clone()
        glob_t = local_t.clone()
        for joints, parents in self._levels:
            parent_rot = glob_rot[:, parents]
            glob_t[:, joints] = (parent_rot @ local_t[:, joints, :, None])[..., 0] + glob_t[:, parents]
            glob_rot[:, joints] = parent_rot @ local_rot[:, joints]
        return glob_rot, glob_t

    def bone_scales(self, v_shaped: Tensor, joints_rest: Tensor) -> Tensor:
        """Per-bone, per-axis scale (B,24,3) of the skeleton mesh relative to the BSM bones."""
        rel = relative_offsets(joints_rest)
        ratio = rel.norm(dim=-1) / self.apose_offset.norm(dim=-1)  # λ
        scale = ratio[:, self.child].clone()
        scale[:, list(_LEAVES)] = 1.0
        scale[:, 16] = scale[:, 17]
        scale[:, 21] = scale[:, 22]
        scale[:, 12] = scale[:, 11]
        scale[:, 11] = rel[:, 11, 1].abs() / self.apose_offset[11, 1].abs()
        scale = scale[..., None].repeat(1, 1, 3)
        v0 = self.v_template
        for bone, bone_axis, axis, v1, v2 in _SCALE_PAIRS:
            scale[:, bone, bone_axis] = (v_shaped[:, v1, axis] - v_shaped[:, v2, axis]) / (v0[v1, axis] - v0[v2, axis])
        width = torch.stack(
            [(v_shaped[:, a, 2] - v_shaped[:, c, 2]) / (v0[a, 2] - v0[c, 2]) for a, c in _THORAX_WIDTH_PAIRS], dim=-1
        ).amin(dim=-1)
        scale[:, 12, 0] = width
        scale[:, 11, 0] = width
        return scale

    def _skeleton_mesh(self, v_shaped: Tensor, joints_rest: Tensor, align: Tensor, transforms: Tensor) -> Tensor:
        """Posed skeleton-mesh vertices (B,Nk,3) without translation (§3.12)."""
        b = v_shaped.shape[0]
        nk = self.skel_template_v.shape[0]
        scale = self.bone_scales(v_shaped, joints_rest)
        # Each bone's template is scaled in its own frame, rotated by Rk and moved to its joint.
        rest = torch.cat((align * scale[:, :, None, :], joints_rest[..., None]), dim=-1)  # (B,24,3,4)
        rigid = torch.sparse.mm(self.skel_weights_rigid, rest.permute(1, 0, 2, 3).reshape(NUM_JOINTS, -1))
        rigid = rigid.view(nk, b, 3, 4).permute(1, 0, 2, 3)
        homog = torch.sparse.mm(self.skel_weights_rigid, torch.ones(NUM_JOINTS, 1, device=v_shaped.device))[:, 0]
        aligned = (rigid[..., :3] @ self.skel_template_v[:, :, None])[..., 0] + rigid[..., 3]  # xyz of a_v
        posing = torch.sparse.mm(self.skel_weights, transforms.permute(1, 0, 2, 3).reshape(NUM_JOINTS, -1))
        posing = posing.view(nk, b, 3, 4).permute(1, 0, 2, 3)
        return (posing[..., :3] @ aligned[..., None])[..., 0] + posing[..., 3] * homog[:, None]


def _float32(value: object) -> Tensor:
    """A float32 tensor that owns its memory, from any array-like or scipy sparse matrix."""
    return torch.from_numpy(np.array(dense(value), dtype=np.float32))


def _sparse(matrix: object) -> Tensor:
    """A torch sparse COO float32 tensor from a scipy sparse matrix or dense array."""
    coo = matrix.tocoo() if hasattr(matrix, "tocoo") else None
    if coo is None:
        arr = np.asarray(matrix, dtype=np.float32)
        rows, cols = np.nonzero(arr)
        values = arr[rows, cols]
        shape = arr.shape
    else:
        rows, cols, values, shape = coo.row, coo.col, coo.data.astype(np.float32), coo.shape
    index = torch.as_tensor(np.stack((rows, cols)).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(np.array(values, dtype=np.float32)), shape, check_invariants=True).coalesce()
