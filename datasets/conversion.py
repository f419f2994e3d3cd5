"""Round-0 conversions: one source shard's SKEL labels (orig + flip), as kept between build steps and recorded.

A `ShardConversion` is saved as one npz in the work folder (`Workdir.conversion`, atomic, with the
digests it was made from, so a rerun with the same input, config and code reuses it).
`record_round0` appends its labels to the label store as round 0; `write_release_shard` writes the
source shard's images with those labels as one release shard.

Counts add up per shard: persons in = labelled + unlabelled (no SMPL in the source) + quarantined
(unreadable or failed conversion; those leave the shard with their reason in quarantine.jsonl).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .atomic import atomic_write_bytes
from .labelstore import LabelStore
from .quarantine import QuarantineEntry
from .records import SkelLabel, split_person_key
from .samples import release_samples
from .shards import ShardInfo, ShardWriter

SIDES = ("orig", "flip")
LABEL_FIELDS = ("poses", "betas", "trans", "pve_mean", "pve_max", "kp2d_err", "limit_violation")


@dataclass
class ShardConversion:
    """Labels of one source shard: person keys, per-side arrays, quarantine, counts and timing."""

    source: str
    source_sha256: str
    config_digest: str
    code_version: str
    keys: list[str]  # converted persons, in source order
    labels: dict[str, dict[str, np.ndarray]]  # side -> field -> (N, …) float32
    quarantine: list[QuarantineEntry]
    n_in: int  # persons in the source shard (read + quarantined by the reader)
    n_unlabelled: int  # persons without SMPL parameters, carried through unlabelled
    seconds: float
    person_keys: list[str] = field(default_factory=list)  # every person the reader accepted (labelled or not)

    @property
    def n_labelled(self) -> int:
        return len(self.keys)


def save_conversion(conv: ShardConversion, path: str | os.PathLike) -> None:
    """Write a ShardConversion as one npz (atomic)."""
    meta = {k: getattr(conv, k) for k in ("source", "source_sha256", "config_digest", "code_version", "n_in", "n_unlabelled", "seconds")}
    meta["quarantine"] = [asdict(e) for e in conv.quarantine]
    arrays = {f"{side}_{f}": v for side, fields in conv.labels.items() for f, v in fields.items()}
    arrays["keys"] = np.array(conv.keys, dtype=str)
    arrays["person_keys"] = np.array(conv.person_keys, dtype=str)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_conversion(path: str | os.PathLike) -> ShardConversion | None:
    """Read a saved ShardConversion; None if absent or unreadable (it is then recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            keys = [str(k) for k in z["keys"]]
            person_keys = [str(k) for k in z["person_keys"]]
            labels = {side: {f: z[f"{side}_{f}"] for f in LABEL_FIELDS} for side in SIDES}
            for side in SIDES:
                if f"{side}_config_digest" in z.files:
                    labels[side]["config_digest"] = z[f"{side}_config_digest"]
    except (OSError, ValueError, KeyError):  # absent, damaged or from an older version: recomputed
        return None
    quarantine = [QuarantineEntry(**d) for d in meta.pop("quarantine")]
    return ShardConversion(keys=keys, labels=labels, quarantine=quarantine, person_keys=person_keys, **meta)


def drop_duplicate_images(conversions: list[ShardConversion]) -> list[ShardConversion]:
    """Quarantine every person of an image key already read from an earlier source (in order); the rest unchanged.

    Two sources holding the same image key would otherwise release its persons twice, sharing
    label ids (the label store keys a label by its person key).
    """
    first_seen: dict[str, str] = {}
    out = []
    for conv in conversions:
        images = {split_person_key(k)[0] for k in conv.person_keys}
        dup = {im: first_seen[im] for im in images if im in first_seen and first_seen[im] != conv.source}
        for im in images:
            first_seen.setdefault(im, conv.source)
        if not dup:
            out.append(conv)
            continue
        is_dup = lambda k: split_person_key(k)[0] in dup  # noqa: E731
        keep = [i for i, k in enumerate(conv.keys) if not is_dup(k)]
        dropped = [k for k in conv.person_keys if is_dup(k)]
        entries = [QuarantineEntry(k, conv.source, "key", f"duplicate: image {split_person_key(k)[0]} already read from {dup[split_person_key(k)[0]]}") for k in dropped]
        n_labelled_dropped = len(conv.keys) - len(keep)
        out.append(replace(
            conv, keys=[conv.keys[i] for i in keep], person_keys=[k for k in conv.person_keys if not is_dup(k)],
            labels={s: {f: v[keep] for f, v in fields.items()} for s, fields in conv.labels.items()},
            quarantine=conv.quarantine + entries, n_unlabelled=conv.n_unlabelled - (len(dropped) - n_labelled_dropped),
        ))  # fmt: skip
    return out


def record_round0(store_path: str | os.PathLike, conversions: list[ShardConversion]) -> dict[str, dict[str, int]]:
    """Append round-0 labels (idempotent) and make them current; → {person key: {side: label id}}."""
    ids: dict[str, dict[str, int]] = {}
    with LabelStore(store_path, "a") as store:
        for conv in conversions:  # one batch per shard side: a crash loses at most that batch
            for side in SIDES:
                if not conv.keys:
                    continue
                lab = conv.labels[side]
                rows = {
                    "sample_key": conv.keys, "side": side, "round": 0, "producer": "convert",
                    "poses": lab["poses"], "betas": lab["betas"], "trans": lab["trans"],
                    "pve_mean": lab["pve_mean"], "pve_max": lab["pve_max"], "kp2d_err": lab["kp2d_err"],
                    "limit_violation": lab["limit_violation"], "config_digest": lab.get("config_digest", conv.config_digest),
                    "code_version": conv.code_version, "source_digest": conv.source_sha256,
                }  # fmt: skip
                label_ids = store.append(rows)
                store.set_current(0, label_ids)
                for key, label_id in zip(conv.keys, label_ids.tolist()):
                    ids.setdefault(key, {})[side] = int(label_id)
    return ids


def write_release_shard(
    conv: ShardConversion, label_ids: dict[str, dict[str, int]], stage_dir: str | os.PathLike, *, index: int, release: str
) -> ShardInfo | None:
    """Output shard `index` in `stage_dir`: the source shard's images with round-0 SKEL labels; None if none is left."""
    labels = {key: tuple(_label(conv, side, i, label_ids[key][side]) for side in SIDES) for i, key in enumerate(conv.keys)}
    skip = {e.key for e in conv.quarantine}
    with ShardWriter(stage_dir, prefix=release, samples_per_shard=1 << 30, start_index=index) as writer:
        for sample in release_samples([conv.source], labels, round=0, release=release, skip=skip):
            writer.write(sample)
    # an empty, unreadable or all-rejected source leaves no shard: its persons are all in the quarantine
    return writer.infos[0] if writer.infos else None


def _label(conv: ShardConversion, side: str, i: int, label_id: int) -> SkelLabel:
    lab = conv.labels[side]
    return SkelLabel(
        label_id=label_id, poses=lab["poses"][i], betas=lab["betas"][i], trans=lab["trans"][i],
        pve_mean=float(lab["pve_mean"][i]), pve_max=float(lab["pve_max"][i]), kp2d_err=float(lab["kp2d_err"][i]),
    )  # fmt: skip


def summarize(conversions: list[ShardConversion]) -> dict:
    """Counts and fit-quality percentiles (mm) over a set of shard conversions."""
    pve = np.concatenate([c.labels["orig"]["pve_mean"] for c in conversions]) * 1000
    pve_max = np.concatenate([c.labels["orig"]["pve_max"] for c in conversions]) * 1000
    seconds = sum(c.seconds for c in conversions)
    labelled = sum(c.n_labelled for c in conversions)
    pct = lambda a, q: float(np.percentile(a, q)) if a.size else float("nan")
    return {
        "shards": len(conversions),
        "persons_in": sum(c.n_in for c in conversions),
        "labelled": labelled,
        "unlabelled": sum(c.n_unlabelled for c in conversions),
        "quarantined": sum(len(c.quarantine) for c in conversions),
        "pve_mean_mm": {q: pct(pve, q) for q in (50, 90, 99)},
        "pve_max_mm": {q: pct(pve_max, q) for q in (50, 90, 99)},
        "fits_per_s": 2 * labelled / seconds if seconds > 0 else float("nan"),
    }
