"""Human-readable views: `inspect_path` (a shard or release as markdown) and `lineage` of a label."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .labelstore import LabelStore, open_store
from .pyd import load_pyd
from .release import MANIFEST, PVE_VALID, list_rounds, resolve_round
from .tario import TarDamage, iter_tar

_IMAGE_EXTS = ("jpg", "jpeg", "png")


class _FieldStats:
    """Accumulates per-field shapes/dtypes and numeric values across persons."""

    def __init__(self) -> None:
        self.kinds: dict[str, Counter] = {}
        self.values: dict[str, list[np.ndarray]] = {}
        self.count: Counter = Counter()

    def add(self, person: dict) -> None:
        for k, v in person.items():
            self.count[k] += 1
            if isinstance(v, np.ndarray):
                desc = f"ndarray {v.dtype} {tuple(v.shape)}"
                if v.dtype.kind in "fiub":
                    self.values.setdefault(k, []).append(v.astype(np.float64, copy=False).reshape(-1))
            elif isinstance(v, (bool, np.bool_)):
                desc = "bool"
                self.values.setdefault(k, []).append(np.array([float(v)]))
            elif isinstance(v, (int, float, np.integer, np.floating)):
                desc = type(v).__name__
                self.values.setdefault(k, []).append(np.array([float(v)]))
            else:
                desc = type(v).__name__
            self.kinds.setdefault(k, Counter())[desc] += 1

    def table(self) -> list[str]:
        lines = ["| field | type / shape | present | min | mean | max | NaN |", "|---|---|---|---|---|---|---|"]
        for k in self.kinds:
            kinds = ", ".join(f"{d}" + (f" ×{n}" if len(self.kinds[k]) > 1 else "") for d, n in self.kinds[k].most_common())
            vals = self.values.get(k)
            if vals:
                a = np.concatenate(vals)
                fin = a[np.isfinite(a)]
                n_nan = int(np.isnan(a).sum())
                mn, me, mx = (f"{fin.min():.4g}", f"{fin.mean():.4g}", f"{fin.max():.4g}") if fin.size else ("–", "–", "–")
            else:
                mn = me = mx = "–"
                n_nan = "–"
            lines.append(f"| {k} | {kinds} | {self.count[k]} | {mn} | {me} | {mx} | {n_nan} |")
        return lines


def _scan_tars(paths: list[Path], max_samples: int | None, n_examples: int) -> dict:
    stats = _FieldStats()
    n_samples = n_persons = 0
    per_image: Counter = Counter()
    exts: Counter = Counter()
    damage: list[str] = []
    examples: list[str] = []
    pve: list[float] = []
    rounds: Counter = Counter()
    releases: Counter = Counter()
    unlabelled = 0
    truncated = False
    for path in paths:
        for item in iter_tar(path):
            if isinstance(item, TarDamage):
                damage.append(f"{path.name}: {item.key or '*'}: {item.reason}")
                continue
            if max_samples is not None and n_samples >= max_samples:
                truncated = True
                break
            n_samples += 1
            ext = next((e for e in _IMAGE_EXTS if e in item.members), "")
            exts[ext or "(none)"] += 1
            try:
                persons = load_pyd(item.members["data.pyd"])
                if not isinstance(persons, list):
                    raise TypeError(f"data.pyd is a {type(persons).__name__}, not a list")
            except Exception as exc:
                damage.append(f"{path.name}: {item.key}: {exc}")
                continue
            per_image[len(persons)] += 1
            n_persons += len(persons)
            for p in persons:
                if not isinstance(p, dict):
                    continue
                stats.add(p)
                if "orig_pve_max" in p:
                    pve.append(float(p["orig_pve_max"]))
                if "round" in p:
                    rounds[p["round"]] += 1
                if "release" in p:
                    releases[p["release"]] += 1
                if p.get("orig_label_id", 0) < 0 and p.get("flip_label_id", 0) < 0:
                    unlabelled += 1
            if len(examples) < n_examples:
                ex = [f"- `{item.key}`: {ext or 'no image'} ({len(item.members.get(ext, b''))} bytes), {len(persons)} person(s)"]
                for i, p in enumerate(persons[:4]):
                    if not isinstance(p, dict):
                        continue
                    kp = p.get("keypoints_2d")
                    n_vis = int((np.asarray(kp)[:, 2] > 0).sum()) if isinstance(kp, np.ndarray) and kp.ndim == 2 else "?"
                    extra = ""
                    if "orig_label_id" in p:
                        extra = f", orig label {p['orig_label_id']} (pve_max {p['orig_pve_max'] * 1000:.1f} mm), flip label {p['flip_label_id']}"
                    elif "has_body_pose" in p:
                        extra = f", has_body_pose {p['has_body_pose']}"
                    ex.append(f"  - person {i}: {n_vis} visible 2D keypoints{extra}")
                examples.append("\n".join(ex))
        if truncated:
            break
    return dict(
        stats=stats, n_samples=n_samples, n_persons=n_persons, per_image=per_image, exts=exts, damage=damage,
        examples=examples, pve=np.asarray(pve), rounds=rounds, releases=releases, unlabelled=unlabelled, truncated=truncated,
    )  # fmt: skip


def _kind(stats: _FieldStats) -> str:
    keys = set(stats.kinds)
    if "orig_label_id" in keys:
        return "skelpgt SKEL shard (HSMR v1 compatible)"
    if "orig_poses" in keys:
        return "HSMR v1 shard"
    if "body_pose" in keys or "keypoints_2d" in keys:
        return "HMR2.0-style SMPL shard"
    return "unknown"


def _scan_markdown(scan: dict) -> list[str]:
    lines = [
        f"- kind: {_kind(scan['stats'])}",
        f"- samples (images): {scan['n_samples']}{' (stopped at max_samples)' if scan['truncated'] else ''}",
        f"- persons: {scan['n_persons']}",
        f"- persons per image: {dict(sorted(scan['per_image'].items()))}",
        f"- image types: {dict(scan['exts'])}",
    ]
    pve = scan["pve"]
    if pve.size:
        valid = np.isfinite(pve) & (pve < PVE_VALID)
        lines.append(f"- orig labels valid for HSMR (pve_max < {PVE_VALID} m): {int(valid.sum())}/{pve.size}; unlabelled persons: {scan['unlabelled']}")
        lines.append(f"- rounds: {dict(scan['rounds'])}; releases: {dict(scan['releases'])}")
    if scan["damage"]:
        lines += ["", f"**{len(scan['damage'])} damaged item(s):**", ""] + [f"- {d}" for d in scan["damage"][:20]]
    lines += ["", "## Fields", ""] + scan["stats"].table()
    if scan["examples"]:
        lines += ["", "## Examples", ""] + scan["examples"]
    return lines


def inspect_path(path: str | os.PathLike, *, round: int | None = None, max_samples: int | None = 20000, n_examples: int = 3) -> str:
    """Shard (.tar), release round or release folder -> markdown summary: counts, field stats, a few samples."""
    p = Path(path)
    if p.is_file():
        scan = _scan_tars([p], max_samples, n_examples)
        return "\n".join([f"# {p.name}", "", f"- size: {p.stat().st_size} bytes", *_scan_markdown(scan), ""])
    rdir = resolve_round(p, round)
    m = json.loads((rdir / MANIFEST).read_text(encoding="utf-8"))
    c = m["counts"]
    lines = [
        f"# release {m['release']} round {m['round']}",
        "",
        f"- folder: {rdir}",
        f"- rounds available: {list_rounds(rdir.parent)}" if (rdir.parent / f"round-{m['round']}").exists() else "",
        f"- parent round: {m['parent_round']}",
        f"- code version: {m['code_version'] or '–'}; config digest: {m['config_digest'][:16]}…",
        f"- label digest: {m['label_digest'][:16]}…",
        "",
        "| in | samples | persons | labelled | unlabelled | quarantined |",
        "|---|---|---|---|---|---|",
        f"| {c['in']} | {c['samples']} | {c['persons']} | {c['labelled']} | {c['unlabelled']} | {c['quarantined']} |",
        "",
    ]
    if m["quarantine"]["by_kind"]:
        lines += [f"- quarantine by kind: {m['quarantine']['by_kind']}", ""]
    lines += ["## Shards", "", "| shard | samples | persons | labelled | bytes | sha256 |", "|---|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['samples']} | {s['persons']} | {s['labelled']} | {s['bytes']} | {s['sha256'][:12]}… |" for s in m["shards"]]
    scan = _scan_tars([rdir / s["name"] for s in m["shards"] if (rdir / s["name"]).is_file()], max_samples, n_examples)
    lines += ["", "## Content", "", *_scan_markdown(scan), ""]
    return "\n".join(line for line in lines if line is not None)


# ---------------------------------------------------------------------------- lineage
def _split_side_suffix(key: str) -> tuple[str, str | None]:
    for side in ("orig", "flip"):
        if key.endswith("_" + side):
            return key[: -len(side) - 1], side
    return key, None


def lineage(store: Any, sample_key: str, side: str | None = None) -> list[dict]:
    """Label store (LabelStore, labels.h5 path or workdir) + per-person key (optionally `_orig`/`_flip`) -> versions, oldest first."""
    key, suffix_side = _split_side_suffix(sample_key)
    side = side or suffix_side
    if isinstance(store, LabelStore):
        return store.history(key, side, with_current=True)
    with open_store(store) as st:
        return st.history(key, side, with_current=True)


def _fmt(v: float, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v * scale:.{digits}f}"


def format_lineage(rows: list[dict], sample_key: str = "") -> str:
    """Lineage rows -> markdown: one table row per version plus the parent chain of each side."""
    title = f"# lineage of {sample_key}" if sample_key else "# lineage"
    if not rows:
        return f"{title}\n\nno labels found\n"
    lines = [
        title,
        "",
        "| label | side | round | producer | parent | accepted | pve_mean mm | pve_max mm | kp2d_err | limit viol. | current in rounds | config | source | created |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        parent = "–" if r["parent_label_id"] < 0 else str(r["parent_label_id"])
        cur = ",".join(map(str, r.get("current_in_rounds", []))) or "–"
        lines.append(
            f"| {r['label_id']} | {r['side']} | {r['round']} | {r['producer']} | {parent} | {'yes' if r['accepted'] else 'no'} "
            f"| {_fmt(r['pve_mean'], 1000)} | {_fmt(r['pve_max'], 1000)} | {_fmt(r['kp2d_err'], 1, 5)} | {_fmt(r['limit_violation'], 1, 4)} "
            f"| {cur} | {(r['config_digest'] or '–')[:12]} | {(r.get('source_digest') or '–')[:12]} | {r['created_at']} |"
        )
    by_id = {r["label_id"]: r for r in rows}
    lines += ["", "## Chains", ""]
    for side in ("orig", "flip"):
        side_rows = [r for r in rows if r["side"] == side]
        if not side_rows:
            continue
        # follow parents from the newest version back to its source
        chain, cur, seen = [], side_rows[-1], set()
        while cur is not None and cur["label_id"] not in seen:
            seen.add(cur["label_id"])
            chain.append(f"#{cur['label_id']} ({cur['producer']}, round {cur['round']}{'' if cur['accepted'] else ', rejected'})")
            cur = by_id.get(cur["parent_label_id"])
        lines.append(f"- {side}: " + " ← ".join(chain))
    return "\n".join(lines) + "\n"
