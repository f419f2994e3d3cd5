"""Small SKEL-consistent releases for the model tests and the benchmark.

Every person is a random SKEL body (upright, facing the camera) whose 2D keypoints are EXACTLY its
44 keypoints seen by the person's crop camera (focal 5000/256 crop sides, principal point at the
bbox centre, label translation t), so the projected label matches the 2D keypoints; the flip
label is `mirror_pose(q)` with the mirrored translation. Images are noise with coloured discs at
the keypoints (so a network can learn from them); PNG, so decoding is exact.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from skelpgt.fitting.camera import FOCAL_NORMALISED


def _disc_image(rng, h, w, kp_px):
    from PIL import Image, ImageDraw

    img = Image.fromarray(rng.integers(0, 60, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for k, (x, y) in enumerate(kp_px[:, :2]):
        col = (int(40 + 200 * (k % 4) / 3), int(40 + 200 * ((k // 4) % 4) / 3), int(40 + 200 * (k // 16) / 2))
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=col)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_skel_release(
    workdir: str | Path,
    models_dir: str | Path,
    n_images: int = 8,
    seed: int = 0,
    *,
    name: str = "toy",
    image_hw: tuple[int, int] = (200, 160),
    pose_std: float = 0.25,
    p_invalid: float = 0.2,
    samples_per_shard: int = 4,
) -> Path:
    """Write release `<workdir>/releases/<name>/round-0` of `n_images` one-person images; returns the release dir."""
    from skelpgt.datasets import OutSample, make_person, write_release
    from skelpgt.datasets.records import PersonRecord, SkelLabel
    from skelpgt.fitting.keypoints import KeypointRegressor
    from skelpgt.fitting.mirror import mirror_pose, mirror_translation
    from skelpgt.fitting.skel import SKEL

    from .network import decode_pose, encode_pose, mean_pelvis_rotation

    rng = np.random.default_rng(seed)
    skel = SKEL.from_file(models_dir)
    reg = KeypointRegressor.from_models_dir(models_dir)
    h, w = image_hw
    mean_raw = encode_pose(torch.zeros(1, 46))
    rp0 = mean_pelvis_rotation(skel)
    mean_raw[0, 0] = torch.cat((rp0[:, 0], rp0[:, 1]))
    q_mean = decode_pose(mean_raw)[0][0].double().numpy()

    q = q_mean + rng.normal(0, pose_std, (n_images, 46))
    q[:, :3] = q_mean[:3] + rng.normal(0, 0.15, (n_images, 3))
    betas = rng.normal(0, 0.7, (n_images, 10))
    with torch.no_grad():
        out = skel(torch.as_tensor(q, dtype=torch.float32), torch.as_tensor(betas, dtype=torch.float32))
        kp3 = reg(out.skin_verts).double().numpy()  # (N,44,3), translation 0
    samples = []
    for i in range(n_images):
        size = float(rng.uniform(0.6, 0.8) * min(h, w))
        center = np.array([rng.uniform(0.4, 0.6) * (w - 1), rng.uniform(0.4, 0.6) * (h - 1)])
        t = np.array([rng.normal(0, 0.05), rng.normal(0, 0.05), 2 * FOCAL_NORMALISED / rng.uniform(0.8, 1.0)])
        cam = kp3[i] + t
        xy_n = FOCAL_NORMALISED * cam[:, :2] / cam[:, 2:3]
        kp2 = np.concatenate((center + size * xy_n, np.ones((44, 1))), axis=1)
        kp3d = np.concatenate((cam, np.ones((44, 1))), axis=1)
        key = f"toy/{i:06d}"
        rec = PersonRecord(
            key=f"{key}_0", image_key=key, person_index=0, source_file="toy", image=b"", image_ext="png",
            keypoints_2d=kp2.astype(np.float32), keypoints_3d=kp3d.astype(np.float32), center=center.astype(np.float32),
            scale=np.array([size / 200.0, size / 200.0], np.float32), body_pose=np.zeros(72, np.float32),
            betas=np.zeros(10, np.float32), trans=np.zeros(3, np.float32), has_smpl=True, has_betas=True,
        )  # fmt: skip
        pve = 0.03 if rng.random() >= p_invalid else float(rng.choice([0.1, np.nan]))
        orig = SkelLabel(2 * i, q[i].astype(np.float32), betas[i].astype(np.float32), t.astype(np.float32), 0.01, pve, 0.0)
        fq = mirror_pose(torch.as_tensor(q[i][None], dtype=torch.float64))[0].numpy()
        ft = mirror_translation(torch.as_tensor(t))
        flip = SkelLabel(2 * i + 1, fq.astype(np.float32), betas[i].astype(np.float32), ft.numpy().astype(np.float32), 0.01, pve, 0.0)
        person = make_person(rec, orig, flip, round=0, release=name)
        samples.append(OutSample(key, _disc_image(rng, h, w, kp2), "png", [person]))
    write_release(workdir, name, 0, samples, samples_per_shard=samples_per_shard, fsync=False)
    return Path(workdir) / "releases" / name
