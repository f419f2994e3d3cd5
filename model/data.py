"""Training tensors from release persons (hsmr-pipeline.md §2): crop, augmentation, flips, validity.

Sources (`DataConfig.release`, or `mix` entries): our releases or HSMR-v1 / HMR2.0-format tar sets
(`sources.py`). Per person sample → dict of tensors:
  img (3,256,192) ImageNet-normalised, kp2d (44,3) normalised crop units (x_patch/256 − 0.5) +
  confidence, kp3d (44,4) camera frame (root-relative use only), q (46), betas (10), has_pose
  (HSMR's label validity, `side_label`), has_betas (always 1: invalid labels regress β towards 0,
  §2.1 stage 15), flip, rot_deg.

Validity and filters are HSMR's `hsmr_v1` loader stages (§2.1), for every source alike:
  6  NaN in a side's poses or betas → that array is zeroed;
  8  the side is valid iff its pve_max is a number < 0.06 (a missing pve_max is an error, as in HSMR);
  9  keypoint confidences < 0.3 → 0;  10/11  any |β| > 3 → invalid;
  12 persons with ≤ 4 keypoints of confidence > 0 are dropped;  13 (bbox size) is disabled in HSMR;
  14 persons whose extra_info.fitting_loss.reprojection_loss is ≥ 31 000 are dropped;
  15 invalid sides regress β to 0 (has_betas = 1) with the pose unsupervised.
HSMR quirk kept (stage 8 runs after 6): a NaN pose with a small pve_max trains as the zero pose;
`source_counts` reports how often that happens (`*_nan_zeroed_valid`). The corrupt-key filter
(stage 2: nine AIC image keys HSMR lists) is not reproduced.

Geometry. Image pixel i has its centre at x = i (flip: x → W − 1 − x). The 256×256 patch covers
the square of side S = bbox_size·scale_aug around the (shifted) centre c, rotated by rot_deg:
patch coordinate p = 128 + (256/S)·Rot(θ)·(x − c); patch pixel u has its centre at p = u + 0.5,
so a horizontal flip maps patch column u to 255 − u exactly. The backbone sees patch columns
32…223. kp3d gets (X, Y) ← Rot(θ)(X, Y); the label's pelvis gets the same camera-frame rotation.

Determinism: every sample's augmentation comes from `np.random.default_rng([seed, n])`, n = the
sample's index in the (infinite, epoch-shuffled by a seeded buffer) release stream, so batches do
not depend on the number of loader workers. `ReleaseBatches` yields whole batches; batch b of a
rank holds the rank's samples [b·B, (b+1)·B); worker w of W produces batches start + w + k·W, which
is the order a `DataLoader(batch_size=None)` returns them in; resuming = starting at `start_batch`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from skelpgt.fitting.dofs import joint_dofs_from_rotation, rotations_from_dofs
from skelpgt.fitting.keypoints import FLIP_PERMUTATION, flip_keypoints_2d
from torch import Tensor
from torch.nn import functional as F

from .sources import open_source_persons

PATCH = 256
OUT_HW = (256, 192)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_FIELDS = ("poses", "betas", "trans", "pve_max", "pve_mean", "kp2d_err", "label_id")


@dataclass
class AugmentConfig:
    """§2.2 distributions."""

    enabled: bool = True
    trans: float = 0.02
    scale: float = 0.3
    rot_deg: float = 30.0
    rot_prob: float = 0.6
    flip_prob: float = 0.5
    colour: float = 0.2
    extreme_crop_prob: float = 0.1


# Extreme crops (§2.3 step 2), on the BODY_25 rows of the 44 keypoints: (name, kept keypoints, enlargement).
_HEAD = (0, 15, 16, 17, 18)
_R_ARM, _L_ARM = (2, 3, 4), (5, 6, 7)
_R_LEG, _L_LEG = (9, 10, 11, 22, 23, 24), (12, 13, 14, 19, 20, 21)
_CROPS = {
    "hips": ((1, 8) + _HEAD + _R_ARM + _L_ARM + (9, 12), 1.1),
    "shoulders": (_HEAD + (1, 2, 5), 1.2),
    "head": (_HEAD + (1,), 1.3),
    "torso": ((1, 2, 5, 8, 9, 12), 1.1),
    "right_arm": (_R_ARM, 1.1),
    "left_arm": (_L_ARM, 1.1),
    "legs": (_R_LEG + _L_LEG, 1.1),
    "right_leg": (_R_LEG, 1.1),
    "left_leg": (_L_LEG, 1.1),
}
_FULL_BODY = tuple(range(15))  # all main joints visible: any of the crops above
_UPPER_BODY = tuple(range(8))  # only the upper body visible: upper-body crops
_FULL_CHOICE = (("hips", 0.2),) + tuple((k, 0.1) for k in _CROPS if k != "hips")
_UPPER_CHOICE = tuple((k, 0.2) for k in ("shoulders", "head", "torso", "right_arm", "left_arm"))


def extreme_crop_box(kp: np.ndarray, u: float, conf_min: float = 0.5) -> tuple[np.ndarray, float] | None:
    """HMR2.0-style extreme crop of pixel keypoints (K,3) for uniform draw u ∈ [0,1): (centre, size) or None."""
    vis = kp[:, 2] > conf_min
    if vis[list(_FULL_BODY)].all():
        choices = _FULL_CHOICE
    elif vis[list(_UPPER_BODY)].all():
        choices = _UPPER_CHOICE
    else:
        return None
    cum = np.cumsum([p for _, p in choices])
    name = choices[int(np.searchsorted(cum, u * cum[-1], side="right"))][0]
    kept, enlarge = _CROPS[name]
    pts = kp[list(kept)][vis[list(kept)], :2]
    if len(pts) == 0:
        return None
    lo, hi = pts.min(0), pts.max(0)
    size = float((hi - lo).max()) * 1.2 * enlarge
    return ((lo + hi) / 2, size) if size > 4 else None


@dataclass
class DataConfig:
    release: str = ""
    round: int | None = None
    split: str | None = "train"
    val_fraction: float = 0.05
    batch_size: int = 8
    seed: int = 0
    shuffle_buffer: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pve_valid: float = 0.06
    max_abs_beta: float = 3.0
    kp_conf_floor: float = 0.3
    min_keypoints: int = 5
    reprojection_max: float = 31000.0  # HMR2.0 SMPL-fit reprojection loss filter (§2.1 stage 14)
    mix: tuple | None = None  # ((release or tar-set spec, weight), ...): mixing (HSMR's RandomMix) instead of `release`
    pelvis_frame: tuple | None = None  # F (3x3 nested) = network.pelvis_frame(skel); None = identity (train() fills it)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**d)


# ----------------------------------------------------------------------------- augmentation sampling
def sample_augmentation(rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    if not cfg.enabled:
        return identity_augmentation()
    tx, ty = np.clip(rng.standard_normal(2), -1, 1) * cfg.trans
    scale = 1.0 + float(np.clip(rng.standard_normal(), -1, 1)) * cfg.scale
    rot = float(np.clip(rng.standard_normal(), -2, 2)) * cfg.rot_deg
    rot = rot if rng.random() < cfg.rot_prob else 0.0
    flip = bool(rng.random() < cfg.flip_prob)
    colour = rng.uniform(1 - cfg.colour, 1 + cfg.colour, 3)
    extreme = float(rng.random()) if rng.random() < cfg.extreme_crop_prob else None
    return {"tx": float(tx), "ty": float(ty), "scale": scale, "rot_deg": rot, "flip": flip, "colour": colour, "extreme": extreme}


def identity_augmentation() -> dict:
    return {"tx": 0.0, "ty": 0.0, "scale": 1.0, "rot_deg": 0.0, "flip": False, "colour": np.ones(3), "extreme": None}


# ----------------------------------------------------------------------------- flip
def flip_person(sample: dict) -> dict:
    """Mirror a person sample: image, center, keypoints (with FLIP_PERMUTATION) and swap orig_*/flip_* labels."""
    img = np.asarray(sample["image"])
    w = img.shape[1]
    out = dict(sample)
    out["image"] = np.ascontiguousarray(img[:, ::-1])
    c = np.asarray(sample["center"], dtype=np.float64).copy()
    c[0] = w - 1 - c[0]
    out["center"] = c
    kp2 = torch.as_tensor(np.asarray(sample["keypoints_2d"], dtype=np.float64))
    out["keypoints_2d"] = flip_keypoints_2d(kp2, float(w)).numpy()
    kp3 = np.asarray(sample["keypoints_3d"], dtype=np.float64)[FLIP_PERMUTATION.numpy()].copy()
    kp3[:, 0] = -kp3[:, 0]
    out["keypoints_3d"] = kp3
    for f in LABEL_FIELDS:
        if f"orig_{f}" in sample or f"flip_{f}" in sample:
            out[f"orig_{f}"], out[f"flip_{f}"] = sample.get(f"flip_{f}"), sample.get(f"orig_{f}")
    out["flipped"] = not sample.get("flipped", False)
    return out


# ----------------------------------------------------------------------------- crop
def _rot2(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def crop_geometry(sample: dict, aug: dict) -> tuple[np.ndarray, float, np.ndarray]:
    """(shifted centre c (2,), square side S px, Rot (2,2)) of the crop."""
    size = float(np.max(np.asarray(sample["scale"], dtype=np.float64) * 200.0))
    c = np.asarray(sample["center"], dtype=np.float64)
    box = None if aug.get("extreme") is None else extreme_crop_box(np.asarray(sample["keypoints_2d"], dtype=np.float64), aug["extreme"])
    if box is not None:
        c, size = box
    c = c + np.array([aug["tx"], aug["ty"]]) * size
    return c, size * aug["scale"], _rot2(aug["rot_deg"])


def crop_image(image: np.ndarray, c: np.ndarray, side: float, rot: np.ndarray, out_hw=OUT_HW) -> Tensor:
    """Bilinear crop (3,H,W) float 0…255, zero border: patch pixel (u, v) ← source c + (S/256)·Rotᵀ·(p − 128)."""
    h_out, w_out = out_hw
    x0 = (PATCH - w_out) / 2.0
    u = torch.arange(w_out, dtype=torch.float64) + x0 + 0.5 - PATCH / 2
    v = torch.arange(h_out, dtype=torch.float64) + 0.5 - PATCH / 2
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    p = torch.stack((uu, vv), dim=-1) * (side / PATCH)  # (H,W,2)
    src = p @ torch.from_numpy(rot) + torch.from_numpy(c)  # row-vector form of Rotᵀ·p
    h, w = image.shape[:2]
    grid = torch.stack((2 * src[..., 0] / (w - 1) - 1, 2 * src[..., 1] / (h - 1) - 1), dim=-1).float()
    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    return F.grid_sample(img, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def transform_keypoints_2d(kp: np.ndarray, c: np.ndarray, side: float, rot: np.ndarray) -> np.ndarray:
    """Pixel keypoints (K,3) → normalised crop units (K,3): Rot·(x − c)/S (= p/256 − 0.5), conf kept."""
    xy = (np.asarray(kp[:, :2], dtype=np.float64) - c) @ rot.T / side
    return np.concatenate((xy, np.asarray(kp[:, 2:3], dtype=np.float64)), axis=1)


def rotate_pelvis(q: np.ndarray, rot: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
    """Label q (46,) with its global orientation turned by the in-plane rotation `rot` (2,2) of the camera frame."""
    if np.allclose(rot, np.eye(2)):
        return q
    a3 = np.eye(3)
    a3[:2, :2] = rot
    f = np.eye(3) if frame is None else np.asarray(frame, dtype=np.float64)
    rp0 = rotations_from_dofs(torch.as_tensor(q, dtype=torch.float64)[None])[0, 0]
    rp0 = torch.from_numpy(f.T @ a3 @ f) @ rp0
    out = np.array(q, dtype=np.float64)
    out[:3] = joint_dofs_from_rotation(0, rp0[None])[0].numpy()
    return out


def side_label(sample: dict, side: str, cfg: DataConfig) -> tuple[bool, np.ndarray, np.ndarray, str]:
    """HSMR's stages 6, 8, 10, 11 for side 'orig'|'flip' → (valid, poses (46,), betas (10,), status).

    status: 'valid', 'valid_nan_zeroed' (stage 8 re-validates a zeroed NaN array), 'pve', 'betas'."""
    q = np.asarray(sample[f"{side}_poses"], dtype=np.float64)
    betas = np.asarray(sample[f"{side}_betas"], dtype=np.float64)
    nan = False
    if np.isnan(q).any():
        q, nan = np.zeros_like(q), True
    if np.isnan(betas).any():
        betas, nan = np.zeros_like(betas), True
    key = f"{side}_pve_max"
    pve = sample.get(key)
    if pve is None or isinstance(pve, (str, bytes)) or np.size(pve) != 1:
        raise KeyError(f"{sample.get('__url__')}: person {sample.get('__key__')!r} has no numeric {key!r} (HSMR's loader needs it)")
    pve = float(np.asarray(pve).reshape(()))
    if not (pve < cfg.pve_valid):  # NaN → invalid
        return False, q, betas, "pve"
    if np.any(np.abs(betas) > cfg.max_abs_beta):
        return False, q, betas, "betas"
    return True, q, betas, "valid_nan_zeroed" if nan else "valid"


def reprojection_loss(person: dict) -> float | None:
    """HMR2.0's SMPL-fit loss from extra_info.fitting_loss (a 0-d object array wrapping a dict), or None."""
    info = person.get("extra_info")
    fl = info.get("fitting_loss") if isinstance(info, dict) else None
    if isinstance(fl, np.ndarray) and fl.dtype == object and fl.ndim == 0:
        fl = fl.item()
    v = fl.get("reprojection_loss") if isinstance(fl, dict) else None
    return None if v is None else float(np.asarray(v).reshape(()))


def imagenet_normalise(img: Tensor) -> Tensor:
    """Pixels (…,3,H,W) in 0…255 → (x/255 − mean)/std with ImageNet's mean and std (§2.3 step 5)."""
    return (img / 255.0 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def prepare_sample(sample: dict, aug: dict, cfg: DataConfig) -> dict:
    """One person sample + augmentation → training tensors (see module docstring)."""
    if aug["flip"]:
        sample = flip_person(sample)
    image = np.asarray(sample["image"])
    c, side, rot = crop_geometry(sample, aug)
    img = crop_image(image, c, side, rot)
    colour = torch.as_tensor(np.asarray(aug["colour"]), dtype=torch.float32)[:, None, None]
    img = imagenet_normalise((img * colour).clamp(0, 255))
    kp2 = transform_keypoints_2d(np.asarray(sample["keypoints_2d"]), c, side, rot)
    kp2[:, 2] = np.where(kp2[:, 2] < cfg.kp_conf_floor, 0.0, kp2[:, 2])
    kp3 = np.asarray(sample["keypoints_3d"], dtype=np.float64).copy()
    kp3[:, :2] = kp3[:, :2] @ rot.T
    valid, q, betas, _ = side_label(sample, "orig", cfg)
    if valid:
        q = rotate_pelvis(q, rot, cfg.pelvis_frame)
    else:
        q, betas = np.zeros(46), np.zeros(10)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    return {
        "img": img.float(),
        "kp2d": f32(kp2),
        "kp3d": f32(kp3),
        "q": f32(q),
        "betas": f32(betas),
        "has_pose": torch.tensor(float(valid)),
        "has_betas": torch.tensor(1.0),
        "flip": torch.tensor(float(aug["flip"])),
        "rot_deg": torch.tensor(float(aug["rot_deg"])),
    }


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# ----------------------------------------------------------------------------- stream
class LazyImage:
    """Encoded image bytes, decoded to RGB uint8 only when asked (skipped samples stay cheap)."""

    def __init__(self, data: bytes):
        self.data = data

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(Image.open(io.BytesIO(self.data)).convert("RGB"))
        return a if dtype is None else a.astype(dtype)


def _lazy_image_handler(key: str, data: bytes):
    ext = key.rsplit(".", 1)[-1].lower()
    return LazyImage(data) if ext in ("jpg", "jpeg", "png") else None


def _all_shards(src):
    """Node/worker splitter that keeps every shard: ranks and workers split by sample index instead."""
    yield from src


def drop_reason(person: dict, cfg: DataConfig) -> str | None:
    """HSMR's person filters (§2.1 stages 12, 14): 'few_keypoints', 'reprojection', or None (kept)."""
    conf = np.asarray(person["keypoints_2d"])[:, 2]
    if int((conf >= cfg.kp_conf_floor).sum()) < cfg.min_keypoints:  # > 4 left after the 0.3 floor
        return "few_keypoints"
    loss = reprojection_loss(person)
    if loss is not None and not loss < cfg.reprojection_max:
        return "reprojection"
    return None


def _source_persons(cfg: DataConfig):
    return open_source_persons(cfg.release, cfg.round, split=cfg.split, val_fraction=cfg.val_fraction, image=_lazy_image_handler,
        nodesplitter=_all_shards, workersplitter=_all_shards, empty_check=False,
    )  # fmt: skip


def release_persons(cfg: DataConfig):
    """One pass over the source's kept persons (ordered as stored; a release or a tar set), images decoded lazily."""
    for s in _source_persons(cfg):
        if drop_reason(s, cfg) is None:
            yield s


def count_persons(cfg: DataConfig) -> dict[str, int]:
    """One pass over `cfg.release` (a release or tar set) → HSMR's decisions counted: persons = kept + dropped_*;
    per side kept = valid + invalid_pve + invalid_betas (valid includes nan_zeroed_valid)."""
    c = {"persons": 0, "kept": 0, "dropped_few_keypoints": 0, "dropped_reprojection": 0}
    for side in ("orig", "flip"):
        c.update({f"{side}_valid": 0, f"{side}_invalid_pve": 0, f"{side}_invalid_betas": 0, f"{side}_nan_zeroed_valid": 0})
    for s in _source_persons(cfg):
        c["persons"] += 1
        why = drop_reason(s, cfg)
        if why is not None:
            c[f"dropped_{why}"] += 1
            continue
        c["kept"] += 1
        for side in ("orig", "flip"):
            valid, _, _, status = side_label(s, side, cfg)
            c[f"{side}_valid" if valid else f"{side}_invalid_{status}"] += 1
            c[f"{side}_nan_zeroed_valid"] += status == "valid_nan_zeroed"
    return c


def source_counts(cfg: DataConfig) -> dict[str, dict]:
    """{source spec: `count_persons` counts (+ 'weight' when mixed)} for `cfg.release` or every `cfg.mix` source."""
    if not cfg.mix:
        return {str(cfg.release): count_persons(cfg)}
    return {str(p): dict(count_persons(dataclasses.replace(cfg, release=str(p), mix=None)), weight=float(w)) for p, w in cfg.mix}


def _shuffled(it, rng: np.random.Generator, size: int):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf.pop(int(rng.integers(len(buf))))
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))


def _single_stream(cfg: DataConfig, epochs: int | None = None):
    """(epoch, person sample) over `epochs` passes of one release (None: forever), seeded shuffle per epoch."""
    epoch = 0
    while epochs is None or epoch < epochs:
        rng = np.random.default_rng([cfg.seed, 7, epoch])
        any_sample = False
        for s in _shuffled(release_persons(cfg), rng, max(cfg.shuffle_buffer, 1)):
            any_sample = True
            yield epoch, s
        if not any_sample:
            raise ValueError(f"{cfg.release}: no usable persons in split {cfg.split!r}")
        epoch += 1


def person_stream(cfg: DataConfig, epochs: int | None = None):
    """(global index n, epoch, person sample). With `cfg.mix` ((release, weight), ...) every sample
    comes from a release drawn with probability ∝ weight (seeded per n; each release cycles through
    its own epochs, `epoch` is then that release's); otherwise `cfg.release` is streamed as is."""
    if not cfg.mix:
        for n, (epoch, s) in enumerate(_single_stream(cfg, epochs)):
            yield n, epoch, s
        return
    paths = [m[0] for m in cfg.mix]
    w = np.asarray([float(m[1]) for m in cfg.mix])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    streams = [_single_stream(dataclasses.replace(cfg, release=str(p), mix=None, seed=cfg.seed + 1000 * i), epochs)
               for i, p in enumerate(paths)]  # fmt: skip
    n = 0
    while True:
        i = int(np.random.default_rng([cfg.seed, 13, n]).choice(len(w), p=w))
        try:
            epoch, s = next(streams[i])
        except StopIteration:
            return
        yield n, epoch, dict(s, source_release=paths[i])
        n += 1


class ReleaseBatches(torch.utils.data.IterableDataset):
    """Infinite stream of training batches for rank `rank` of `world`, starting at batch `start_batch`."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world: int = 1, start_batch: int = 0):
        super().__init__()
        self.cfg, self.rank, self.world, self.start_batch = cfg, rank, world, start_batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        bsz = self.cfg.batch_size
        items, m = [], 0
        for n, _, s in person_stream(self.cfg):
            if n % self.world != self.rank:
                continue
            b = m // bsz
            m += 1
            if b < self.start_batch or (b - self.start_batch) % nw != wid:
                continue
            aug = sample_augmentation(np.random.default_rng([self.cfg.seed, n]), self.cfg.augment)
            items.append(prepare_sample(s, aug, self.cfg))
            if len(items) == bsz:
                yield collate(items)
                items = []


def eval_batches(cfg: DataConfig, batch_size: int | None = None):
    """One pass over the split without augmentation, in stored order, as batches (last one may be short)."""
    bsz = batch_size or cfg.batch_size
    items, samples = [], []
    for s in release_persons(cfg):
        items.append(prepare_sample(s, identity_augmentation(), cfg))
        samples.append(s)
        if len(items) == bsz:
            yield collate(items), samples
            items, samples = [], []
    if items:
        yield collate(items), samples


def make_loader(cfg: DataConfig, rank: int = 0, world: int = 1, start_batch: int = 0, num_workers: int = 0):
    return torch.utils.data.DataLoader(
        ReleaseBatches(cfg, rank, world, start_batch),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
