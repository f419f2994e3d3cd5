"""Synthetic HMR2.0-format dataset: rendered SMPL people with known pose, shape, camera and keypoints.

The embedded default input of the pipeline (issue 5, item 2): `make_synthetic_dataset` writes
`<out>/shards/synthetic-NNNNNN.tar` (`<key>.jpg` + `<key>.data.pyd`, the per-person dicts of
hsmr-pipeline.md §1.1), `<out>/truth.npz` (each person's true SMPL parameters) and
`<out>/dataset.json` (written last: its presence marks a complete dataset). Same arguments →
byte-identical files.

Scene: a level world frame with y down (camera height above a tiled floor, a back wall), a
camera pitched down by a few degrees, 1–3 people standing on the floor at 2.4–7.5 m with a
random yaw, small tilt, pose (`poses.sample_smpl_poses`) and shape (β ~ N(0, 0.8²)), Lambert-
shaded with per-person clothing colours by body part (argmax of SMPL's skinning weights) and
z-buffered so nearer people occlude farther ones.

Camera (documented in dataset.json): pinhole, focal = 1.2 × image side in pixels (a ~45° field
of view, like a phone camera), principal point at the image centre ((S − 1)/2, pixel centres at
integers), HMR2.0's camera frame (x right, y down, z forward). `keypoints_3d` are in that
frame (metres, confidence 1) and `keypoints_2d` are exactly their projection with this camera;
`body_pose[:3]` is the global orientation in the camera frame (an upright person facing the
camera has ~180° about x), so `smpl_forward(body_pose, betas, trans)` gives camera-frame
vertices with the `trans` stored in truth.npz.

HSMR's crop camera (focal 5000/256 crop sides, principal point at the box centre, no rotation)
is an approximation of this one: it ignores the ray angle to an off-centre person (up to ~20°
here) and is near-orthographic. truth.npz also holds `global_orient_crop`, the orientation as
seen by a camera turned towards the box centre, for measuring labels in that convention.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.smpl import load_smpl, smpl_forward
from skelpgt.fitting.synthetic import axis_rotation

from .atomic import atomic_write_bytes, fsync_dir
from .poses import sample_smpl_poses
from .pyd import dump_pyd
from .release import canonical_json
from .render import PinholeCamera, Raster, rasterize, shade_mesh, to_uint8
from .shards import tar_header

FOCAL_FACTOR = 1.2  # focal length in units of the image side
DEPTH_RANGE = (2.4, 7.5)  # metres from the camera to a person's pelvis
CAMERA_HEIGHT = (0.8, 1.6)  # metres above the floor
CAMERA_PITCH = (0.0, 0.22)  # radians, looking down
BETA_STD = 0.8
BBOX_ENLARGE = 1.2
P_UNLABELLED = 0.05  # share of persons without an SMPL label (has_body_pose = 0), as in real data
P_DROP_KEYPOINT = 0.03  # share of visible keypoints given confidence 0 (detector misses)
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # render at 2× and average 2×2 blocks (anti-aliasing)
FORMAT = "skelpgt-synthetic/1"
_CHUNK = 16  # images whose people go through one batched SMPL forward (fixed: results must not depend on shard size)
_ROOT = 39  # MPII pelvis keypoint

# SMPL joint → clothing region (argmax of the skinning weights decides a vertex's joint).
_SKIN, _TOP, _SLEEVE, _BOTTOM, _SHIN, _SHOES, _HAIR = range(7)
_REGION_OF_JOINT = np.array([
    _BOTTOM, _BOTTOM, _BOTTOM, _TOP, _SHIN, _SHIN, _TOP, _SHOES, _SHOES, _TOP, _SHOES, _SHOES,
    _SKIN, _TOP, _TOP, _SKIN, _TOP, _TOP, _SLEEVE, _SLEEVE, _SKIN, _SKIN, _SKIN, _SKIN,
])  # fmt: skip


@dataclass(frozen=True)
class SyntheticDatasetInfo:
    """What `make_synthetic_dataset` wrote: paths, counts and the time it took (not stored in the files)."""

    out_dir: Path
    shards: tuple[Path, ...]
    truth: Path
    meta: Path
    n_images: int
    n_persons: int
    n_labelled: int
    seconds: float


@dataclass(frozen=True)
class SyntheticImage:
    """One rendered image: key, JPEG bytes, HMR2.0 person dicts, per person the truth, and the person mask.

    `truth[i]`: pose (72,), betas (10,), trans (3,) (camera frame, float32), labelled, palette (7, 3)
    albedos, global_orient_crop (3,). `mask` (H, W) int16: index of the person seen at each pixel
    (any of its 2×2 sub-samples), −1 for background.
    """

    key: str
    jpeg: bytes
    persons: list[dict]
    truth: list[dict]
    mask: np.ndarray


def _rotvec(r: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(r).as_rotvec()


def models_digest(models_dir: str | os.PathLike) -> str:
    """sha256 over the files the generator reads (neutral SMPL, HSMR keypoint regressors)."""
    h = hashlib.sha256()
    for rel in ("smpl/SMPL_NEUTRAL.pkl", "hsmr/J_regressor_SKEL_mix_MALE.pkl", "hsmr/SMPL_to_J19.pkl"):
        p = Path(models_dir) / rel
        h.update(rel.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"<missing>") + b"\0")
    return h.hexdigest()


def image_key(seed: int, index: int) -> str:
    """Key of synthetic image `index` of dataset `seed`: `synthetic/<seed>-<index:06d>`."""
    return f"synthetic/{int(seed)}-{int(index):06d}"


class _Body:
    """SMPL stand-in (or real SMPL) + keypoint regressor + per-vertex clothing regions, loaded once."""

    def __init__(self, models_dir: Path):
        self.smpl = load_smpl(models_dir, "neutral")
        self.faces = np.asarray(self.smpl.faces, dtype=np.int64)
        self.kp_matrix = KeypointRegressor.from_models_dir(models_dir).matrix.double().numpy()  # (44, 6890)
        with torch.no_grad():
            v = self.smpl.v_template.double().numpy()
            joint = self.smpl.lbs_weights.argmax(1).numpy()
            j_rest = self.smpl.J_regressor.double().numpy() @ v
        region = _REGION_OF_JOINT[joint].copy()
        # Hair on the top and back of the head: tells front from back, as a face does in a photo.
        head = joint == 15
        rel = v - j_rest[15]
        top = rel[:, 1] > 0.55 * rel[head, 1].max()
        back = (rel[:, 2] < 0.2 * rel[head, 2].min()) & (rel[:, 1] > -0.02)
        region[head & (top | back)] = _HAIR
        self.region = region

    def forward(self, pose: np.ndarray, betas: np.ndarray) -> np.ndarray:
        """SMPL vertices (B, 6890, 3) float64 at zero translation for float32 pose (B, 72), betas (B, 10)."""
        with torch.no_grad():
            verts, _ = smpl_forward(self.smpl, torch.from_numpy(pose), torch.from_numpy(betas))
        return verts.double().numpy()


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Albedo per clothing region (7, 3) in [0, 1]: a skin tone, clothes, shoes, hair."""
    skin = np.array([0.95, 0.76, 0.62]) * rng.uniform(0.45, 1.05) + rng.normal(0, 0.02, 3)
    top = rng.uniform(0.05, 0.95, 3)
    bottom = rng.uniform(0.05, 0.8, 3) if rng.random() < 0.6 else np.array([0.15, 0.2, 0.4]) * rng.uniform(0.6, 1.6)
    sleeve = top if rng.random() < 0.6 else skin  # long or short sleeves
    shin = bottom if rng.random() < 0.8 else skin  # trousers or shorts
    shoes = rng.uniform(0.05, 0.35) * np.ones(3) + rng.normal(0, 0.04, 3)
    hair = np.array([0.25, 0.15, 0.08]) * rng.uniform(0.3, 2.5)
    return np.clip(np.stack([skin, top, sleeve, bottom, shin, shoes, hair]), 0.02, 1.0)


def _muted(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
    """A random colour pulled part-way to grey (real scenes are rarely fully saturated)."""
    c = rng.uniform(lo, hi, 3)
    return c + rng.uniform(0.2, 0.7) * (c.mean() - c)


def _background(rng: np.random.Generator, cam: PinholeCamera, pitch: float, height: float, shadows: list[tuple[float, float]]) -> np.ndarray:
    """Floor (tiled, receding), back wall with panels, blob shadows under each person: (H, W, 3) floats in [0, 1]."""
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    rays = np.stack(((u - cam.cx) / cam.focal, (v - cam.cy) / cam.focal, np.ones(u.shape)), -1)
    level = rays @ axis_rotation("x", pitch)  # camera → level frame (rows are Rᵀ·d)
    lx, ly, lz = level[..., 0], level[..., 1], level[..., 2]
    wall_z = rng.uniform(9.0, 25.0)
    t_wall = np.where(lz > 1e-6, wall_z / np.maximum(lz, 1e-6), np.inf)
    t_floor = np.where(ly > 1e-6, height / np.maximum(ly, 1e-6), np.inf)
    on_floor = t_floor < t_wall
    t_floor = np.minimum(t_floor, t_wall)  # beyond the wall the floor is hidden anyway
    fx, fz = t_floor * lx, t_floor * lz
    tile = rng.uniform(0.4, 1.5)
    floor_a, floor_b = _muted(rng), _muted(rng)
    checker = ((np.floor(fx / tile) + np.floor(fz / tile)) % 2)[..., None]
    floor = floor_a * (1 - checker) + floor_b * checker if rng.random() < 0.6 else floor_a * (1 - 0.1 * checker)
    shade = np.ones(u.shape)
    for px, pz in shadows:
        shade -= 0.4 * np.exp(-((fx - px) ** 2 + (fz - pz) ** 2) / 0.12)
    floor = floor * np.clip(shade, 0.3, 1.0)[..., None]
    haze = _muted(rng, 0.5, 0.95)
    fog = np.clip(t_floor / 40.0, 0, 1)[..., None]
    floor = floor * (1 - fog) + haze * fog
    wy, wx = t_wall * ly, t_wall * lx
    wall_a, wall_b = _muted(rng, 0.2, 0.95), _muted(rng, 0.2, 0.95)
    grad = np.clip((height - wy) / 6.0, 0, 1)[..., None]  # lighter towards the top
    wall = wall_a * (1 - grad) + wall_b * grad
    stripe = rng.uniform(0.5, 3.0)
    wall = wall * (1 - 0.08 * (np.floor(wx / stripe) % 2))[..., None]
    for _ in range(int(rng.integers(0, 5))):  # doors, posters, shelves: clutter a detector must ignore
        x0, y0 = rng.uniform(-8, 8), rng.uniform(height - 3.5, height - 0.2)
        w, h = rng.uniform(0.4, 2.5), rng.uniform(0.4, 2.5)
        inside = (wx > x0) & (wx < x0 + w) & (wy > y0) & (wy < min(y0 + h, height))
        wall = np.where(inside[..., None], _muted(rng, 0.05, 0.95), wall)
    img = np.where(on_floor[..., None], floor, wall)
    img = img + rng.normal(0, rng.uniform(0.01, 0.035), img.shape)
    return np.clip(img, 0, 1)


@dataclass
class _Person:
    pose: np.ndarray  # (72,) float32, camera-frame global orientation
    betas: np.ndarray  # (10,) float32
    verts0: np.ndarray  # (6890, 3) float64, camera orientation, zero translation
    palette: np.ndarray  # (7, 3)
    labelled: bool
    trans: np.ndarray | None = None  # (3,) float32 once placed


def _orientation(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """Body → camera rotation: SMPL's y-up frame turned upside down (facing the camera), yaw, small tilt, camera pitch."""
    body = axis_rotation("y", rng.uniform(-np.pi, np.pi)) @ axis_rotation("x", rng.normal(0, 0.08)) @ axis_rotation("z", rng.normal(0, 0.06))
    return axis_rotation("x", pitch) @ axis_rotation("x", np.pi) @ body


def _plan_people(rng: np.random.Generator, n: int, pitch: float, hard_fraction: float, seed_pose: int) -> list[dict]:
    pose = sample_smpl_poses(n, seed=seed_pose, hard_fraction=hard_fraction).numpy().astype(np.float64)
    out = []
    for i in range(n):
        pose[i, :3] = _rotvec(_orientation(rng, pitch))
        out.append({
            "pose": pose[i].astype(np.float32),
            "betas": rng.normal(0, BETA_STD, 10).astype(np.float32),
            "palette": _palette(rng),
            "labelled": bool(rng.random() >= P_UNLABELLED),
        })  # fmt: skip
    return out


def _bbox(uv: np.ndarray) -> np.ndarray:
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def _clip_area(box: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    return np.array([max(box[0], 0), max(box[1], 0), min(box[2], cam.width - 1), min(box[3], cam.height - 1)])


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box area (1 = one box inside the other)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda r: max(r[2] - r[0], 1e-6) * max(r[3] - r[1], 1e-6)  # noqa: E731
    return iw * ih / min(area(a), area(b))


class _Generator:
    """Renders images of one dataset (seed, size, people per image) image by image."""

    def __init__(self, models_dir: Path, seed: int, image_size: int, people_per_image: tuple[int, int], hard_fraction: float):
        lo, hi = (int(x) for x in people_per_image)
        if not 1 <= lo <= hi:
            raise ValueError(f"people_per_image must be (lo, hi) with 1 <= lo <= hi, got {people_per_image}")
        if image_size < 32:
            raise ValueError("image_size must be at least 32 px")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.body = _Body(models_dir)
        self.seed, self.lo, self.hi = int(seed), lo, hi
        self.hard_fraction = float(hard_fraction)
        self.cam = PinholeCamera.centred(image_size, image_size, FOCAL_FACTOR * image_size)

    def images(self, start: int, stop: int) -> Iterator[SyntheticImage]:
        """Images start..stop−1; each depends only on (seed, index), whatever range it is rendered in."""
        for c0 in range(start, stop, _CHUNK):
            yield from self._chunk(range(c0, min(c0 + _CHUNK, stop)))

    def _chunk(self, indices: range) -> list[SyntheticImage]:
        scenes = []
        for index in indices:
            rng = np.random.default_rng([self.seed, index])
            pitch = rng.uniform(*CAMERA_PITCH)
            height = rng.uniform(*CAMERA_HEIGHT)
            n = int(rng.integers(self.lo, self.hi + 1))
            people = _plan_people(rng, n, pitch, self.hard_fraction, int(rng.integers(2**31)))
            scenes.append((index, rng, pitch, height, people))
        flat = [p for s in scenes for p in s[4]]
        # One fixed batch shape (padded with copies): each person's vertices come out of the same
        # kernels whichever images share its chunk, so an image's bytes depend on (seed, index) only.
        rows = np.arange(_CHUNK * self.hi) % len(flat)
        verts = self.body.forward(np.stack([p["pose"] for p in flat])[rows], np.stack([p["betas"] for p in flat])[rows])
        out, k = [], 0
        for index, rng, pitch, height, people in scenes:
            persons = [_Person(p["pose"], p["betas"], verts[k + i], p["palette"], p["labelled"]) for i, p in enumerate(people)]
            k += len(people)
            out.append(self._render(index, rng, pitch, height, persons))
        return out

    def _place(self, rng: np.random.Generator, person: _Person, pitch: float, height: float, boxes: list) -> np.ndarray | None:
        """Translation (3,) of a feet-on-floor placement that is visible and not hidden by `boxes` (None if none found)."""
        cam, r = self.cam, axis_rotation("x", pitch)
        level = person.verts0 @ r  # camera → level frame (y down)
        kp0 = self.body.kp_matrix @ person.verts0
        lowest = level[:, 1].max()
        root = (kp0[_ROOT] @ r)
        for _ in range(12):
            z = rng.uniform(*DEPTH_RANGE)
            half_w = 0.38 * cam.width / cam.focal * z
            x = rng.uniform(-half_w, half_w)
            shift = r @ np.array([x - root[0], height - lowest, z - root[2]])
            kp = kp0 + shift
            uv = cam.project(kp)
            inside = cam.inside(uv)
            if not inside[_ROOT] or inside.mean() < 0.75:
                continue
            box = _clip_area(_bbox(cam.project(person.verts0 + shift)), cam)
            if any(_overlap(box, b) > 0.5 for b in boxes):
                continue
            return shift
        return None

    def _render(self, index: int, rng: np.random.Generator, pitch: float, height: float, persons: list[_Person]) -> SyntheticImage:
        cam = self.cam
        placed, boxes = [], []
        for p in persons:
            got = self._place(rng, p, pitch, height, boxes)
            if got is None:
                continue
            shift = got
            p.trans = shift.astype(np.float32)
            boxes.append(_clip_area(_bbox(cam.project(p.verts0 + shift)), cam))
            placed.append(p)
        if not placed:  # nothing fitted: the first person, centred at a safe distance
            p = persons[0]
            r = axis_rotation("x", pitch)
            level = p.verts0 @ r
            root = self.body.kp_matrix[_ROOT] @ p.verts0 @ r
            p.trans = (r @ np.array([-root[0], height - level[:, 1].max(), DEPTH_RANGE[1] - root[2]])).astype(np.float32)
            placed = [p]
        # Keypoints and shadows from the stored (float32) translation, so the files agree exactly.
        shadows = []
        for p in placed:
            ground = (p.verts0 + p.trans).mean(0) @ axis_rotation("x", pitch)
            shadows.append((ground[0], ground[2]))
        light = axis_rotation("x", pitch) @ np.array([rng.uniform(-1, 1), rng.uniform(-1.5, -0.3), -rng.uniform(0.2, 1.0)])
        ambient = rng.uniform(0.3, 0.5)
        # 2× supersampling, box-filtered down: smooth silhouettes like a camera's, not stair steps.
        big = cam.scaled(SUPERSAMPLE)
        raster = Raster.empty(big.height, big.width, background=_background(rng, big, pitch, height, shadows))
        verts, faces, colors, ids = [], [], [], []
        n_v = 0
        for i, p in enumerate(placed):
            v = p.verts0 + p.trans.astype(np.float64)
            albedo = p.palette[self.body.region] * rng.uniform(0.93, 1.07, (len(v), 1))  # fabric-like speckle
            verts.append(v)
            colors.append(shade_mesh(v, self.body.faces, albedo, light, ambient))
            faces.append(self.body.faces + n_v)
            ids.append(np.full(len(self.body.faces), i, np.int32))
            n_v += len(v)
        rasterize(raster, np.concatenate(verts), np.concatenate(faces), np.concatenate(colors), big, mesh_ids=np.concatenate(ids))
        k = SUPERSAMPLE
        jpeg = _encode_jpeg(to_uint8(raster.color.reshape(cam.height, k, cam.width, k, 3).mean((1, 3))))
        mask = raster.mesh_id.reshape(cam.height, k, cam.width, k).max((1, 3)).astype(np.int16)
        dicts, truth = [], []
        for i, p in enumerate(placed):
            d, t = self._annotate(rng, p, verts[i], i)
            dicts.append(d)
            truth.append(t)
        return SyntheticImage(image_key(self.seed, index), jpeg, dicts, truth, mask)

    def _annotate(self, rng: np.random.Generator, p: _Person, verts: np.ndarray, i: int) -> tuple[dict, dict]:
        cam = self.cam
        kp3 = (self.body.kp_matrix @ verts).astype(np.float32)
        uv = cam.project(kp3.astype(np.float64))  # exactly the projection of the stored 3D keypoints
        conf = cam.inside(uv) & (kp3[:, 2] > 0)
        conf &= rng.random(len(conf)) >= P_DROP_KEYPOINT
        box = _bbox(cam.project(verts))
        center = (box[:2] + box[2:]) / 2
        size = (box[2:] - box[:2]) * BBOX_ENLARGE
        zeros = lambda n: np.zeros(n, np.float32)  # noqa: E731
        d = {
            "keypoints_2d": np.concatenate((uv, conf[:, None]), 1).astype(np.float32),
            "keypoints_3d": np.concatenate((kp3, np.ones((44, 1), np.float32)), 1),
            "center": center.astype(np.float32),
            "scale": (size / 200.0).astype(np.float32),
            "body_pose": p.pose if p.labelled else zeros(72),
            "betas": p.betas if p.labelled else zeros(10),
            "has_body_pose": np.float32(p.labelled),
            "has_betas": np.float32(p.labelled),
            "extra_info": {},
            "personid": i,
        }
        truth = {"pose": p.pose, "betas": p.betas, "trans": p.trans, "labelled": p.labelled, "palette": p.palette}
        truth["global_orient_crop"] = _crop_orientation(p.pose[:3], center, cam).astype(np.float32)
        return d, truth


def _crop_orientation(global_orient: np.ndarray, center: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    """Global orientation (3,) relative to a camera turned to look at the box centre (HMR2.0's crop camera).

    HSMR-style crops use a camera on the ray through the box centre; a person seen off-axis in the
    full image appears turned by that ray's angle (up to ~20° here) relative to `body_pose[:3]`.
    """
    ray = np.array([(center[0] - cam.cx) / cam.focal, (center[1] - cam.cy) / cam.focal, 1.0])
    ray /= np.linalg.norm(ray)
    axis = np.cross([0.0, 0.0, 1.0], ray)
    turn = Rotation.from_rotvec(axis / max(np.linalg.norm(axis), 1e-12) * np.arcsin(min(np.linalg.norm(axis), 1.0)))
    return (turn.inv() * Rotation.from_rotvec(np.asarray(global_orient, np.float64))).as_rotvec()


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def iter_synthetic_images(
    n_images: int,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    image_size: int = 256,
    people_per_image: tuple[int, int] = (1, 3),
    hard_fraction: float = 0.15,
    start: int = 0,
) -> Iterator[SyntheticImage]:
    """Rendered images start..start+n_images−1 of dataset `seed` (each depends only on seed and index)."""
    gen = _Generator(ensure_models_dir(models_dir), seed, image_size, people_per_image, hard_fraction)
    yield from gen.images(start, start + n_images)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """Members → tar bytes with the shard writer's fixed metadata (mtime 0, fixed owner), end padded like tarfile."""
    parts = []
    for name, data in members:
        parts += [tar_header(name, len(data)), data, b"\0" * (-len(data) % tarfile.BLOCKSIZE)]
    n = sum(map(len, parts))
    end = 2 * tarfile.BLOCKSIZE
    parts.append(b"\0" * (end + (-(n + end)) % tarfile.RECORDSIZE))
    return b"".join(parts)


def save_npz_deterministic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (uncompressed, loadable by np.load) but with fixed zip timestamps: same arrays → same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.asanyarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, arr.getvalue())
    atomic_write_bytes(path, buf.getvalue())


_TRUTH_FIELDS = ("pose", "betas", "trans", "labelled", "global_orient_crop", "palette")


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_images: int,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    image_size: int = 256,
    people_per_image: tuple[int, int] = (1, 3),
    shard_size: int = 64,
    hard_fraction: float = 0.15,
) -> SyntheticDatasetInfo:
    """Render `n_images` images into HMR2.0-format tars under `<out_dir>/shards/`, plus truth.npz and dataset.json."""
    if n_images < 1 or shard_size < 1:
        raise ValueError("n_images and shard_size must be >= 1")
    t0 = time.perf_counter()
    out = Path(out_dir)
    mdir = ensure_models_dir(models_dir)
    gen = _Generator(mdir, seed, image_size, tuple(people_per_image), hard_fraction)
    shards, truth = _write_shards(gen, n_images, shard_size, out / "shards")
    n_persons, n_labelled = len(truth["key"]), int(sum(truth["labelled"]))
    save_npz_deterministic(out / "truth.npz", _truth_arrays(truth, gen.cam, image_size))
    meta = {
        "format": FORMAT,
        "n_images": int(n_images),
        "n_persons": n_persons,
        "n_labelled": n_labelled,
        "seed": int(seed),
        "image_size": int(image_size),
        "people_per_image": [gen.lo, gen.hi],
        "hard_fraction": float(hard_fraction),
        "shard_size": int(shard_size),
        "shards": [p.name for p in shards],
        "models_digest": models_digest(mdir),
        "camera": {
            "model": "pinhole",
            "focal_px": gen.cam.focal,
            "principal_point_px": [gen.cam.cx, gen.cam.cy],
            "frame": "x right, y down, z forward (metres); pixel centres at integers",
        },
        "truth": (
            "truth.npz: key, image_key, person_index, pose (N,72) SMPL axis-angle with camera-frame global orientation, "
            "betas (N,10), trans (N,3) m (smpl_forward(pose, betas, trans) = camera-frame vertices), labelled (N,) "
            "(False: the shard carries has_body_pose = 0), global_orient_crop (N,3) (orientation seen by a camera "
            "turned to the box centre), palette (N,7,3) albedos, focal, principal_point, image_size"
        ),
    }
    meta_path = out / "dataset.json"
    atomic_write_bytes(meta_path, canonical_json(meta), fsync=False)
    return SyntheticDatasetInfo(out, tuple(shards), out / "truth.npz", meta_path, int(n_images), n_persons, n_labelled, time.perf_counter() - t0)


def _write_shards(gen: _Generator, n_images: int, shard_size: int, shard_dir: Path) -> tuple[list[Path], dict[str, list]]:
    """Render the images into `shard_dir`/synthetic-NNNNNN.tar, `shard_size` each (stale larger-run shards removed) → (shards, per-person truth lists)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    truth: dict[str, list] = {k: [] for k in ("key", "image_key", "person_index", *_TRUTH_FIELDS)}
    members: list[tuple[str, bytes]] = []

    def flush() -> None:
        path = shard_dir / f"synthetic-{len(shards):06d}.tar"
        atomic_write_bytes(path, _tar_bytes(members), fsync=False)
        shards.append(path)
        members.clear()

    for i, img in enumerate(gen.images(0, n_images)):
        members += [(f"{img.key}.jpg", img.jpeg), (f"{img.key}.data.pyd", dump_pyd(img.persons))]
        for j, t in enumerate(img.truth):
            truth["key"].append(f"{img.key}_{j}")
            truth["image_key"].append(img.key)
            truth["person_index"].append(j)
            for name in _TRUTH_FIELDS:
                truth[name].append(t[name])
        if (i + 1) % shard_size == 0:
            flush()
    if members:
        flush()
    for stale in shard_dir.glob("synthetic-*.tar"):  # shards of an earlier, larger run
        if stale not in shards:
            stale.unlink()
    fsync_dir(shard_dir)
    return shards, truth


def _truth_arrays(truth: dict[str, list], cam, image_size: int) -> dict[str, np.ndarray]:
    """Per-person truth lists + the camera → the arrays of truth.npz (float32 bodies, the pinhole intrinsics px)."""
    return {
        "key": np.array(truth["key"]),
        "image_key": np.array(truth["image_key"]),
        "person_index": np.array(truth["person_index"], np.int64),
        "pose": np.stack(truth["pose"]).astype(np.float32),
        "betas": np.stack(truth["betas"]).astype(np.float32),
        "trans": np.stack(truth["trans"]).astype(np.float32),
        "labelled": np.array(truth["labelled"], bool),
        "global_orient_crop": np.stack(truth["global_orient_crop"]).astype(np.float32),
        "palette": np.stack(truth["palette"]).astype(np.float32),
        "focal": np.float64(cam.focal),
        "principal_point": np.array([cam.cx, cam.cy]),
        "image_size": np.int64(image_size),
    }
