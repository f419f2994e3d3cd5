"""Per-sample predictions of a checkpoint over a release (input of a refinement round).

`predict(checkpoint, release, out)` writes `out` (.npz): `key` (person keys `<image key>_<index>`),
`poses` (N,46), `betas` (N,10), `cam` (N,3) weak-perspective (s, tx, ty), `cam_t` (N,3) crop-camera
translation, `kp2d` (N,44,2) projected keypoints in normalised crop units; no augmentation, crops
as in training (center/scale of the release).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skelpgt.fitting.camera import FOCAL_NORMALISED

from .data import DataConfig, eval_batches
from .evaluate import load_model
from .losses import BodyModel, projected_keypoints
from .network import cam_translation, pelvis_frame


@torch.no_grad()
def predict(checkpoint, release, out, *, round=None, split=None, models_dir=None, batch_size=16, device="cpu") -> dict:
    from skelpgt.fitting.models import ensure_models_dir

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
    arrays = {k: (np.asarray(v) if k == "key" else np.concatenate(v).astype(np.float32)) for k, v in cols.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return {"path": str(out), "n": len(arrays["key"])}
