"""Synthetic stand-ins for the licence-gated model files, written in the official formats.

`make_synthetic_models(out)` writes a models directory

    smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl      the 7 keys smplx reads (J_regressor scipy-sparse)
    skel/skel_{male,female}.pkl              SKEL v1.1.1: every key, coo matrices
    hsmr/J_regressor_SKEL_mix_MALE.pkl       24×6890
    hsmr/SMPL_to_J19.pkl                     19×6890

that the same loaders read as the real files. As in the real files, SMPL and SKEL of one gender
share the skin template, shape and pose blend shapes, and differ in joints, tree and skinning.
Everything is exactly left/right symmetric (positions, weights, regressors, blend shapes, the
SKEL joint frames), so mirrored parameters give exactly mirrored meshes.

SKEL joint frames of the stand-in: per_joint_rot = R_y(−90°) maps OpenSim axes (x anterior,
y up, z right) onto SMPL's (x left, y up, z front), as the pelvis mapping HSMR found for the
real model; the BSM rest skeleton has the arms 45° down, so the bone alignment Rk is
non-trivial for the arms. The left talus frame is turned so that the ankle axis (identical on
both sides in bsm.osim) mirrors the right one; the real model is not symmetric there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.spatial.transform import Rotation
import torch

from .bodymesh import BodyMesh, build_body_mesh
from .pickles import write_pickle_atomic
from .skel import DOF_AXES, DOF_NAMES, JOINT_NAMES, PARENTS, SKEL, SKEL_VERSION

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_JOINT_MIRROR = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
SKEL_JOINT_MIRROR = (0, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 11, 12, 13, 19, 20, 21, 22, 23, 14, 15, 16, 17, 18)
OSIM_JOINT_NAMES = (
    "ground_pelvis", "hip_r", "walker_knee_r", "ankle_r", "subtalar_r", "mtp_r",
    "hip_l", "walker_knee_l", "ankle_l", "subtalar_l", "mtp_l",
    "lumbar_body", "thorax", "head", "scapula_r", "shoulder_r", "elbow_r", "radioulnar_r", "radius_lunate_r",
    "scapula_l", "shoulder_l", "elbow_l", "radioulnar_l", "radius_lunate_l",
)  # fmt: skip

# Anatomical (BSM) joint centres of the stand-in, right side and midline, T-pose, metres.
_SKEL_JOINTS_RIGHT = {
    0: (0.0, -0.235, -0.005), 1: (-0.082, -0.300, 0.020), 2: (-0.100, -0.695, 0.005),
    3: (-0.090, -1.090, -0.030), 4: (-0.090, -1.135, -0.055), 5: (-0.100, -1.170, 0.100),
    11: (0.0, -0.130, -0.045), 12: (0.0, 0.050, -0.055), 13: (0.0, 0.300, -0.020),
    14: (-0.085, 0.200, -0.070), 15: (-0.180, 0.220, -0.020), 16: (-0.430, 0.220, -0.030),
    17: (-0.455, 0.215, -0.030), 18: (-0.690, 0.220, -0.030),
}  # fmt: skip
_BSM_SCALE = 1.03  # the generic BSM skeleton is a little taller than the stand-in body
_ARM_DROP = math.radians(45.0)  # BSM's rest pose holds the arms about 45° down
_SKEL_LEAF_TIPS = {5: (0.0, -0.01, 0.07), 13: (0.0, 0.18, 0.03), 18: (-0.10, 0.0, 0.0)}
_SMPL_LEAF_TIPS = {10: (0.0, -0.01, 0.08), 15: (0.0, 0.14, 0.0), 22: (0.10, 0.0, 0.0), 0: (0.0, -0.10, 0.0)}


def _mirror_points(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0, 1.0])


def skel_joint_targets() -> np.ndarray:
    """SKEL anatomical joint centres (24,3) of the stand-in in the T-pose, metres."""
    joints = np.zeros((24, 3))
    for j, p in _SKEL_JOINTS_RIGHT.items():
        joints[j] = p
    for j, m in enumerate(SKEL_JOINT_MIRROR):
        if j not in _SKEL_JOINTS_RIGHT:
            joints[j] = _mirror_points(np.asarray(_SKEL_JOINTS_RIGHT[m]))
    return joints


def axis_rotation(axis: str, angle: float) -> np.ndarray:
    """3×3 right-handed rotation by `angle` rad about the coordinate axis 'x', 'y' or 'z'."""
    return Rotation.from_euler(axis, angle).as_matrix()


def _rotation_between(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit direction u onto unit direction w (Rodrigues)."""
    u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
    axis = np.cross(u, w)
    s, c = np.linalg.norm(axis), float(u @ w)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k * ((1 - c) / s**2)


# -- regressors and weights -------------------------------------------------------------------


def symmetrize_joint_rows(weights: np.ndarray, joint_mirror: tuple[int, ...], vertex_mirror: np.ndarray) -> np.ndarray:
    """Average a (J,N) regressor with its mirror image, so mirrored meshes give mirrored joints."""
    return 0.5 * (weights + weights[list(joint_mirror)][:, vertex_mirror])


def vertex_regressor(verts: np.ndarray, targets: np.ndarray, n_near: int = 40, smooth: float = 1e-3) -> np.ndarray:
    """(K,N) convex vertex weights whose weighted mean lands on each target (K,3) point."""
    reg = np.zeros((len(targets), len(verts)))
    for k, target in enumerate(targets):  # a few dozen small NNLS problems, once per model build
        near = np.argsort(np.linalg.norm(verts - target, axis=1))[:n_near]
        a = np.vstack((verts[near].T, 10.0 * np.ones((1, n_near)), math.sqrt(smooth) * np.eye(n_near)))
        b = np.concatenate((target, [10.0], math.sqrt(smooth) * np.full(n_near, 1.0 / n_near)))
        w, _ = scipy.optimize.nnls(a, b)
        reg[k, near] = w / w.sum()
    return reg


def _mesh_adjacency(faces: np.ndarray, n: int) -> sp.csr_matrix:
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adj = sp.coo_matrix((np.ones_like(i, dtype=np.float64), (i, j)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    return adj


def _segments(joints: np.ndarray, parents: tuple[int, ...], leaf_tips: dict[int, tuple], mirror: tuple[int, ...]):
    """Bone segments (start, end) per joint: from the joint to its first child (or a leaf tip)."""
    starts, ends = joints.copy(), joints.copy()
    for j in range(len(parents)):
        children = [c for c, p in enumerate(parents) if p == j]
        if j in leaf_tips or mirror[j] in leaf_tips:
            tip = np.asarray(leaf_tips.get(j, leaf_tips.get(mirror[j])), dtype=np.float64)
            if j not in leaf_tips:
                tip = _mirror_points(tip)
            ends[j] = joints[j] + tip
        elif children:
            ends[j] = joints[children[0]]
    return starts, ends


def _distance_to_segments(verts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (N,S) from each vertex to each segment, and the closest points (N,S,3)."""
    d = ends - starts
    t = np.einsum("nsc,sc->ns", verts[:, None] - starts[None], d) / np.maximum((d * d).sum(-1), 1e-12)
    closest = starts[None] + np.clip(t, 0.0, 1.0)[..., None] * d[None]
    return np.linalg.norm(verts[:, None] - closest, axis=-1), closest


def skinning_weights(
    mesh: BodyMesh, starts: np.ndarray, ends: np.ndarray, joint_mirror: tuple[int, ...], smoothing: int = 12
) -> np.ndarray:
    """(N,J) LBS weights: nearest bone segment, diffused over the mesh, sparse, rows sum to 1, mirrored."""
    dist, _ = _distance_to_segments(mesh.verts, starts, ends)
    n, nj = dist.shape
    weights = np.zeros((n, nj))
    weights[np.arange(n), dist.argmin(1)] = 1.0
    return diffuse_weights(mesh, weights, joint_mirror, smoothing)


def diffuse_weights(
    mesh: BodyMesh, weights: np.ndarray, joint_mirror: tuple[int, ...], smoothing: int, floor: float = 1e-4, relative: bool = False
) -> np.ndarray:
    """(N,J) weights random-walk diffused over the mesh `smoothing` times, 4 kept per vertex, those
    under `floor` (× the row's largest if `relative`) dropped, rows summing to 1, mirror-averaged."""
    n = len(weights)
    adj = _mesh_adjacency(mesh.faces, n)
    walk = sp.diags(1.0 / (adj.sum(1).A1 + 1.0)) @ (adj + sp.eye(n))
    for _ in range(smoothing):
        weights = walk @ weights
    drop = np.argsort(weights, axis=1)[:, :-4]
    np.put_along_axis(weights, drop, 0.0, axis=1)
    weights[weights < (floor * weights.max(1, keepdims=True) if relative else floor)] = 0.0
    weights /= weights.sum(1, keepdims=True)
    # Averaged with the mirror image last, so truncation ties cannot break the symmetry.
    return 0.5 * (weights + weights[mesh.mirror][:, list(joint_mirror)])


# SMPL joint → the SKEL bone that moves the same skin (the real SKEL's skinning was fitted to
# reproduce SMPL meshes, so its weights follow SMPL's).
_SKEL_BONE_OF_SMPL_JOINT = (0, 6, 1, 11, 7, 2, 12, 8, 3, 12, 10, 5, 13, 19, 14, 13, 20, 15, 21, 16, 23, 18, 23, 18)
# SKEL bones SMPL has no joint for, and the bone whose skin they take over where nearest.
_SKEL_SPLIT_BONES = {4: 3, 9: 8, 17: 16, 22: 21}  # calcanei from tali, radii from ulnae


def skel_skin_weights(mesh: BodyMesh, smpl_weights: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(N,24) SKEL skinning: SMPL's weights moved to the matching SKEL bones; heels and distal
    forearms handed to calcaneus and radius where those bones are the nearest."""
    weights = np.zeros((len(mesh.verts), 24))
    np.add.at(weights.T, list(_SKEL_BONE_OF_SMPL_JOINT), smpl_weights.T)
    dist, _ = _distance_to_segments(mesh.verts, starts, ends)
    nearest = dist.argmin(1)
    for bone, donor in _SKEL_SPLIT_BONES.items():
        take = nearest == bone
        weights[take, bone] += weights[take, donor]
        weights[take, donor] = 0.0
    return 0.5 * (weights + weights[mesh.mirror][:, list(SKEL_JOINT_MIRROR)])


# -- blend shapes -------------------------------------------------------------------------------


def shape_directions(mesh: BodyMesh, weights: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(N,3,10) shape blend shapes: height, girth, limb lengths, widths, depths; mirror-symmetric."""
    v = mesh.verts
    j = mesh.joints
    _, closest = _distance_to_segments(v, starts, ends)
    radial = np.einsum("ns,nsc->nc", weights, v[:, None] - closest)  # outward from the bone axes
    side = np.sign(v[:, :1])
    arm = weights[:, [16, 17, 18, 19, 20, 21, 22, 23]].sum(1, keepdims=True)
    forearm = weights[:, [18, 19, 20, 21, 22, 23]].sum(1, keepdims=True)
    leg = weights[:, [1, 2, 4, 5, 7, 8, 10, 11]].sum(1, keepdims=True)
    shin = weights[:, [4, 5, 7, 8, 10, 11]].sum(1, keepdims=True)
    torso = weights[:, [0, 3, 6, 9, 13, 14]].sum(1, keepdims=True)
    head = weights[:, [12, 15]].sum(1, keepdims=True)
    upper = np.clip((v[:, 1:2] - j[0, 1]) / 0.5, 0.0, 1.0) * torso
    front = np.clip(v[:, 2:3] - j[0, 2], 0.0, None) / 0.15
    floor = np.array([0.0, v[:, 1].min(), 0.0])
    x, y, z = (np.eye(3)[i] for i in range(3))
    dirs = [
        0.055 * (v - floor),  # overall size / height
        0.12 * radial * (0.5 + 0.5 * torso),  # girth
        0.035 * side * x * (arm + forearm),  # arm length
        -0.04 * y * (leg + shin) + 0.04 * y * (1 - leg),  # leg length vs torso
        0.03 * side * x * np.clip((v[:, 1:2] - 0.05) / 0.2, 0, 1) * (torso + arm),  # shoulder width
        0.03 * side * x * np.clip((-v[:, 1:2] - 0.15) / 0.2, 0, 1) * (torso + leg),  # hip width
        0.06 * z * front * torso * (1 - upper),  # belly
        0.08 * (v - j[15]) * head,  # head size
        0.03 * y * np.clip((v[:, 1:2] - j[0, 1]) / 0.6, 0, 1),  # torso length
        0.10 * z * (v[:, 2:3] - j[6, 2]) * upper,  # chest depth
    ]
    dirs = np.stack(dirs, axis=-1)
    mirrored = dirs[mesh.mirror] * np.array([-1.0, 1.0, 1.0])[None, :, None]
    return 0.5 * (dirs + mirrored)


def pose_directions(mesh: BodyMesh, rng: np.random.Generator, scale: float = 0.015) -> np.ndarray:
    """(N,3,207) smooth pose correctives around each SMPL joint, mirror-symmetric (SMPL layout)."""
    v, joints = mesh.verts, mesh.joints
    falloff = np.exp(-(np.linalg.norm(v[:, None] - joints[None, 1:], axis=-1) / 0.08) ** 2)  # (N,23)
    basis = rng.normal(size=(23, 3, 9)) * scale
    dirs = np.einsum("nk,kcf->nckf", falloff, basis)  # (N,3,23,9)
    s = np.array([-1.0, 1.0, 1.0])
    flip9 = np.outer(s, s).reshape(9)  # vec(S A S) = flip9 ⊙ vec(A)
    joint_mirror = [SMPL_JOINT_MIRROR[k + 1] - 1 for k in range(23)]
    mirrored = s[None, :, None, None] * dirs[mesh.mirror][:, :, joint_mirror] * flip9
    return (0.5 * (dirs + mirrored)).reshape(len(v), 3, 207)


# -- SKEL rest skeleton ---------------------------------------------------------------------------


_TO_SMPL = axis_rotation("y", -math.pi / 2)  # OpenSim axes (x front, y up, z right) → SMPL's (x left, y up, z front)
_ARMS = ((15, (15, 16, 17, 18), 1.0), (20, (20, 21, 22, 23), -1.0))  # shoulder, bones, side


def _bsm_bone_rotations() -> np.ndarray:
    """Absolute rest rotation (24,3,3) of each BSM bone frame (SMPL axes) from the anatomical
    position: arms hanging at the sides are the frames' zero, BSM's rest lifts them 45°."""
    rot = np.repeat(np.eye(3)[None], 24, axis=0)
    for _, bones, side in _ARMS:
        rot[list(bones)] = axis_rotation("z", -side * (math.pi / 2 - _ARM_DROP))
    return rot


def bsm_rest_joints(skel_joints: np.ndarray) -> np.ndarray:
    """BSM rest-pose joints (24,3): the stand-in's skeleton, a bit taller, arms 45° down."""
    rest = skel_joints.copy()
    for shoulder, bones, side in _ARMS:
        down = axis_rotation("z", side * _ARM_DROP)  # from the T-pose's horizontal arms
        rest[list(bones)] = (rest[list(bones)] - rest[shoulder]) @ down.T + rest[shoulder]
    return rest * _BSM_SCALE


def skel_joint_frames(skel_joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """per_joint_rot (24,3,3) and apose_rel_transfo (24,4,4) of the stand-in.

    Bone frames are OpenSim-oriented and turn with their bone in the BSM rest pose, so a DOF
    axis keeps its anatomical meaning when SKEL's bone alignment brings the arm up to the T-pose.
    """
    absolute = _TO_SMPL.T @ _bsm_bone_rotations() @ _TO_SMPL  # per bone, OpenSim axes
    parent = absolute[[0, *PARENTS[1:]]]
    parent[0] = np.eye(3)
    per_joint_rot = _TO_SMPL @ absolute  # bone frame → SMPL axes, before the bone alignment
    rest = bsm_rest_joints(skel_joints)
    offsets = rest - rest[[0, *PARENTS[1:]]]
    offsets[0] = rest[0]
    apose = np.repeat(np.eye(4)[None], 24, axis=0)
    apose[:, :3, :3] = parent.transpose(0, 2, 1) @ absolute
    apose[:, :3, 3] = np.einsum("jba,jb->ja", parent, offsets @ _TO_SMPL)  # in the parent's frame
    # Turn the left talus frame so its (unmirrored) ankle axis acts as the mirror of the right one.
    axis = np.asarray(DOF_AXES[DOF_NAMES.index("ankle_angle_l")])
    apose[8, :3, :3] = apose[8, :3, :3] @ _rotation_between(axis, axis * np.array([-1.0, -1.0, 1.0])).T
    return per_joint_rot, apose


# -- skeleton mesh --------------------------------------------------------------------------------


def _ellipsoid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit UV sphere: (n_lat·n_lon + 2, 3) vertices and its closed triangle faces."""
    theta = np.linspace(0, math.pi, n_lat + 2)[1:-1]
    phi = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack((np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)), -1).reshape(-1, 3)
    verts = np.vstack(([0.0, 1.0, 0.0], ring, [0.0, -1.0, 0.0]))
    idx = np.arange(n_lat * n_lon).reshape(n_lat, n_lon) + 1
    nxt = np.roll(idx, -1, axis=1)
    quads_a = np.stack((idx[:-1], idx[1:], nxt[1:]), -1).reshape(-1, 3)
    quads_b = np.stack((idx[:-1], nxt[1:], nxt[:-1]), -1).reshape(-1, 3)
    top = np.stack((np.zeros(n_lon, int), idx[0], nxt[0]), -1)
    last = len(verts) - 1
    bottom = np.stack((np.full(n_lon, last), nxt[-1], idx[-1]), -1)
    faces = np.vstack((top, quads_a, quads_b, bottom))
    return verts, faces


def skeleton_mesh(skel_joints: np.ndarray, tiny: bool) -> dict[str, np.ndarray]:
    """One ellipsoid per bone in world T-pose coordinates (made bone-local later), with weights."""
    n_lat, n_lon = (6, 8) if tiny else (100, 103)
    unit, unit_faces = _ellipsoid(n_lat, n_lon)
    starts, ends = _segments(skel_joints, PARENTS, _SKEL_LEAF_TIPS, SKEL_JOINT_MIRROR)
    verts, faces, bone, along = [], [], [], []
    for j in range(24):
        axis = ends[j] - starts[j]
        length = max(np.linalg.norm(axis), 0.03)
        radius = 0.012 + 0.06 * (j in (0, 11, 12)) + 0.04 * (j == 13)
        frame = _rotation_between(np.array([0.0, 1.0, 0.0]), axis)
        verts.append((unit * np.array([radius, length / 2, radius])) @ frame.T + (starts[j] + ends[j]) / 2)
        faces.append(unit_faces + sum(len(v) for v in verts[:-1]))
        bone.append(np.full(len(unit), j))
        along.append(0.5 + 0.5 * unit[:, 1])  # 0 at the joint, 1 at the bone's far end
    bone = np.concatenate(bone)
    nk = len(bone)
    rigid = sp.coo_matrix((np.ones(nk), (np.arange(nk), bone)), shape=(nk, 24))
    # Posing weights: rigid, blended half-way towards the child joint near each bone's end.
    child = np.array([next((c for c, p in enumerate(PARENTS) if p == j), -1) for j in range(24)])
    blend = 0.5 * np.clip((np.concatenate(along) - 0.8) / 0.2, 0.0, 1.0) * (child[bone] >= 0)
    rows = np.concatenate((np.arange(nk), np.arange(nk)))
    cols = np.concatenate((bone, np.maximum(child[bone], 0)))
    posing = sp.coo_matrix((np.concatenate((1 - blend, blend)), (rows, cols)), shape=(nk, 24))
    posing.sum_duplicates()
    posing.eliminate_zeros()
    return {
        "skel_template_v": np.concatenate(verts),
        "skel_template_f": np.concatenate(faces).astype(np.int64),
        "skel_weights": sp.coo_matrix(posing),
        "skel_weights_rigid": rigid,
    }


# -- the whole models directory ---------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticBody:
    """Everything one gender of the stand-in needs, before it is written in the official formats."""

    verts: np.ndarray
    faces: np.ndarray
    mirror: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    smpl_regressor: np.ndarray
    smpl_weights: np.ndarray
    skel_regressor: np.ndarray
    skel_weights: np.ndarray


def build_bodies(seed: int = 0) -> dict[str, SyntheticBody]:
    """Male, female and neutral stand-in bodies sharing one topology and one set of blend shapes."""
    rng = np.random.default_rng(seed)
    mesh = build_body_mesh(seed)
    smpl_starts, smpl_ends = _segments(mesh.joints, SMPL_PARENTS, _SMPL_LEAF_TIPS, SMPL_JOINT_MIRROR)
    smpl_weights = skinning_weights(mesh, smpl_starts, smpl_ends, SMPL_JOINT_MIRROR)
    shapedirs = shape_directions(mesh, smpl_weights, smpl_starts, smpl_ends)
    posedirs = pose_directions(mesh, rng)
    skel_joints = skel_joint_targets()
    skel_starts, skel_ends = _segments(skel_joints, PARENTS, _SKEL_LEAF_TIPS, SKEL_JOINT_MIRROR)
    skel_weights = skel_skin_weights(mesh, smpl_weights, skel_starts, skel_ends)
    smpl_reg = symmetrize_joint_rows(vertex_regressor(mesh.verts, mesh.joints), SMPL_JOINT_MIRROR, mesh.mirror)
    skel_reg = symmetrize_joint_rows(vertex_regressor(mesh.verts, skel_joints), SKEL_JOINT_MIRROR, mesh.mirror)
    # Gendered templates: the female stand-in is smaller with narrower shoulders and wider hips.
    female = mesh.verts + shapedirs @ np.array([-1.3, -0.3, -0.3, 0.0, -1.0, 1.2, 0.0, -0.2, 0.0, 0.0])
    templates = {"male": mesh.verts, "female": female, "neutral": 0.5 * (mesh.verts + female)}
    return {
        g: SyntheticBody(t, mesh.faces, mesh.mirror, shapedirs, posedirs, smpl_reg, smpl_weights, skel_reg, skel_weights)
        for g, t in templates.items()
    }


def smpl_pickle(body: SyntheticBody) -> dict:
    """The official SMPL pickle's keys (what smplx reads), J_regressor as scipy CSC like the real one."""
    kintree = np.array([[4294967295, *SMPL_PARENTS[1:]], list(range(24))], dtype=np.int64)
    return {
        "v_template": body.verts,
        "f": body.faces.astype(np.uint32),
        "J_regressor": sp.csc_matrix(body.smpl_regressor),
        "kintree_table": kintree,
        "weights": body.smpl_weights,
        "posedirs": body.posedirs,
        "shapedirs": body.shapedirs,
        "J": body.smpl_regressor @ body.verts,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def skel_pickle(body: SyntheticBody, tiny: bool) -> dict:
    """A SKEL v1.1.1 pickle dict with every key of the official file."""
    joints = body.skel_regressor @ body.verts
    per_joint_rot, apose = skel_joint_frames(joints)
    rest = bsm_rest_joints(joints)
    data = {
        "version": SKEL_VERSION,
        "bone_names": list(JOINT_NAMES),
        "joints_name": list(OSIM_JOINT_NAMES),
        "pose_params_name": list(DOF_NAMES),
        "skin_template_v": body.verts,
        "skin_template_f": body.faces.astype(np.int64),
        "shapedirs": body.shapedirs,
        "posedirs": body.posedirs,
        "J_regressor": sp.coo_matrix(body.smpl_regressor),
        "J_regressor_osim": sp.coo_matrix(body.skel_regressor),
        "per_joint_rot": per_joint_rot.reshape(24 * 9),
        "skin_weights": sp.coo_matrix(body.skel_weights),
        "osim_kintree_table": np.array([[-1, *PARENTS[1:]], list(range(24))], dtype=np.int64),
        "parameter_mapping": np.arange(46),
        "tpose_transfo": _absolute_transforms(joints),
        "apose_transfo": _absolute_transforms(rest),
        "apose_rel_transfo": apose,
    }
    data.update(skeleton_mesh(joints, tiny))
    _to_bone_frames(data)
    return data


def _to_bone_frames(data: dict) -> None:
    """Rewrite the world-space skeleton template in bone frames: local = S⁻¹·Rkᵀ·(v − J) at β = 0."""
    model = SKEL(data)
    zero = torch.zeros(1, 10)
    with torch.no_grad():
        v_shaped, joints = model.shape(zero)
        align = model.bone_alignment(joints)[0].double().numpy()
        scale = model.bone_scales(v_shaped, joints)[0].double().numpy()
    bone = data["skel_weights_rigid"].col[np.argsort(data["skel_weights_rigid"].row)]
    world = data["skel_template_v"]
    local = np.einsum("nba,nb->na", align[bone], world - joints[0].double().numpy()[bone]) / scale[bone]
    data["skel_template_v"] = local


def _absolute_transforms(joints: np.ndarray) -> np.ndarray:
    out = np.repeat(np.eye(4)[None], 24, axis=0)
    out[:, :3, 3] = joints
    return out


def hsmr_regressors(body: SyntheticBody) -> tuple[np.ndarray, np.ndarray]:
    """HSMR's 'mix' regressor (24×N, SMPL order) and SPIN's J19 regressor (19×N) for the stand-in."""
    mix = body.smpl_regressor.copy()
    # 'mix': SMPL joints, with hips and shoulders taken from the anatomical (SKEL) centres.
    for smpl_j, skel_j in ((1, 6), (2, 1), (16, 20), (17, 15)):
        mix[smpl_j] = body.skel_regressor[skel_j]
    v = body.verts
    smpl_joints = body.smpl_regressor @ v
    head_top = v[v[:, 1].argmax()]
    targets = np.array([
        smpl_joints[8], smpl_joints[5], smpl_joints[2], smpl_joints[1], smpl_joints[4], smpl_joints[7],
        smpl_joints[21], smpl_joints[19], smpl_joints[17], smpl_joints[16], smpl_joints[18], smpl_joints[20],
        smpl_joints[12] + [0, 0.02, 0], head_top - [0, 0.02, 0], 0.5 * (smpl_joints[1] + smpl_joints[2]),
        0.5 * (smpl_joints[12] + smpl_joints[9]), smpl_joints[6], smpl_joints[15] + [0, -0.05, 0.07], smpl_joints[15] + [0, 0.04, 0],
    ])  # fmt: skip
    j19_mirror = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18)
    j19 = symmetrize_joint_rows(vertex_regressor(v, targets), j19_mirror, body.mirror)
    return mix, j19


FAMILIES = ("A", "B")


def make_synthetic_models(out: str | os.PathLike, tiny: bool = False, seed: int = 0, family: str = "A") -> Path:
    """Write a complete stand-in models directory (smpl/, skel/, hsmr/) of `family` ('A' or 'B',
    independent constructions: see synthetic_b) to `out`; returns it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown stand-in family {family!r}; choose one of {FAMILIES}")
    out = Path(out)
    if family == "A":
        bodies = build_bodies(seed)
    else:
        from .synthetic_b import build_bodies_b  # import cycle: synthetic_b builds on this module's helpers

        bodies = build_bodies_b(seed)
    for gender, body in bodies.items():
        write_pickle_atomic(out / "smpl" / f"SMPL_{gender.upper()}.pkl", smpl_pickle(body))
        if gender != "neutral":
            write_pickle_atomic(out / "skel" / f"skel_{gender}.pkl", skel_pickle(body, tiny))
    mix, j19 = hsmr_regressors(bodies["male"])
    write_pickle_atomic(out / "hsmr" / "J_regressor_SKEL_mix_MALE.pkl", sp.csr_matrix(mix))
    write_pickle_atomic(out / "hsmr" / "SMPL_to_J19.pkl", j19)
    return out
