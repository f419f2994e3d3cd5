"""A refinement round: round-N labels → SKELify candidates → accept the better → round N+1 release.

For every person side, SKELify starts from the current label (and from the regressor's prediction
when one is given); each candidate and the current label are scored by the same function in the
same unit (`skelpgt.fitting.skelify.acceptance_score`: 2D error in normalised crop units plus
limit and shape priors). The best candidate replaces the label only if its score is strictly
lower. Every candidate's best version is recorded (producer 'skelify', parent = the label it
challenged, accepted true/false), so the store keeps the full history; round N is never touched.
The flip side is refined on the mirrored keypoints, so flip labels stay independent fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skelpgt.fitting.camera import normalise_keypoints
from skelpgt.fitting.keypoints import flip_keypoints_normalised
from skelpgt.fitting.skelify import Skelify

from .labelstore import LabelStore
from .pseudo_gt import SIDES, code_version, digest_of, release_samples
from .quarantine import read_quarantine
from .readers import read_source
from .records import SkelLabel
from .release import QUARANTINE, read_manifest, resolve_round, write_release


@dataclass
class RoundReport:
    """What a round changed: counts and mean fit quality before/after (normalised crop units, °)."""

    round: int
    changed: int
    kept: int
    skipped: int
    kp2d_err_before: float
    kp2d_err_after: float
    violation_before: float
    violation_after: float
    manifest: dict


def refine_round(
    workdir: str | os.PathLike,
    release: str,
    from_round: int,
    skelify: Skelify,
    predictions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    checkpoint_digest: str = "",
    batch_size: int = 64,
) -> RoundReport:
    """Refine release `release` round `from_round` into round `from_round + 1` (store + release)."""
    workdir = Path(workdir)
    folder = resolve_round(workdir / "releases" / release, from_round)
    manifest = read_manifest(folder)
    sources = manifest["config"]["sources"]
    to_round = from_round + 1
    config = {"skelify": vars(skelify.config), "checkpoint_digest": checkpoint_digest, "from_round": from_round}
    config_digest = digest_of(config)
    with LabelStore(workdir / "labels.h5", "r") as store:
        labels = store.skel_labels(from_round)
    people = {r.key: r for r in read_source(sources) if r.key in labels}
    keys = sorted(people)
    new_labels = {key: list(labels[key]) for key in keys}
    totals = {"changed": 0, "kept": 0, "skipped": 0, "before": [], "after": [], "vb": [], "va": []}
    with LabelStore(workdir / "labels.h5", "a") as store:
        for side_index, side in enumerate(SIDES):
            for start in range(0, len(keys), batch_size):  # fixed batches: reruns see the same numbers
                chunk = [k for k in keys[start : start + batch_size] if labels[k][side_index] is not None]
                if chunk:
                    _refine_chunk(store, chunk, side, side_index, people, labels, predictions, skelify, to_round, config_digest, checkpoint_digest, new_labels, totals)
        store.carry_forward(from_round, to_round)  # unlabelled or skipped persons keep their label
    quarantine = read_quarantine(folder / QUARANTINE)
    out_manifest = write_release(
        workdir, release, to_round,
        release_samples(sources, {k: tuple(v) for k, v in new_labels.items()}, round=to_round, release=release, skip={e.key for e in quarantine}),
        quarantine=quarantine, parent_round=from_round, config={**manifest["config"], "refine": config},
        code_version=code_version(), samples_per_shard=max(1, manifest["counts"]["samples"] // max(1, len(manifest["shards"]))),
        overwrite=True,
    )  # fmt: skip
    mean = lambda a: float(np.nanmean(a)) if len(a) else float("nan")  # noqa: E731
    return RoundReport(
        to_round, totals["changed"], totals["kept"], totals["skipped"],
        mean(totals["before"]), mean(totals["after"]), mean(totals["vb"]), mean(totals["va"]), out_manifest,
    )  # fmt: skip


def _refine_chunk(store, chunk, side, side_index, people, labels, predictions, skelify, to_round, config_digest, checkpoint_digest, new_labels, totals):
    """SKELify one batch of one side, choose per person, record every decision."""
    recs = [people[k] for k in chunk]
    kp = normalise_keypoints(*(torch.from_numpy(np.stack([getattr(r, f) for r in recs])) for f in ("keypoints_2d", "center", "scale")))
    if side == "flip":
        kp = flip_keypoints_normalised(kp)
    current = [labels[k][side_index] for k in chunk]
    poses = torch.from_numpy(np.stack([c.poses for c in current]))
    betas = torch.from_numpy(np.stack([c.betas for c in current]))
    before = skelify.evaluate(kp, poses, betas)
    candidates = [skelify.fit(kp, poses, betas)]
    if predictions:
        pred = [predictions.get(k, {}).get(side) for k in chunk]
        if all(p is not None for p in pred):
            candidates.append(skelify.fit(kp, torch.from_numpy(np.stack([p[0] for p in pred])), torch.from_numpy(np.stack([p[1] for p in pred]))))
    scores = torch.stack([torch.nan_to_num(c.score, nan=float("inf")) for c in candidates])
    best_index = scores.argmin(0)
    pick = lambda field: torch.stack([getattr(c, field) for c in candidates])[best_index, torch.arange(len(chunk))]  # noqa: E731
    best = {f: pick(f) for f in ("poses", "betas", "kp2d_err", "limit_violation", "score")}
    accept = best["score"] < torch.nan_to_num(before.score, nan=float("inf"))
    ids = store.append(
        {
            "sample_key": chunk, "side": side, "round": to_round, "producer": "skelify",
            "parent_label_id": [c.label_id for c in current], "poses": best["poses"].numpy(), "betas": best["betas"].numpy(),
            "trans": np.stack([c.trans for c in current]), "kp2d_err": best["kp2d_err"].numpy(),
            "limit_violation": best["limit_violation"].numpy(), "accepted": accept.numpy(),
            "config_digest": config_digest, "code_version": code_version(), "checkpoint_digest": checkpoint_digest,
        }
    )  # fmt: skip
    store.set_current(to_round, [int(i) if a else c.label_id for i, a, c in zip(ids.tolist(), accept.tolist(), current)])
    for j, key in enumerate(chunk):
        skipped = not np.isfinite(float(best["score"][j]))
        totals["skipped"] += skipped
        totals["changed" if bool(accept[j]) else "kept"] += not skipped
        totals["before"].append(float(before.kp2d_err[j]))
        totals["vb"].append(float(before.limit_violation[j]))
        chosen = accept[j]
        totals["after"].append(float(best["kp2d_err"][j] if chosen else before.kp2d_err[j]))
        totals["va"].append(float(best["limit_violation"][j] if chosen else before.limit_violation[j]))
        if chosen:
            old = current[j]
            new_labels[key][side_index] = SkelLabel(
                label_id=int(ids[j]), poses=best["poses"][j].numpy(), betas=best["betas"][j].numpy(), trans=old.trans,
                pve_mean=old.pve_mean, pve_max=old.pve_max, kp2d_err=float(best["kp2d_err"][j]),
            )  # fmt: skip
