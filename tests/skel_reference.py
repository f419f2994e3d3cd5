"""A slow, literal float64 reading of skel-model.md §3 (one sample, loops over joints).

Independent of fitting/skel.py's batched formulation: 4×4 homogeneous matrices, scipy rotations,
every step in the order the spec states it. Used only to cross-check the layer.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from skelpgt.fitting.pickles import dense
from skelpgt.fitting.skel import DOF_AXES, DOF_JOINT

SMPL_OF_SKEL = [0, 2, 5, 8, 8, 11, 1, 4, 7, 7, 10, 3, 6, 15, 14, 17, 19, 0, 21, 13, 16, 18, 0, 20]


def _rot_between(u, w):
    a, c_ = u / np.linalg.norm(u), w / np.linalg.norm(w)
    v = np.cross(a, c_)
    c = a @ c_
    s = np.linalg.norm(v) + 2.220446049250313e-16
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    r = np.eye(3) + k + k @ k * (1 - c) / s**2
    return np.nan_to_num(r)


def _hom(r, t):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def reference_forward(data: dict, q: np.ndarray, beta: np.ndarray, tau: np.ndarray):
    """Skin (N,3), joints (24,3), joint orientations (24,3,3) for one sample, float64."""
    v0 = dense(data["skin_template_v"]).astype(np.float64)
    sdirs = dense(data["shapedirs"])[:, :, :10]
    v_shaped = v0 + np.einsum("vck,k->vc", sdirs, beta)
    J = dense(data["J_regressor_osim"]) @ v_shaped
    kt = np.asarray(data["osim_kintree_table"])
    parent = [-1] + [int(p) for p in kt[0, 1:]]
    child = [next((int(kt[1, c]) for c in range(24) if int(kt[0, c]) == j), 0) for j in range(24)]
    Jr = np.array([J[j] - J[parent[j]] if j else J[0] for j in range(24)])
    apose = np.asarray(data["apose_rel_transfo"], dtype=np.float64)
    o, Ra = apose[:, :3, 3], apose[:, :3, :3]
    P = np.asarray(data["per_joint_rot"], dtype=np.float64).reshape(24, 3, 3)
    Rk = []
    for j in range(24):
        d, e = Jr[child[j]], o[child[j]]
        if j == 16:
            d, e = Jr[17] + Jr[18], o[17] + o[18]
        if j == 21:
            d, e = Jr[22] + Jr[23], o[22] + o[23]
        if j == 12:
            d = Jr[12]  # d_11
        g = np.eye(3) if j in (0, 5, 10, 13, 18, 23) else _rot_between(P[j] @ e, d)
        Rk.append(g @ P[j])
    Rp = [np.eye(3) for _ in range(24)]
    for i in range(46):  # each new DOF of a joint multiplies from the left
        Rp[DOF_JOINT[i]] = Rotation.from_rotvec(q[i] * np.asarray(DOF_AXES[i])).as_matrix() @ Rp[DOF_JOINT[i]]
    R_local = [Rk[j] @ Ra[j].T @ Rp[j] @ Ra[j] @ Rk[j].T for j in range(24)]
    t_local = Jr.copy()

    def arc(a, length):
        if abs(a) < 1e-5:
            return length * a / 2, length * (1 - a * a / 6)
        return length / a * (1 - np.cos(a)), length / a * np.sin(a)

    for j, pj, bend, ext in ((11, 0, 17, 18), (12, 11, 20, 21), (13, 12, 23, 24)):
        length = abs(J[j, 1] - J[pj, 1])
        xb, yb = arc(q[bend], length)
        xe, ye = arc(q[ext], length)
        t_local[j] += np.array([-xb, yb + ye - 2 * length, -xe])
    w, h = np.linalg.norm(J[19] - J[14]), np.linalg.norm(J[12] - J[11])

    def f_right(a, e):
        return np.array([-(w / 4) * np.cos(e - np.pi / 4) * np.cos(a), -(h / 2) * np.sin(e - np.pi / 4), (w / 4) * np.sin(a)])

    def f_left(a, e):
        a, e = -a, -e
        return np.array([(w / 4) * np.cos(e - np.pi / 4) * np.cos(a), -(h / 2) * np.sin(e - np.pi / 4), (w / 4) * np.sin(a)])

    t_local[14] += f_right(q[26], q[27]) - f_right(0, 0)
    t_local[19] += f_left(q[36], q[37]) - f_left(0, 0)
    G = [None] * 24
    for j in range(24):
        L = _hom(R_local[j], t_local[j])
        G[j] = L if j == 0 else G[parent[j]] @ L
    R_smpl = [np.eye(3) for _ in range(24)]
    for j in range(24):
        R_smpl[SMPL_OF_SKEL[j]] = R_local[j]
    feat = np.concatenate([(R_smpl[k] - np.eye(3)).reshape(-1) for k in range(1, 24)])
    v_pd = v_shaped + np.einsum("vcf,f->vc", dense(data["posedirs"]), feat)
    A = [G[j] @ _hom(np.eye(3), -J[j]) for j in range(24)]
    W = dense(data["skin_weights"])
    T = np.einsum("vj,jab->vab", W, np.stack(A))
    skin = np.einsum("vab,vb->va", T, np.concatenate([v_pd, np.ones((len(v_pd), 1))], 1))[:, :3] + tau
    joints = np.stack([G[j][:3, 3] for j in range(24)]) + tau
    ori = np.stack([G[j][:3, :3] @ Rk[j] for j in range(24)])
    return skin, joints, ori
