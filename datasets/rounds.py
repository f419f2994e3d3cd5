"""Where a release's synthetic truth lives, and which labels differ between two rounds.

The truth file is found from the release manifest's `config.sources` (the source shard files): a
synthetic dataset writes `<out>/shards/*.tar`, `<out>/truth.npz` and, last, `<out>/dataset.json`,
so for each source the folder holding it and the folder above are searched for a `truth.npz` with
a `dataset.json` beside it. The truth is used only if every source has one (else: unknown, '–').
"""

from __future__ import annotations

import os
from pathlib import Path

from .labelstore import LabelStore
from .workdir import Workdir


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


def diff_rounds(workdir: str | os.PathLike, round_a: int, round_b: int) -> list[tuple[str, str, int, int]]:
    """(person key, side, label id in a, label id in b) for every label that differs between rounds; unknown round → KeyError."""
    store_path = Workdir.of(workdir).labels
    with LabelStore(store_path) as store:
        known = store.rounds()
        for r in (round_a, round_b):
            if r not in known:
                raise KeyError(f"{store_path}: no round {r} (rounds: {known or 'none'})")
        a, b = store.current(round_a), store.current(round_b)
    ids_a = {(str(k), str(s)): int(i) for k, s, i in zip(a["sample_key"], a["side"], a["label_id"])}
    out = []
    for k, s, i in zip(b["sample_key"], b["side"], b["label_id"]):
        old = ids_a.get((str(k), str(s)), -1)
        if old != int(i):
            out.append((str(k), str(s), old, int(i)))
    return out
