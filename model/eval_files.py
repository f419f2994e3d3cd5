"""Evaluation on the field's standard files (hsmr-pipeline.md §1.6, §6): HMR2.0 evaluation npz and HSMR's MOYO npz.

Readers: `read_hmr2_npz` (imgname, center px, scale px (N,) or (N,2), body/extra 2D keypoints
25 + 19 rows, extra 3D keypoints) and `read_moyo_npz` (img_paths, centers px, scales (w,h) px,
smpl dict of global_orient / body_pose / betas) → `EvalFile`.

Crops (§6.1): the box is expanded to 192:256 (w:h), the square side is its larger side, and
`expand` = side / max(original box side) scales crop-unit distances back to the original box for
PCK. Metrics (§6.2):
* HMR2 files with 3D ground truth (3DPW, H36M): MPJPE / PA-MPJPE (mm) over the 14 joints
  [25–37, 43] of the predicted 44 keypoints, after subtracting joint 39 from both sides.
* HMR2 files with 2D ground truth (COCO, LSP-Ext, PoseTrack, and the 2D of the others):
  PCK@0.05 / @0.1 of the projected 44 keypoints against visible (conf > 0.5) ground truth.
* MOYO: ground truth = SMPL neutral mesh of the npz parameters; prediction = SKEL skin. 24 joints
  from the SAME SMPL male joint regressor on both meshes (HSMR mixes two; its maintainer calls one
  regressor the right choice, issue #37), both sides relative to joint 0: MPJPE / PA-MPJPE over
  24 joints, MPVE / PA-MPVE over the 6890 vertices, and HSMR's knee/elbow violation rates.

`evaluate_files(predict_fn, files, images_root, models_dir)` runs any predictor
`predict_fn(images (B,3,256,192), index (B,)) -> {'q', 'betas', 'cam'}` (optionally 'verts'
(B,6890,3), an SMPL-topology mesh used instead of the SKEL skin); `evaluate_checkpoint` wraps a
regressor checkpoint. `table1(result)` lays the numbers out like HSMR's Table 1 next to the
paper's HMR2.0 and HSMR rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.smpl import load_smpl, smpl_forward

from .data import crop_image, imagenet_normalise
from .evaluate import load_model
from .losses import BodyModel, projected_keypoints
from .metrics import EVAL_14, limit_violation_rates, mpjpe, pa_mpjpe, pck

BBOX_ASPECT = (192.0, 256.0)  # (w, h) of the evaluation crop
TABLE1_COLUMNS = ("COCO", "LSP-Ext", "PoseTrack", "3DPW", "H36M", "MOYO")
_NAMES = (("3dpw", "3DPW"), ("h36m", "H36M"), ("coco", "COCO"), ("lspet", "LSP-Ext"), ("lsp", "LSP-Ext"),
          ("posetrack", "PoseTrack"), ("moyo", "MOYO"))  # fmt: skip
# Paper rows (hsmr-pipeline.md §6.3, Table 1): PCK@0.05 / @0.1 for 2D sets, MPJPE / PA-MPJPE (mm) for 3D sets.
PAPER_ROWS = {
    "HMR2.0 (paper)": ((0.86, 0.96), (0.53, 0.82), (0.90, 0.98), (81.3, 54.3), (50.0, 32.4), (123.3, 90.4)),
    "HSMR ViT-H (paper)": ((0.85, 0.96), (0.51, 0.81), (0.90, 0.98), (81.5, 54.8), (50.4, 32.9), (104.5, 79.6)),
}


@dataclass
class EvalFile:
    """One evaluation file's persons; all arrays float64, pixels unless noted."""

    path: str
    dataset: str  # Table 1 column name
    kind: str  # "hmr2" | "moyo"
    images: list[str]  # relative to the image root
    center: np.ndarray  # (N,2)
    box_wh: np.ndarray  # (N,2) box width, height
    kp2d: np.ndarray | None = None  # (N,44,3) pixels + confidence
    kp3d: np.ndarray | None = None  # (N,44,4) metres + confidence
    smpl: dict | None = None  # MOYO: global_orient (N,3), body_pose (N,69), betas (N,10)

    def __len__(self) -> int:
        return len(self.images)


def dataset_name(path: str | Path) -> str:
    """Table 1 column of a file from its name (3dpw_test.npz → 3DPW); the file stem if unknown."""
    stem = Path(path).stem.lower()
    return next((name for k, name in _NAMES if k in stem), Path(path).stem)


def _field(z, path, key: str, shape_tail: tuple, n: int | None = None) -> np.ndarray:
    if key not in z:
        raise KeyError(f"{path}: missing key {key!r}")
    a = np.asarray(z[key], dtype=np.float64)
    if a.shape[1:] != shape_tail or (n is not None and a.shape[0] != n):
        raise ValueError(f"{path}: key {key!r} has shape {a.shape}, expected ({n or 'N'}, {', '.join(map(str, shape_tail))})")
    return a


def _strings(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(a).tolist()]


def read_hmr2_npz(path: str | Path) -> EvalFile:
    """HMR2.0 evaluation npz (§1.6) → EvalFile; missing keypoint blocks read as zero confidence."""
    z = np.load(path, allow_pickle=True)
    if "imgname" not in z:
        raise KeyError(f"{path}: missing key 'imgname'")
    names = _strings(z["imgname"])
    n = len(names)
    center = _field(z, path, "center", (2,), n)
    scale = np.asarray(z["scale"], dtype=np.float64).reshape(n, -1) if "scale" in z else None
    if scale is None or scale.shape[1] not in (1, 2):
        raise ValueError(f"{path}: key 'scale' must be (N,) or (N,2) pixels")
    box = np.repeat(scale, 2, axis=1) if scale.shape[1] == 1 else scale
    kp2d = np.zeros((n, 44, 3))
    kp3d = np.zeros((n, 44, 4))
    for key, rows, arr, tail in (("body_keypoints_2d", slice(0, 25), kp2d, (25, 3)), ("extra_keypoints_2d", slice(25, 44), kp2d, (19, 3)),
                                 ("extra_keypoints_3d", slice(25, 44), kp3d, (19, 4))):  # fmt: skip
        if key in z:
            arr[:, rows] = _field(z, path, key, tail, n)
    # body_keypoints_3d rows carry no ground truth (HMR2 forces their confidences to 0)
    return EvalFile(str(path), dataset_name(path), "hmr2", names, center, box, kp2d, kp3d)


def read_moyo_npz(path: str | Path) -> EvalFile:
    """HSMR's MOYO npz (§1.6) → EvalFile with the SMPL ground-truth parameters."""
    z = np.load(path, allow_pickle=True)
    for key in ("img_paths", "centers", "scales", "smpl"):
        if key not in z:
            raise KeyError(f"{path}: missing key {key!r}")
    names = _strings(z["img_paths"])
    n = len(names)
    smpl_raw = z["smpl"].item() if z["smpl"].dtype == object else None
    if not isinstance(smpl_raw, dict):
        raise ValueError(f"{path}: key 'smpl' must be a dict of global_orient, body_pose, betas")
    smpl = {}
    for k, tail in (("global_orient", (3,)), ("body_pose", (69,)), ("betas", (10,))):
        smpl[k] = _field(smpl_raw, f"{path}: smpl", k, tail, n)
    return EvalFile(str(path), "MOYO", "moyo", names, _field(z, path, "centers", (2,), n), _field(z, path, "scales", (2,), n), smpl=smpl)


def eval_box(box_wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box (N,2) px → (square side (N,) px after expanding to 192:256, expand factor (N,) = side / max box side)."""
    w, h = box_wh[:, 0], box_wh[:, 1]
    wt, ht = BBOX_ASPECT
    taller = h / w < ht / wt  # too wide for the aspect: grow the height
    h_new = np.where(taller, np.maximum(w * ht / wt, h), h)
    w_new = np.where(taller, w, np.maximum(h * wt / ht, w))
    side = np.maximum(w_new, h_new)
    return side, side / np.maximum(w, h)


def load_crops(f: EvalFile, idx: np.ndarray, images_root: str | Path) -> torch.Tensor:
    """ImageNet-normalised crops (B,3,256,192) of persons `idx` of file `f`."""
    side, _ = eval_box(f.box_wh[idx])
    out = []
    for j, i in enumerate(idx):
        p = Path(images_root) / f.images[i]
        if not p.is_file():
            raise FileNotFoundError(f"{f.path}: image {f.images[i]!r} of person {i} not found under {images_root}")
        img = np.asarray(Image.open(p).convert("RGB"))
        out.append(crop_image(img, f.center[i], float(side[j]), np.eye(2)))
    return imagenet_normalise(torch.stack(out)).float()


class _Moyo:
    """MOYO ground truth: SMPL neutral meshes, and the SMPL male joint regressor used on both sides."""

    def __init__(self, models_dir):
        self.smpl = load_smpl(models_dir, "neutral")
        self.j_reg = torch.as_tensor(np.asarray(load_smpl(models_dir, "male").J_regressor.detach().cpu()), dtype=torch.float32)

    def gt_verts(self, smpl: dict, idx) -> torch.Tensor:
        t = lambda k: torch.as_tensor(smpl[k][idx], dtype=torch.float32)
        with torch.no_grad():
            verts, _ = smpl_forward(self.smpl, torch.cat((t("global_orient"), t("body_pose")), 1), t("betas"))
        return verts

    def joints(self, verts: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jv,bvc->bjc", self.j_reg.to(verts), verts)


def moyo_errors(pred_verts: torch.Tensor, gt_verts: torch.Tensor, j_reg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample MOYO errors (B,) mm: mpjpe24 / pa_mpjpe24 (joints = j_reg (24,V) · mesh), mpve / pa_mpve, root = joint 0."""
    pj = torch.einsum("jv,bvc->bjc", j_reg.to(pred_verts), pred_verts)
    gj = torch.einsum("jv,bvc->bjc", j_reg.to(gt_verts), gt_verts)
    pv, gv = pred_verts - pj[:, :1], gt_verts - gj[:, :1]
    allv = range(pv.shape[1])
    return {
        "mpjpe24": mpjpe(pj, gj, range(24), root=0), "pa_mpjpe24": pa_mpjpe(pj, gj, range(24)),
        "mpve": mpjpe(pv, gv, allv, root=None), "pa_mpve": pa_mpjpe(pv, gv, allv),
    }  # fmt: skip


def keypoint_errors(pred_kp: torch.Tensor, gt_kp3d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample MPJPE / PA-MPJPE (B,) mm over the 14 HMR2 joints, root = joint 39 (§6.2)."""
    gt = gt_kp3d[..., :3].to(pred_kp)
    return {"mpjpe14": mpjpe(pred_kp, gt, EVAL_14), "pa_mpjpe14": pa_mpjpe(pred_kp, gt, EVAL_14)}


def _has_3d(f: EvalFile) -> np.ndarray:
    if f.kp3d is None:
        return np.zeros(len(f), bool)
    return (f.kp3d[:, list(EVAL_14), 3] > 0).all(1)  # joint 39 is subtracted regardless, as HMR2's evaluator does


@torch.no_grad()
def evaluate_files(predict_fn, files: list[EvalFile], images_root, models_dir, *, batch_size: int = 32, max_samples: int | None = None) -> dict:
    """Run `predict_fn` over every file's crops → {'datasets': {name: metrics}, 'n': {...}} (see module docstring)."""
    body = BodyModel(models_dir)
    moyo = _Moyo(models_dir) if any(f.kind == "moyo" for f in files) else None
    out = {"datasets": {}}
    for f in files:
        n = len(f) if max_samples is None else min(len(f), max_samples)
        side, expand = eval_box(f.box_wh)
        has3d = _has_3d(f)
        per, proj, qs = {}, [], []
        for b0 in range(0, n, batch_size):
            idx = np.arange(b0, min(b0 + batch_size, n))
            pred = predict_fn(load_crops(f, idx, images_root), torch.from_numpy(idx))
            verts = pred.get("verts")
            if verts is None:
                verts = body.skel(pred["q"].float(), pred["betas"].float()).skin_verts
            kp = body.regressor(verts.float())
            proj.append(projected_keypoints(kp, pred["cam"].float()))
            if "q" in pred:
                qs.append(pred["q"].float())
            errs = {}
            if f.kind == "moyo":
                errs = moyo_errors(verts.float(), moyo.gt_verts(f.smpl, idx), moyo.j_reg)
            elif has3d[idx].any():
                v = torch.from_numpy(has3d[idx])
                errs = keypoint_errors(kp[v], torch.as_tensor(f.kp3d[idx][has3d[idx]]))
            for k, e in errs.items():
                per.setdefault(k, []).append(e)
        m = {k: float(torch.cat(v).mean()) for k, v in per.items()}
        if f.kp2d is not None:
            gt2 = np.concatenate(((f.kp2d[:n, :, :2] - f.center[:n, None]) / side[:n, None, None], f.kp2d[:n, :, 2:]), 2)  # crop units
            p2 = torch.cat(proj).double()
            ex = torch.from_numpy(expand[:n])
            m["pck05"] = float(pck(p2, torch.from_numpy(gt2), 0.05, ex))
            m["pck10"] = float(pck(p2, torch.from_numpy(gt2), 0.1, ex))
        if f.kind == "moyo" and qs:
            m.update({k: v for k, v in limit_violation_rates(torch.cat(qs)).items() if k.startswith("knee_elbow")})
        m["n"] = n
        m["n_3d"] = n if f.kind == "moyo" else int(has3d[:n].sum())
        m["file"] = f.path
        out["datasets"][f.dataset] = m
    return out


def evaluate_checkpoint(checkpoint, *, hmr2_npz=(), moyo_npz=(), images_root=".", models_dir=None, batch_size: int = 32,
                        max_samples: int | None = None, out_dir=None, device: str = "cpu") -> dict:  # fmt: skip
    """A regressor checkpoint on HMR2.0 / MOYO evaluation files → result dict with 'markdown' (Table 1 layout)."""
    files = [read_hmr2_npz(p) for p in hmr2_npz] + [read_moyo_npz(p) for p in moyo_npz]
    if not files:
        raise ValueError("give at least one --hmr2-npz or --moyo-npz file")
    model, ck = load_model(checkpoint, device)

    def predict_fn(imgs, _idx):
        p = model(imgs.to(device))
        return {k: p[k].cpu() for k in ("q", "betas", "cam")}

    res = evaluate_files(predict_fn, files, images_root, ensure_models_dir(models_dir), batch_size=batch_size, max_samples=max_samples)
    res.update(checkpoint=str(checkpoint), step=ck.get("step"))
    res["markdown"] = table1(res, f"ours (`{Path(checkpoint).name}`)")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_files.json").write_text(json.dumps({k: v for k, v in res.items() if k != "markdown"}, indent=1))
        (out / "eval_files.md").write_text(res["markdown"])
    return res


def _pair(a: float | None, b: float | None, pck_pair: bool) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a:.2f} / {b:.2f}" if pck_pair else f"{a:.1f} / {b:.1f}"


def table1(result: dict, row_name: str = "ours") -> str:
    """Markdown in HSMR's Table 1 layout (PCK@0.05 / @0.1; MPJPE / PA-MPJPE mm), paper rows first; MOYO surface and limits below."""
    d = result["datasets"]
    lines = ["| method | " + " | ".join(TABLE1_COLUMNS) + " |", "|---|" + "---|" * len(TABLE1_COLUMNS)]
    for name, vals in PAPER_ROWS.items():
        lines.append(f"| {name} | " + " | ".join(_pair(a, b, c in ("COCO", "LSP-Ext", "PoseTrack")) for c, (a, b) in zip(TABLE1_COLUMNS, vals)) + " |")
    cells = []
    for c in TABLE1_COLUMNS:
        m = d.get(c, {})
        if c == "MOYO":
            cells.append(_pair(m.get("mpjpe24"), m.get("pa_mpjpe24"), False))
        elif c in ("3DPW", "H36M"):
            cells.append(_pair(m.get("mpjpe14"), m.get("pa_mpjpe14"), False))
        else:
            cells.append(_pair(m.get("pck05"), m.get("pck10"), True))
    lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{k} {v['n']} ({v['n_3d']} with 3D truth)" for k, v in d.items())
    text = "PCK@0.05 / PCK@0.1 for COCO, LSP-Ext, PoseTrack; MPJPE / PA-MPJPE (mm) for 3DPW, H36M, MOYO.\n\n" + "\n".join(lines)
    text += f"\n\nPersons: {counts}.\n"
    if "MOYO" in d:
        m = d["MOYO"]
        text += (f"\nMOYO surface (Table 2 layout): MPVPE / PA-MPVPE {_pair(m.get('mpve'), m.get('pa_mpve'), False)} mm "
                 "(paper: HMR2.0 142.2 / 103.4, HSMR 120.1 / 90.7).\n")  # fmt: skip
        viol = [f"> {t}°: {m[f'knee_elbow@{t}']:.1f} %" for t in (10, 20, 30) if f"knee_elbow@{t}" in m]
        if viol:
            text += "MOYO knee/elbow limit violations (samples with any): " + ", ".join(viol) + ".\n"
    return text
