"""Which released labels HSMR's training loader would treat as invalid, and why.

HSMR's loader (hsmr-pipeline.md §2.1, stages 8 and 10) trusts a label side (orig or flip) only
when its `pve_max` is finite and below 0.06 m (pose and β then supervised), and drops the β
supervision of a trusted label whose max|β| exceeds 3 (its β is regressed towards 0). Each
labelled side is counted under the first rule it fails.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np


PVE_MAX_VALID = 0.06  # m: stage 8, `pve_max < 0.06`
BETA_VALID = 3.0  # stage 10: `max|β| > 3` → has_betas = False
REASONS = ("pve_max_nan", "pve_max_ge_0.06m", "abs_beta_gt_3")


def invalid_reason(pve_max: float, betas: np.ndarray) -> str:
    """One label side → '' if HSMR's loader keeps it whole, else the first reason (REASONS) it is (partly) dropped."""
    if not np.isfinite(pve_max):
        return REASONS[0]
    if pve_max >= PVE_MAX_VALID:
        return REASONS[1]
    if np.abs(np.asarray(betas, np.float64)).max(initial=0.0) > BETA_VALID:
        return REASONS[2]
    return ""


def count_invalid(persons: Iterable[dict], counts: Counter) -> None:
    """Add the labelled sides of HSMR-v1 person dicts to `counts`: 'labels' and one key per reason."""
    for p in persons:
        for side in ("orig", "flip"):
            if int(p[f"{side}_label_id"]) < 0:
                continue
            counts["labels"] += 1
            reason = invalid_reason(float(p[f"{side}_pve_max"]), p[f"{side}_betas"])
            if reason:
                counts[reason] += 1


def summary(per_shard: Iterable[dict]) -> dict:
    """Per-shard counts → the manifest's `hsmr_invalid` entry: labels, invalid, by_reason (every reason listed), thresholds."""
    total: Counter = Counter()
    for c in per_shard:
        total.update(c)
    by_reason = {r: int(total[r]) for r in REASONS}
    return {
        "labels": int(total["labels"]),
        "invalid": sum(by_reason.values()),
        "by_reason": by_reason,
        "pve_max_valid_m": PVE_MAX_VALID,
        "max_abs_beta_valid": BETA_VALID,
    }
