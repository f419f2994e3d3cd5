"""Tiny hand-made inputs for tests and benchmarks: JPEGs, HMR2.0-style person dicts and tars, SKEL labels."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import Iterable

import numpy as np
from PIL import Image

from .records import N_BETAS, N_KEYPOINTS, SKEL_POSE_DIM, SMPL_POSE_DIM, SkelLabel


def tiny_jpeg(rng: np.random.Generator, h: int = 24, w: int = 32, quality: int = 80, fmt: str = "JPEG") -> bytes:
    """Random (h, w) RGB image -> encoded bytes (JPEG by default, or fmt='PNG')."""
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def hmr2_person(rng: np.random.Generator, *, has_smpl: bool = True, extra: bool = True) -> dict:
    """Random HMR2.0-style per-person dict (pixels for 2D keypoints, scale = bbox/200)."""
    kp2d = np.concatenate([rng.uniform(0, 300, (N_KEYPOINTS, 2)), rng.uniform(0, 1, (N_KEYPOINTS, 1))], 1).astype(np.float32)
    kp3d = np.concatenate([rng.normal(0, 0.3, (N_KEYPOINTS, 3)), np.ones((N_KEYPOINTS, 1))], 1).astype(np.float32)
    d = {
        "keypoints_2d": kp2d,
        "keypoints_3d": kp3d,
        "center": rng.uniform(50, 250, 2).astype(np.float32),
        "scale": rng.uniform(0.3, 1.5, 2).astype(np.float32),
        "body_pose": (rng.normal(0, 0.2, SMPL_POSE_DIM) if has_smpl else np.zeros(SMPL_POSE_DIM)).astype(np.float32),
        "betas": (rng.normal(0, 1, N_BETAS) if has_smpl else np.zeros(N_BETAS)).astype(np.float32),
        "has_body_pose": np.float32(1.0 if has_smpl else 0.0),
        "has_betas": np.float32(1.0 if has_smpl else 0.0),
    }
    if extra:
        d["extra_info"] = {
            "detection_npz_idx": int(rng.integers(0, 5)),
            "fitting_loss": np.array({"reprojection_loss": float(rng.uniform(0, 100))}, dtype=object),
        }
    return d


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> None:
    """(name, bytes) pairs -> plain tar file, in the order given."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def hmr2_members(key: str, image: bytes, persons, image_ext: str = "jpg") -> list[tuple[str, bytes]]:
    """One HMR2.0 tar sample -> its (name, bytes) members; `persons` is pickled as given."""
    return [(f"{key}.{image_ext}", image), (f"{key}.data.pyd", pickle.dumps(persons))]


def make_hmr2_tar(path: str | os.PathLike, n_images: int, rng: np.random.Generator, *, prefix: str = "img", max_persons: int = 3, p_no_smpl: float = 0.2) -> list[str]:
    """Write an HMR2.0-style tar of `n_images` random images with 1..max_persons persons; returns image keys."""
    members, keys = [], []
    for i in range(n_images):
        key = f"{prefix}/{i:06d}"
        persons = [hmr2_person(rng, has_smpl=bool(rng.uniform() > p_no_smpl)) for _ in range(int(rng.integers(1, max_persons + 1)))]
        members += hmr2_members(key, tiny_jpeg(rng), persons)
        keys.append(key)
    write_tar(path, members)
    return keys


def random_label(rng: np.random.Generator, label_id: int, *, pve_max: float | None = None) -> SkelLabel:
    """Random SKEL label (q radians, beta, trans metres) with plausible metrics."""
    return SkelLabel(
        label_id=int(label_id),
        poses=rng.normal(0, 0.3, SKEL_POSE_DIM).astype(np.float32),
        betas=rng.normal(0, 1, N_BETAS).astype(np.float32),
        trans=rng.normal(0, 1, 3).astype(np.float32),
        pve_mean=float(np.float32(rng.uniform(0.005, 0.02))),
        pve_max=float(np.float32(rng.uniform(0.02, 0.1) if pve_max is None else pve_max)),
        kp2d_err=float(np.float32(rng.uniform(0, 0.01))),
    )
