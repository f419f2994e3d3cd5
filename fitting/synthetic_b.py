"""Family B of the synthetic stand-ins: the same official formats, built differently on purpose.

Family A (synthetic.py) derives SKEL's skinning from SMPL's, so the two models deform alike and
every fit looks easy. Family B breaks each shortcut a converter could lean on:

* skin: family A's surface under a smooth, mirror-symmetric warp (longer legs, a shorter trunk,
  broader shoulders, thinner arms, deeper belly and calves, a larger head) plus a small
  normal-direction relief, so proportions and local shape differ; landmark ids ride along;
* SMPL joints: other positions relative to the skin (hips, knees, spine, shoulders moved) and a
  regressor of another kind (a Gaussian prior over a wide neighbourhood, corrected to the target);
* SMPL skinning: a soft heat-like scheme (exp(−d²/σ²) of the distance to SMPL's bones);
* SKEL skinning: re-rigged to SKEL's own bones (nearest SKEL bone, diffused over the mesh), not
  derived from SMPL's, as the real SKEL skin was;
* shape space: the blend shapes mixed by a fixed rotation; pose correctives of another seed/scale.

Everything stays exactly left/right symmetric, as in family A.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
from scipy.spatial.transform import Rotation

from .bodymesh import BodyMesh, _vertex_normals, build_body_mesh
from .skel import PARENTS
from .synthetic import (
    _SKEL_LEAF_TIPS,
    _SMPL_LEAF_TIPS,
    SKEL_JOINT_MIRROR,
    SMPL_JOINT_MIRROR,
    SMPL_PARENTS,
    SyntheticBody,
    _distance_to_segments,
    _segments,
    diffuse_weights,
    pose_directions,
    shape_directions,
    skel_joint_targets,
    skinning_weights,
    symmetrize_joint_rows,
)

# SMPL joint centres of family B relative to family A's, after the warp (metres, left side +x).
_SMPL_JOINT_SHIFT = {
    1: (0.012, 0.015, -0.005), 4: (0.0, 0.0, 0.014), 7: (0.006, 0.01, 0.01),
    3: (0.0, 0.0, -0.018), 6: (0.0, 0.0, -0.02), 9: (0.0, 0.01, -0.015), 12: (0.0, -0.01, -0.012),
    13: (-0.01, -0.01, -0.01), 16: (0.0, -0.014, -0.008), 18: (0.0, 0.0, -0.012), 20: (0.0, 0.006, 0.0),
}  # fmt: skip


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def warp_points(p: np.ndarray) -> np.ndarray:
    """Family B's T-pose warp of points (N,3) in SMPL's frame (metres) → (N,3); mirror-symmetric."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ax, side = np.abs(x), np.sign(x)
    legs = _smoothstep((-0.22 - y) / 0.15)
    upper = _smoothstep((y + 0.10) / 0.20)
    arms = _smoothstep((ax - 0.20) / 0.10) * _smoothstep((y + 0.05) / 0.10)
    trunk = np.exp(-(((y + 0.02) / 0.2) ** 2)) * (1.0 - arms)
    calves = np.exp(-(((y + 0.85) / 0.12) ** 2))
    head = _smoothstep((y - 0.30) / 0.06)
    ny = y + 0.08 * (y + 0.30) * legs - 0.04 * (y + 0.10) * upper - 0.10 * arms * (y - 0.22)
    nz = z + 0.12 * trunk * np.maximum(z, 0.0) * (1.0 + 3.0 * np.maximum(z, 0.0)) - 0.10 * arms * (z + 0.03)
    nz = nz + 0.15 * calves * (z + 0.02) * (1.0 - upper)
    nax = ax + 0.025 * _smoothstep((ax - 0.10) / 0.10) * _smoothstep((y + 0.05) / 0.15)
    # A larger head, scaled about its centre.
    centre = np.array([0.0, 0.40, 0.02])
    nax = nax + 0.06 * head * ax
    ny = ny + 0.06 * head * (y - centre[1])
    nz = nz + 0.06 * head * (z - centre[2])
    return np.stack((side * nax, ny, nz), axis=1)


def body_mesh_b(seed: int = 0) -> BodyMesh:
    """Family B's skin: family A's surface warped, with a 3 mm relief along the normals; joints warped."""
    base = build_body_mesh(seed)
    verts = warp_points(base.verts)
    ax, y = np.abs(verts[:, 0]), verts[:, 1]
    relief = 0.003 * np.sin(23.0 * y) * np.cos(17.0 * ax + 9.0 * verts[:, 2])
    verts = verts + relief[:, None] * _vertex_normals(verts, base.faces)
    # Exact symmetry again (the normals are mirror images only up to rounding).
    verts = 0.5 * (verts + verts[base.mirror] * np.array([-1.0, 1.0, 1.0]))
    joints = warp_points(base.joints)
    for j, shift in _SMPL_JOINT_SHIFT.items():
        joints[j] += shift
        joints[SMPL_JOINT_MIRROR[j]] += np.asarray(shift) * np.array([-1.0, 1.0, 1.0])
    return BodyMesh(verts, base.faces, base.mirror, joints)


def prior_regressor(verts: np.ndarray, targets: np.ndarray, n_near: int = 400, sigma: float = 0.08) -> np.ndarray:
    """(K,N) convex vertex weights: a Gaussian prior over the nearest vertices, corrected (NNLS)
    so the weighted mean lands on each target (K,3)."""
    reg = np.zeros((len(targets), len(verts)))
    for k, target in enumerate(targets):  # a few dozen small NNLS problems, once per model build
        dist = np.linalg.norm(verts - target, axis=1)
        near = np.argsort(dist)[:n_near]
        prior = np.exp(-((dist[near] / sigma) ** 2))
        prior /= prior.sum()
        a = np.vstack((100.0 * verts[near].T, 100.0 * np.ones((1, n_near)), np.eye(n_near)))
        b = np.concatenate((100.0 * target, [100.0], prior))
        w, _ = scipy.optimize.nnls(a, b)
        reg[k, near] = w / w.sum()
    return reg


def heat_weights(mesh: BodyMesh, starts: np.ndarray, ends: np.ndarray, joint_mirror, sigma: float = 0.035, smoothing: int = 4) -> np.ndarray:
    """(N,J) soft LBS weights ∝ exp(−d²/σ²) of the distance to each bone, 4 kept, smoothed, mirrored."""
    dist, _ = _distance_to_segments(mesh.verts, starts, ends)
    logits = -((dist - dist.min(1, keepdims=True)) / sigma) ** 2
    return diffuse_weights(mesh, np.exp(logits), joint_mirror, smoothing, floor=1e-3, relative=True)


def build_bodies_b(seed: int = 0) -> dict[str, SyntheticBody]:
    """Male, female and neutral family-B bodies (one topology, shared blend shapes)."""
    rng = np.random.default_rng(seed + 1000)
    mesh = body_mesh_b(seed)
    smpl_starts, smpl_ends = _segments(mesh.joints, SMPL_PARENTS, _SMPL_LEAF_TIPS, SMPL_JOINT_MIRROR)
    smpl_weights = heat_weights(mesh, smpl_starts, smpl_ends, SMPL_JOINT_MIRROR)
    raw_shapes = shape_directions(mesh, smpl_weights, smpl_starts, smpl_ends)
    mix = Rotation.from_rotvec([0.4, -0.3, 0.5]).as_matrix()  # mixes the first three shape directions
    mix10 = np.eye(10)
    mix10[:3, :3] = mix
    mix10[5:8, 5:8] = mix.T
    shapedirs = raw_shapes @ mix10
    posedirs = pose_directions(mesh, rng, scale=0.02)
    skel_joints = warp_points(skel_joint_targets())
    skel_starts, skel_ends = _segments(skel_joints, PARENTS, _SKEL_LEAF_TIPS, SKEL_JOINT_MIRROR)
    # Re-rigged to SKEL's own bones, as the real SKEL skin was: not derived from SMPL's weights.
    skel_weights = skinning_weights(mesh, skel_starts, skel_ends, SKEL_JOINT_MIRROR, smoothing=20)
    smpl_reg = symmetrize_joint_rows(prior_regressor(mesh.verts, mesh.joints), SMPL_JOINT_MIRROR, mesh.mirror)
    skel_reg = symmetrize_joint_rows(prior_regressor(mesh.verts, skel_joints), SKEL_JOINT_MIRROR, mesh.mirror)
    # Gendered templates: the female body is smaller, narrower at the shoulders, wider at the hips.
    female = mesh.verts + raw_shapes @ np.array([-1.1, -0.5, -0.2, 0.3, -1.2, 1.0, 0.3, -0.1, 0.0, -0.3])
    templates = {"male": mesh.verts, "female": female, "neutral": 0.5 * (mesh.verts + female)}
    return {
        g: SyntheticBody(t, mesh.faces, mesh.mirror, shapedirs, posedirs, smpl_reg, smpl_weights, skel_reg, skel_weights)
        for g, t in templates.items()
    }

