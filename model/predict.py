"""Per-sample predictions of a checkpoint over a release (input of a refinement round).

`predict(checkpoint, release, out)` writes `out` (.npz): `key` (person keys `<image key>_<index>`),
`poses` (N,46), `betas` (N,10), `cam` (N,3) weak-perspective (s, tx, ty), `cam_t` (N,3) crop-camera
translation, `kp2d` (N,44,2) projected keypoints in normalised crop units; no augmentation, crops
as in training (center/scale of the release).

A refinement round's predictions are made per release shard (`predict_shard`, one task each in the
`refine-labels` flow, so they spread over workers like the fits) and joined in shard order
(`join_predictions`; where: `Workdir.predictions`, by `pipelines.usecases.predict.predict_round`).
Every file is written under a temporary name and renamed: an interrupted prediction is never reused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from skelpgt.fitting.camera import FOCAL_NORMALISED
from skelpgt.fitting.device import resolve_device
from skelpgt.fitting.mirror import mirror_pose
from skelpgt.fitting.models import ensure_models_dir

from .data import DataConfig, eval_batches
from .evaluate import load_model
from .losses import BodyModel, projected_keypoints
from .network import cam_translation, pelvis_frame

# {person key: {'orig' | 'flip': (q (46,) rad, β (10,))}}: a regressor's starting points for a refinement round.
Predictions = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


@torch.no_grad()
def predict(checkpoint, release, out, *, round=None, split=None, models_dir=None, batch_size=16, device="cpu") -> dict:
    """Checkpoint + release (or tar set) → `out` .npz of per-person predictions (module docstring); {'path', 'n'}."""
    device = resolve_device(device)  # 'cuda' on a Dask worker: that worker's own GPU
    model, _ = load_model(checkpoint, device)
    body = BodyModel(ensure_models_dir(models_dir)).to(device)
    frame = tuple(map(tuple, pelvis_frame(body.skel).double().tolist()))
    cfg = DataConfig(release=str(release), round=round, split=split, batch_size=batch_size, pelvis_frame=frame)
    cols = {k: [] for k in ("key", "poses", "betas", "cam", "cam_t", "kp2d")}
    for batch, samples in eval_batches(cfg, batch_size):
        pred = model(batch["img"].to(device))
        kp, _ = body(pred["q"], pred["betas"])
        cols["key"] += [s["__key__"] for s in samples]
        cols["poses"].append(pred["q"].cpu().numpy())
        cols["betas"].append(pred["betas"].cpu().numpy())
        cols["cam"].append(pred["cam"].cpu().numpy())
        cols["cam_t"].append(cam_translation(pred["cam"], FOCAL_NORMALISED).cpu().numpy())
        cols["kp2d"].append(projected_keypoints(kp, pred["cam"]).cpu().numpy())
    arrays = {k: (np.asarray(v, dtype=str) if k == "key" else _joined(v, _WIDTHS[k])) for k, v in cols.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return {"path": str(out), "n": len(arrays["key"])}


_WIDTHS = {"poses": (46,), "betas": (10,), "cam": (3,), "cam_t": (3,), "kp2d": (44, 2)}  # per-person shapes


def _joined(parts: list[np.ndarray], width: tuple[int, ...]) -> np.ndarray:
    """Batches → one float32 array ((0, *width) when a shard keeps no person)."""
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, *width), np.float32)


def predict_shard(checkpoint, shard, out, *, models_dir=None, device="cpu", batch_size=16) -> Path:
    """Predictions of one release shard into `out` (.npz, atomic; an existing `out` is kept) → `out`."""
    out = Path(out)
    if not out.is_file():
        tmp = out.with_name(out.name[: -len(".npz")] + f".{os.getpid()}.tmp.npz")  # np.savez keeps a '.npz' suffix as is
        predict(checkpoint, shard, tmp, models_dir=models_dir, device=device, batch_size=batch_size)
        os.replace(tmp, out)
    return out


def join_predictions(parts: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Per-shard prediction files (in release order) → one .npz at `out` (atomic) → `out`."""
    out = Path(out)
    loaded = []
    for part in parts:
        with np.load(part, allow_pickle=False) as data:
            loaded.append(dict(data))
    arrays = {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]} if loaded else {"key": np.zeros(0, str)} | {k: np.zeros((0, *w), np.float32) for k, w in _WIDTHS.items()}
    tmp = out.with_name(out.name[: -len(".npz")] + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Predictions .npz (key, poses (N,46) rad, betas (N,10)) → Predictions; flip = mirror_pose of orig."""
    with np.load(path, allow_pickle=False) as data:
        keys, poses, betas = data["key"], data["poses"].astype(np.float32), data["betas"].astype(np.float32)
    flipped = mirror_pose(torch.from_numpy(poses)).numpy()
    return {str(k): {"orig": (poses[i], betas[i]), "flip": (flipped[i], betas[i])} for i, k in enumerate(keys.tolist())}
