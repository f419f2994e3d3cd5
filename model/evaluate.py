"""Evaluate a checkpoint on a held-out split of a release (hsmr-pipeline.md §6) with a mean-pose baseline row.

`evaluate(checkpoint, release, ...) -> dict` with per-row metrics ('model', 'mean_pose'), counts,
and 'markdown' (a table). Ground truth for the 3D metrics is the person's valid SKEL label
(pve_max < 0.06): its 44 keypoints (MPJPE / PA-MPJPE on the 14 HMR2 joints and on all 44, root =
keypoint 39), its 24 anatomical joints (root = joint 0) and its skin (PVE after subtracting
keypoint 39). 2D PCK uses the release's crop keypoints (conf > 0.5) against the projected
prediction. The mean-pose baseline predicts the network's mean (head buffers: upright zero pose,
β = 0, camera (0.9, 0, 0)) for every sample; its 3D metrics are camera-free (root-relative).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from skelpgt.fitting.keypoints import ROOT_INDEX
from skelpgt.fitting.models import ensure_models_dir

from .data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, eval_batches
from .losses import BodyModel, projected_keypoints
from .metrics import ALL_44, EVAL_14, limit_violation_rates, mpjpe, pa_mpjpe, pck, pve
from .network import Regressor, decode_pose, net_config, pelvis_frame

ROWS = ("model", "mean_pose")
COLUMNS = (
    ("mpjpe14", "MPJPE-14 (mm)"), ("pa_mpjpe14", "PA-MPJPE-14 (mm)"), ("mpjpe44", "MPJPE-44 (mm)"),
    ("pa_mpjpe44", "PA-MPJPE-44 (mm)"), ("mpjpe24", "MPJPE-24 joints (mm)"), ("pa_mpjpe24", "PA-MPJPE-24 joints (mm)"),
    ("pve", "PVE (mm)"), ("pck05", "PCK@0.05"), ("pck10", "PCK@0.1"),
    ("knee_elbow@10", "viol.>10° (%)"), ("knee_elbow@20", "viol.>20° (%)"), ("knee_elbow@30", "viol.>30° (%)"),
)  # fmt: skip


def load_model(checkpoint: str | Path, device="cpu") -> tuple[Regressor, dict]:
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = Regressor(net_config(ck["net_config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck


def _skel_outputs(body: BodyModel, q, betas):
    out = body.skel(q, betas)
    return body.regressor(out.skin_verts), out.joints, out.skin_verts


@torch.no_grad()
def evaluate(
    checkpoint: str | Path,
    release: str | Path,
    *,
    round: int | None = None,
    split: str | None = "val",
    val_fraction: float = 0.05,
    models_dir: str | Path | None = None,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    max_samples: int | None = None,
    device: str = "cpu",
) -> dict:
    model, ck = load_model(checkpoint, device)
    body = BodyModel(ensure_models_dir(models_dir)).to(device)
    frame = tuple(map(tuple, pelvis_frame(body.skel).double().tolist()))
    cfg = DataConfig(release=str(release), round=round, split=split, val_fraction=val_fraction, batch_size=batch_size, pelvis_frame=frame)
    mean_q = decode_pose(model.head.mean_pose.view(1, 24, 6))[0]
    acc = {r: {k: [] for k, _ in COLUMNS if not k.startswith(("pck", "knee"))} for r in ROWS}
    kp2d_all, proj = [], {r: [] for r in ROWS}
    q_all = {r: [] for r in ROWS}
    grid = []
    n = 0
    for batch, _ in eval_batches(cfg, batch_size):
        if max_samples is not None and n >= max_samples:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        b = batch["img"].shape[0]
        n += b
        pred = model(batch["img"])
        rows = {
            "model": (pred["q"], pred["betas"], pred["cam"]),
            "mean_pose": (mean_q.expand(b, -1), model.head.mean_betas.expand(b, -1), model.head.mean_cam.expand(b, -1)),
        }
        valid = batch["has_pose"] > 0
        gt_kp, gt_j, gt_v = _skel_outputs(body, batch["q"], batch["betas"])
        kp2d_all.append(batch["kp2d"].cpu())
        for r, (q, betas, cam) in rows.items():
            kp, joints, verts = _skel_outputs(body, q, betas)
            proj[r].append(projected_keypoints(kp, cam).cpu())
            q_all[r].append(q.cpu())
            if r == "model" and len(grid) < 16:
                grid.extend(zip(batch["img"].cpu(), batch["kp2d"].cpu(), proj[r][-1]))
            if valid.any():
                v = valid
                a = acc[r]
                a["mpjpe14"].append(mpjpe(kp[v], gt_kp[v], EVAL_14))
                a["pa_mpjpe14"].append(pa_mpjpe(kp[v], gt_kp[v], EVAL_14))
                a["mpjpe44"].append(mpjpe(kp[v], gt_kp[v], ALL_44))
                a["pa_mpjpe44"].append(pa_mpjpe(kp[v], gt_kp[v], ALL_44))
                a["mpjpe24"].append(mpjpe(joints[v], gt_j[v], range(24), root=0))
                a["pa_mpjpe24"].append(pa_mpjpe(joints[v], gt_j[v], range(24)))
                a["pve"].append(pve(verts[v], gt_v[v], kp[v][:, ROOT_INDEX], gt_kp[v][:, ROOT_INDEX]))
    if n == 0:
        raise ValueError(f"{release}: split {split!r} holds no usable persons")
    kp2d = torch.cat(kp2d_all)
    result = {"checkpoint": str(checkpoint), "release": str(release), "split": split, "n": n, "step": ck.get("step"), "rows": {}}
    for r in ROWS:
        m = {k: float(torch.cat(v).mean()) if v else float("nan") for k, v in acc[r].items()}
        p = torch.cat(proj[r])
        m["pck05"] = float(pck(p, kp2d, 0.05))
        m["pck10"] = float(pck(p, kp2d, 0.1))
        m.update(limit_violation_rates(torch.cat(q_all[r])))
        result["rows"][r] = m
    result["n_3d"] = int(sum(len(x) for x in acc["model"]["mpjpe14"]))
    result["markdown"] = markdown_table(result)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
        (out / "eval.md").write_text(result["markdown"])
        save_grid(out / "predictions.png", grid)
        result["files"] = [str(out / "eval.json"), str(out / "eval.md"), str(out / "predictions.png")]
    return result


def markdown_table(result: dict) -> str:
    head = "| row | " + " | ".join(t for _, t in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    title = (
        f"Evaluation of `{Path(result['checkpoint']).name}` (step {result.get('step')}) on {result['n']} persons "
        f"({result['n_3d']} with valid 3D labels), split `{result['split']}`."
    )
    lines = [title, "", head, sep]
    for r in ROWS:
        m = result["rows"][r]
        lines.append(f"| {r} | " + " | ".join(_fmt(m[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return "–" if math.isnan(x) else (f"{x:.3f}" if abs(x) < 1.5 else f"{x:.1f}")


def save_grid(path: Path, items: list, cols: int = 4) -> None:
    """PNG grid of crops with ground-truth (green) and predicted (red) 2D keypoints."""
    if not items:
        return
    h, w = 256, 192
    rows = (len(items) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * w, rows * h))
    for i, (img, gt, pr) in enumerate(items):
        a = img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
        tile = Image.fromarray((a.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
        d = ImageDraw.Draw(tile)
        for pts, col in ((gt[:, :2], (0, 255, 0)), (pr, (255, 0, 0))):
            for x, y in pts.numpy():
                u, v = (x + 0.5) * 256 - 32, (y + 0.5) * 256
                d.ellipse((u - 2, v - 2, u + 2, v + 2), outline=col)
        canvas.paste(tile, ((i % cols) * w, (i // cols) * h))
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="evaluate a regressor checkpoint on a release split")
    ap.add_argument("checkpoint")
    ap.add_argument("release")
    ap.add_argument("--split", default="val")
    ap.add_argument("--models-dir")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    r = evaluate(a.checkpoint, a.release, split=None if a.split == "all" else a.split, models_dir=a.models_dir, out_dir=a.out)
    print(r["markdown"])


if __name__ == "__main__":
    main()
