"""Round-by-round views of a release: what each round changed, and which labels differ between two.

Where the truth is known (a synthetic dataset), each round's labels are also measured against it.
The truth file is found from the release manifest's `config.sources` (the source shard files): a
synthetic dataset writes `<out>/shards/*.tar`, `<out>/truth.npz` and, last, `<out>/dataset.json`,
so for each source the folder holding it and the folder above are searched for a `truth.npz` with
a `dataset.json` beside it. The truth is used only if every source has one (else: unknown, '–').
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .labelstore import LabelStore
from .release import list_rounds, read_manifest, round_dir


def rounds_table(workdir: str | os.PathLike, release: str, models_dir: str | os.PathLike | None = None) -> str:
    """Markdown table: per round, counts, labels changed/kept/rejected, the current labels' mean
    kp2d_err (normalised crop units) and limit violation (°), and their MPJPE and PA-MPJPE vs truth (mm) where known."""
    workdir = Path(workdir)
    lines = [
        f"# rounds of `{release}`",
        "",
        "| round | parent | persons | labelled | quarantined | changed | kept | rejected | mean kp2d_err | mean limit violation ° | MPJPE vs truth (mm) | PA-MPJPE vs truth (mm) | label digest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rounds = list_rounds(workdir / "releases" / release)
    if not rounds:
        raise FileNotFoundError(f"{workdir / 'releases' / release}: no release {release!r} with a complete round here (check --release and the workdir)")
    truth = None
    for r in rounds:
        manifest = read_manifest(round_dir(workdir, release, r))
        with LabelStore(workdir / "labels.h5") as store:
            made = store.rows_of_round(r, ("producer", "accepted"))
            current = store.labels_of_round(r, ("kp2d_err", "limit_violation"))
        refined = made["producer"].astype(str) == "skelify"
        changed, rejected = int((refined & made["accepted"]).sum()), int((refined & ~made["accepted"]).sum())
        if truth is None:
            truth = find_truth(manifest["config"].get("sources", [])) or []
        mpjpe, pa = (label_error_vs_truth(workdir, r, truth, models_dir, aligned=a) * 1000 if truth else float("nan") for a in (False, True))
        c = manifest["counts"]
        lines.append(
            f"| {r} | {manifest['parent_round'] if manifest['parent_round'] is not None else '–'} | {c['persons']} | {c['labelled']} | "
            f"{c['quarantined']} | {changed} | {len(current['kp2d_err']) - changed} | {rejected} | {_mean(current['kp2d_err']):.4f} | "
            f"{_mean(current['limit_violation']):.2f} | {_mm(mpjpe)} | {_mm(pa)} | `{manifest['label_digest'][:12]}` |"
        )
    return "\n".join(lines)


def dataset_folders(source: str | os.PathLike) -> list[Path]:
    """Folders where the synthetic dataset holding `source` (a shard file or folder) would keep its dataset.json, nearest first."""
    here = Path(source).resolve()
    return [here.parent, here.parent.parent] if here.is_file() or here.suffix else [here, here.parent]


def dataset_meta(source: str | os.PathLike) -> Path | None:
    """dataset.json of the synthetic dataset holding `source` (module docstring), or None."""
    return next((d / "dataset.json" for d in dataset_folders(source) if (d / "dataset.json").is_file()), None)


def find_truth(sources: list[str]) -> list[Path] | None:
    """truth.npz files of the synthetic datasets holding `sources` (module docstring); None if any source has none."""
    found: list[Path] = []
    for source in sources:
        folders = dataset_folders(source)
        hit = next((d / "truth.npz" for d in folders if (d / "truth.npz").is_file() and (d / "dataset.json").is_file()), None)
        if hit is None:
            return None
        if hit not in found:
            found.append(hit)
    return found or None


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
    from skelpgt.fitting.body import load_body
    from skelpgt.fitting.keypoints import FLIP_PERMUTATION
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.fitting.smpl import load_smpl, smpl_forward

    models = ensure_models_dir(models_dir)
    body, smpl = load_body(models), load_smpl(models, "neutral")
    regressor, skel = body.keypoints, body.skel
    true = _read_truth([truth] if isinstance(truth, (str, os.PathLike)) else truth)
    with LabelStore(Path(workdir) / "labels.h5") as store:
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
                import roma

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


def diff_rounds(workdir: str | os.PathLike, round_a: int, round_b: int) -> list[tuple[str, str, int, int]]:
    """(person key, side, label id in a, label id in b) for every label that differs between rounds; unknown round → KeyError."""
    with LabelStore(Path(workdir) / "labels.h5") as store:
        known = store.rounds()
        for r in (round_a, round_b):
            if r not in known:
                raise KeyError(f"{Path(workdir) / 'labels.h5'}: no round {r} (rounds: {known or 'none'})")
        a, b = store.current(round_a), store.current(round_b)
    ids_a = {(str(k), str(s)): int(i) for k, s, i in zip(a["sample_key"], a["side"], a["label_id"])}
    out = []
    for k, s, i in zip(b["sample_key"], b["side"], b["label_id"]):
        old = ids_a.get((str(k), str(s)), -1)
        if old != int(i):
            out.append((str(k), str(s), old, int(i)))
    return out


def _mm(value: float) -> str:
    return f"{value:.1f}" if np.isfinite(value) else "–"


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
