"""Small SKEL-consistent releases for the model tests and the benchmark.

Every person is a random SKEL body (upright, facing the camera) whose 2D keypoints are EXACTLY its
44 keypoints seen by the person's crop camera (focal 5000/256 crop sides, principal point at the
bbox centre, label translation t), so the projected label matches the 2D keypoints; the flip
label is `mirror_pose(q)` with the mirrored translation. Images are noise with coloured discs at
the keypoints (so a network can learn from them); PNG, so decoding is exact.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from skelpgt.datasets import OutSample, make_person, write_release
from skelpgt.datasets.release import RoundFacts
from skelpgt.datasets.records import PersonRecord, SkelLabel
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.body import load_body
from skelpgt.fitting.camera import FOCAL_NORMALISED
from skelpgt.fitting.mirror import mirror_pose, mirror_translation
from skelpgt.fitting.smpl import load_smpl, smpl_forward

from .eval_files import eval_box
from .network import decode_pose, encode_pose, mean_pelvis_rotation


def _disc_image(rng, h, w, kp_px):
    img = Image.fromarray(rng.integers(0, 60, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for k, (x, y) in enumerate(kp_px[:, :2]):
        col = (int(40 + 200 * (k % 4) / 3), int(40 + 200 * ((k // 4) % 4) / 3), int(40 + 200 * (k // 16) / 2))
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=col)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def random_skel_people(models_dir, rng: np.random.Generator, n: int, pose_std: float = 0.25):
    """n random upright SKEL bodies facing the camera → q (n,46), betas (n,10), 44 keypoints (n,44,3) m, translation 0."""
    body = load_body(models_dir)
    skel, reg = body.skel, body.keypoints
    mean_raw = encode_pose(torch.zeros(1, 46))
    rp0 = mean_pelvis_rotation(skel)
    mean_raw[0, 0] = torch.cat((rp0[:, 0], rp0[:, 1]))
    q_mean = decode_pose(mean_raw)[0][0].double().numpy()
    q = q_mean + rng.normal(0, pose_std, (n, 46))
    q[:, :3] = q_mean[:3] + rng.normal(0, 0.15, (n, 3))
    betas = rng.normal(0, 0.7, (n, 10))
    with torch.no_grad():
        out = skel(torch.as_tensor(q, dtype=torch.float32), torch.as_tensor(betas, dtype=torch.float32))
        kp3 = reg(out.skin_verts).double().numpy()
    return q, betas, kp3


def _person_view(rng: np.random.Generator, kp3: np.ndarray, h: int, w: int):
    """A crop camera for one person's keypoints (44,3): (box side px, centre (2,), translation (3,), kp2d (44,3) px, kp3d (44,4) camera frame)."""
    size = float(rng.uniform(0.6, 0.8) * min(h, w))
    center = np.array([rng.uniform(0.4, 0.6) * (w - 1), rng.uniform(0.4, 0.6) * (h - 1)])
    t = np.array([rng.normal(0, 0.05), rng.normal(0, 0.05), 2 * FOCAL_NORMALISED / rng.uniform(0.8, 1.0)])
    cam = kp3 + t
    kp2 = np.concatenate((center + size * FOCAL_NORMALISED * cam[:, :2] / cam[:, 2:3], np.ones((44, 1))), axis=1)
    return size, center, t, kp2, np.concatenate((cam, np.ones((44, 1))), axis=1)


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
    rng = np.random.default_rng(seed)
    h, w = image_hw
    q, betas, kp3 = random_skel_people(models_dir, rng, n_images, pose_std)
    samples = []
    for i in range(n_images):
        size, center, t, kp2, kp3d = _person_view(rng, kp3[i], h, w)
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
    write_release(workdir, RoundFacts(name, 0), samples, samples_per_shard=samples_per_shard, fsync=False)
    return Workdir.of(workdir).release(name)


def _smpl_people(models_dir, rng: np.random.Generator, n: int):
    """n random upright SMPL neutral bodies facing the camera → (global_orient (n,3), body_pose (n,69), betas (n,10), verts (n,6890,3))."""
    go = np.tile([np.pi, 0.0, 0.0], (n, 1)) + rng.normal(0, 0.1, (n, 3))  # Rx(π): SMPL y-up → camera y-down
    body = rng.normal(0, 0.2, (n, 69))
    betas = rng.normal(0, 0.7, (n, 10))
    with torch.no_grad():
        verts, _ = smpl_forward(load_smpl(models_dir, "neutral"), torch.as_tensor(np.concatenate((go, body), 1), dtype=torch.float32),
                                torch.as_tensor(betas, dtype=torch.float32))  # fmt: skip
    return go, body, betas, verts.double().numpy()


def make_eval_files(out: str | Path, models_dir: str | Path, n: int = 6, seed: int = 0, image_hw: tuple[int, int] = (240, 200)) -> dict:
    """Write small evaluation files in the exact layouts of hsmr-pipeline.md §1.6 with known truth under `out`:

    images/{3dpw,moyo}/*.png; `3dpw_test.npz` (HMR2.0 layout: imgname, center, scale (N,) px, 25 + 19 2D
    keypoints, extra 3D keypoints = the SKEL body's keypoints 25–43 in the camera frame); `coco_val.npz`
    (same persons, 2D only, scale (N,2) = box (w, h) px); `moyo_v2.npz` (HSMR layout: SMPL neutral
    ground truth); `truth_3dpw.npz` (q, betas, cam (s, tx, ty) that reproduce the 3DPW/COCO persons
    exactly in the evaluation crop). Returns the paths."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    (out / "images" / "3dpw").mkdir(parents=True, exist_ok=True)
    (out / "images" / "moyo").mkdir(parents=True, exist_ok=True)

    q, betas, kp3 = random_skel_people(models_dir, rng, n)
    size = rng.uniform(0.55, 0.7, n) * min(h, w)
    center = np.stack((rng.uniform(0.45, 0.55, n) * (w - 1), rng.uniform(0.45, 0.55, n) * (h - 1)), 1)
    side, _ = eval_box(np.stack((size, size), 1))
    s = rng.uniform(0.8, 1.0, n)
    t = np.stack((rng.normal(0, 0.05, n), rng.normal(0, 0.05, n), 2 * FOCAL_NORMALISED / s), 1)
    cam = kp3 + t[:, None]
    kp2 = np.concatenate((center[:, None] + side[:, None, None] * FOCAL_NORMALISED * cam[..., :2] / cam[..., 2:3], np.ones((n, 44, 1))), 2)
    names = [f"3dpw/{i:05d}.png" for i in range(n)]
    for i, name in enumerate(names):
        (out / "images" / name).write_bytes(_disc_image(rng, h, w, kp2[i]))
    kp3d = np.concatenate((cam, np.ones((n, 44, 1))), 2)
    common = {"imgname": np.array(names), "center": center, "body_keypoints_2d": kp2[:, :25], "extra_keypoints_2d": kp2[:, 25:]}
    pw3d = dict(common, scale=size, body_keypoints_3d=np.concatenate((kp3d[:, :25, :3], np.zeros((n, 25, 1))), 2),
                extra_keypoints_3d=kp3d[:, 25:], body_pose=np.zeros((n, 72)), has_body_pose=np.zeros(n), betas=np.zeros((n, 10)),
                has_betas=np.zeros(n))  # fmt: skip
    np.savez(out / "3dpw_test.npz", **pw3d)
    np.savez(out / "coco_val.npz", **common, scale=np.stack((0.5 * side, side), 1))  # narrow box, same evaluation crop
    np.savez(out / "truth_3dpw.npz", q=q, betas=betas, cam=np.stack((s, t[:, 0], t[:, 1]), 1))

    go, body, sb, verts = _smpl_people(models_dir, rng, n)
    msize = rng.uniform(0.55, 0.7, n) * min(h, w)
    mcenter = np.stack((rng.uniform(0.45, 0.55, n) * (w - 1), rng.uniform(0.45, 0.55, n) * (h - 1)), 1)
    mside, _ = eval_box(np.stack((0.7 * msize, msize), 1))
    tz = 2 * FOCAL_NORMALISED / rng.uniform(0.8, 1.0, n)
    mcam = verts[:, ::200] + np.stack((np.zeros(n), np.zeros(n), tz), 1)[:, None]  # a vertex subset as disc positions
    mkp = mcenter[:, None] + mside[:, None, None] * FOCAL_NORMALISED * mcam[..., :2] / mcam[..., 2:3]
    paths = [f"moyo/{i:05d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        (out / "images" / p).write_bytes(_disc_image(rng, h, w, mkp[i]))
    np.savez(out / "moyo_v2.npz", extra_info=np.array({"dataset_name": "MoYo"}, dtype=object), names=np.array([Path(p).stem for p in paths]),
             img_paths=np.array(paths), centers=mcenter, scales=np.stack((0.7 * msize, msize), 1),
             smpl=np.array({"global_orient": go, "body_pose": body, "betas": sb}, dtype=object), genders=np.array(["neutral"] * n))  # fmt: skip
    return {k: out / v for k, v in (("3dpw", "3dpw_test.npz"), ("coco", "coco_val.npz"), ("moyo", "moyo_v2.npz"), ("truth", "truth_3dpw.npz"), ("images", "images"))}


def make_hsmr_tars(out: str | Path, models_dir: str | Path, persons_per_image: list[int], seed: int = 0, *,
                   images_per_tar: int = 2, image_hw: tuple[int, int] = (200, 160), overrides: dict | None = None) -> list[Path]:  # fmt: skip
    """HSMR-v1 training tars as HSMR released them (hsmr-pipeline.md §1.2, Appendix B), no manifest, none of our fields.

    `out/000000.tar`, … hold `<key>.jpg` + `<key>.data.pyd` (a pickled list of person dicts with
    keypoints_2d (44,3) / keypoints_3d (44,4) float32, center, scale (2,) ndarray (box/200), personid,
    extra_info (fitting_loss as a 0-d object array), orig_/flip_ poses (46,) float32, betas, trans,
    pve_max, pve_mean); keys `aic-train/<sha1>`. Person n (counted over the whole set) is a random SKEL
    body seen exactly by its crop camera, its `personid` is n, and `overrides[n]` (a dict) replaces fields."""


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    total = int(sum(persons_per_image))
    q, betas, kp3 = random_skel_people(models_dir, rng, total)
    n, paths = 0, []
    for t0 in range(0, len(persons_per_image), images_per_tar):
        path = out / f"{t0 // images_per_tar:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(t0, min(t0 + images_per_tar, len(persons_per_image))):
                persons, all_kp = [], []
                for _ in range(persons_per_image[i]):
                    size, center, t, kp2, kp3d = _person_view(rng, kp3[n], h, w)
                    fq = mirror_pose(torch.as_tensor(q[n][None]))[0].numpy()
                    p = {"keypoints_2d": kp2.astype(np.float32), "keypoints_3d": kp3d.astype(np.float32), "center": center,
                         "scale": np.array([size / 200.0] * 2), "personid": n,
                         "extra_info": {"detection_npz_idx": 0, "fitting_loss": np.array({"reprojection_loss": 500.0}, dtype=object)},
                         "orig_poses": q[n].astype(np.float32), "orig_betas": betas[n].astype(np.float32), "orig_trans": t.astype(np.float32),
                         "flip_poses": fq.astype(np.float32), "flip_betas": betas[n].astype(np.float32), "flip_trans": mirror_translation(torch.as_tensor(t)).numpy().astype(np.float32),
                         "orig_pve_max": 0.03, "flip_pve_max": 0.03, "orig_pve_mean": 0.01, "flip_pve_mean": 0.01}  # fmt: skip
                    p.update((overrides or {}).get(n, {}))
                    persons.append(p)
                    all_kp.append(kp2)
                    n += 1
                key = "aic-train/" + hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()
                buf = io.BytesIO()
                Image.open(io.BytesIO(_disc_image(rng, h, w, np.concatenate(all_kp)))).save(buf, format="JPEG", quality=95)
                for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.data.pyd", pickle.dumps(persons))):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
