"""The rounds report: per round of a release, what it changed and its labels' quality, against the truth where known.

Where the truth is known (a synthetic dataset: `datasets.rounds.find_truth`), each round's labels are
measured against it: MPJPE and PA-MPJPE of the 44 HSMR keypoints (`label_error_vs_truth`).
"""

from __future__ import annotations

import os

import numpy as np
import roma
import torch

from skelpgt.datasets.labelstore import LabelStore
from skelpgt.datasets.release import read_manifest
from skelpgt.datasets.rounds import find_truth
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.body import load_body
from skelpgt.fitting.keypoints import FLIP_PERMUTATION
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.smpl import load_smpl, smpl_forward


def rounds_report(workdir: str | os.PathLike, release: str, models_dir: str | os.PathLike | None = None) -> str:
    """Markdown table: per round, counts, labels changed/kept/rejected, the current labels' mean
    kp2d_err (normalised crop units) and limit violation (°), and their MPJPE and PA-MPJPE vs truth (mm) where known."""
    workdir = Workdir.of(workdir)
    lines = [
        f"# rounds of `{release}`",
        "",
        "| round | parent | persons | labelled | quarantined | changed | kept | rejected | mean kp2d_err | mean limit violation ° | MPJPE vs truth (mm) | PA-MPJPE vs truth (mm) | label digest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rounds = workdir.rounds(release)
    if not rounds:
        raise FileNotFoundError(f"{workdir.release(release)}: no release {release!r} with a complete round here (check --release and the workdir)")
    truth = None
    for r in rounds:
        manifest = read_manifest(workdir.round(release, r))
        with LabelStore(workdir.labels) as store:
            made = store.rows_of_round(r, ("producer", "accepted"))
            current = store.labels_of_round(r, ("kp2d_err", "limit_violation"))
        refined = made["producer"].astype(str) == "skelify"
        changed, rejected = int((refined & made["accepted"]).sum()), int((refined & ~made["accepted"]).sum())
        if truth is None:
            truth = find_truth(manifest["config"].get("sources", [])) or []
        mpjpe, pa = errors_vs_truth(workdir, r, truth, models_dir)
        c = manifest["counts"]
        lines.append(
            f"| {r} | {manifest['parent_round'] if manifest['parent_round'] is not None else '–'} | {c['persons']} | {c['labelled']} | "
            f"{c['quarantined']} | {changed} | {len(current['kp2d_err']) - changed} | {rejected} | {_mean(current['kp2d_err']):.4f} | "
            f"{_mean(current['limit_violation']):.2f} | {_mm(mpjpe)} | {_mm(pa)} | `{manifest['label_digest'][:12]}` |"
        )
    return "\n".join(lines)


def errors_vs_truth(workdir: str | os.PathLike, round: int, truth: list | None, models_dir: str | os.PathLike | None) -> tuple[float, float]:
    """(MPJPE, PA-MPJPE) mm of round `round`'s current labels vs `truth` (truth.npz files); NaN, NaN when the truth is unknown."""
    if not truth:
        return float("nan"), float("nan")
    return tuple(label_error_vs_truth(workdir, round, truth, models_dir, aligned=a) * 1000 for a in (False, True))


def label_error_vs_truth(
    workdir: str | os.PathLike,
    round: int,
    truth: list[str | os.PathLike] | str | os.PathLike,
    models_dir: str | os.PathLike | None = None,
    sides: tuple[str, ...] = ("orig", "flip"),
    chunk: int = 256,
    aligned: bool = False,
) -> float:
    """MPJPE (m) of round `round`'s current labels vs the true SMPL people: mean over labelled person
    sides of the root-relative (keypoint 39) distance of all 44 HSMR keypoints (SKEL skin of the
    label vs SMPL skin of the truth, same regressor); the flip label is compared with the mirrored truth.

    `aligned`: PA-MPJPE instead (each label's keypoints first similarity-aligned to the truth's),
    which ignores the global orientation: a label in the crop camera's convention (the orientation
    a 2D fit through HSMR's crop camera drifts to, up to ~20° off for off-centre people) is not
    counted as wrong in body pose for that."""
    models = ensure_models_dir(models_dir)
    body, smpl = load_body(models), load_smpl(models, "neutral")
    regressor, skel = body.keypoints, body.skel
    true = _read_truth([truth] if isinstance(truth, (str, os.PathLike)) else truth)
    with LabelStore(Workdir.of(workdir).labels) as store:
        labels = store.labels_of_round(round, ("sample_key", "side", "poses", "betas"))
    row = {k: i for i, k in enumerate(true["key"].tolist())}
    pick = np.array([str(k) in row and str(s) in sides for k, s in zip(labels["sample_key"], labels["side"])], bool)
    if not pick.any():
        return float("nan")
    t_rows = np.array([row[str(k)] for k in labels["sample_key"][pick]], np.int64)
    flip = torch.from_numpy(np.array([str(s) == "flip" for s in labels["side"][pick]]))
    errors = []
    with torch.no_grad():
        for a in range(0, len(t_rows), chunk):
            rows, f = t_rows[a : a + chunk], flip[a : a + chunk]
            verts, _ = smpl_forward(smpl, torch.from_numpy(true["pose"][rows]), torch.from_numpy(true["betas"][rows]))
            kp_true = regressor(verts)
            mirrored = kp_true[:, FLIP_PERMUTATION] * kp_true.new_tensor([-1.0, 1.0, 1.0])
            kp_true = torch.where(f[:, None, None], mirrored, kp_true)
            q = torch.from_numpy(labels["poses"][pick][a : a + chunk])
            b = torch.from_numpy(labels["betas"][pick][a : a + chunk])
            kp = regressor(skel(q, b).skin_verts)
            rel = lambda x: x - x[:, 39:40]  # noqa: E731
            kp, kp_true = rel(kp), rel(kp_true)
            if aligned:
                rot, shift, scale = roma.rigid_points_registration(kp.double(), kp_true.double(), compute_scaling=True)
                kp = (scale[:, None, None] * kp.double() @ rot.transpose(1, 2) + shift[:, None]).float()
            errors.append((kp - kp_true).norm(dim=-1).mean(-1))
    return float(torch.cat(errors).double().mean())


def _read_truth(paths) -> dict[str, np.ndarray]:
    """key, pose (N,72) (camera-frame global orientation), betas (N,10) of the true people in truth.npz files."""
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            parts.append({"key": data["key"], "pose": data["pose"].astype(np.float32), "betas": data["betas"].astype(np.float32)})
    return {name: np.concatenate([p[name] for p in parts]) for name in ("key", "pose", "betas")}


def _mm(value: float) -> str:
    return f"{value:.1f}" if np.isfinite(value) else "–"


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
