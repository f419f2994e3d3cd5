"""Round-by-round views of a release: what each round changed, and which labels differ between two."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .labelstore import LabelStore
from .release import list_rounds, read_manifest, round_dir


def rounds_table(workdir: str | os.PathLike, release: str) -> str:
    """Markdown table: per round, counts, changed/kept, and the current labels' mean fit quality."""
    workdir = Path(workdir)
    lines = [
        f"# rounds of `{release}`",
        "",
        "| round | parent | persons | labelled | quarantined | changed | rejected | mean kp2d_err | mean limit violation ° | label digest |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with LabelStore(workdir / "labels.h5") as store:
        for r in list_rounds(workdir / "releases" / release):
            manifest = read_manifest(round_dir(workdir, release, r))
            made = store.rows_of_round(r, ("producer", "accepted"))
            refined = made["producer"].astype(str) == "skelify"
            changed, rejected = int((refined & made["accepted"]).sum()), int((refined & ~made["accepted"]).sum())
            current = store.labels_of_round(r, ("kp2d_err", "limit_violation"))
            c = manifest["counts"]
            lines.append(
                f"| {r} | {manifest['parent_round'] if manifest['parent_round'] is not None else '–'} | {c['persons']} | {c['labelled']} | "
                f"{c['quarantined']} | {changed} | {rejected} | {_mean(current['kp2d_err']):.4f} | {_mean(current['limit_violation']):.2f} | "
                f"`{manifest['label_digest'][:12]}` |"
            )
    return "\n".join(lines)


def diff_rounds(workdir: str | os.PathLike, round_a: int, round_b: int) -> list[tuple[str, str, int, int]]:
    """(person key, side, label id in a, label id in b) for every label that differs between rounds."""
    with LabelStore(Path(workdir) / "labels.h5") as store:
        a, b = store.current(round_a), store.current(round_b)
    ids_a = {(str(k), str(s)): int(i) for k, s, i in zip(a["sample_key"], a["side"], a["label_id"])}
    out = []
    for k, s, i in zip(b["sample_key"], b["side"], b["label_id"]):
        old = ids_a.get((str(k), str(s)), -1)
        if old != int(i):
            out.append((str(k), str(s), old, int(i)))
    return out


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
