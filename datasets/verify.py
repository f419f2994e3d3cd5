"""`verify`: check a release round against its manifest (checksums, counts, label digest) and the label store."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .labelstore import open_store
from .quarantine import Quarantine, read_quarantine
from .workdir import ROUND_NAME
from .release import MANIFEST, QUARANTINE, RELEASE_FORMAT, _combined_label_digest, config_digest, resolve_round
from .shards import ShardInfo, _label_digest_update, iter_shard, person_index_of, sha256_file


@dataclass
class VerifyReport:
    """Outcome of `verify_release`: ok iff no errors; `checked` holds what was counted."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_markdown(self) -> str:
        """Report -> markdown summary (status, counts, every error and warning)."""
        lines = [f"# verify {self.path}", "", f"**{'OK' if self.ok else 'FAILED'}** — {len(self.errors)} error(s), {len(self.warnings)} warning(s)", ""]
        if self.checked:
            lines += ["| check | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(self.checked.items())] + [""]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                lines += [f"## {title}", ""] + [f"- {e}" for e in items] + [""]
        return "\n".join(lines)


def _store_check(
    report: VerifyReport, store_path: str | os.PathLike, ids: np.ndarray, keys: list[str], sides: np.ndarray, arrays: dict[str, np.ndarray], manifest: dict
) -> None:
    """Shard labels (ids, person keys, sides, (N, k) float32 arrays) vs the label store's rows: existence, owner, round, source, values."""
    with open_store(store_path) as st:
        n = len(st)
        missing = (ids < 0) | (ids >= n)
        if missing.any():
            report.errors.append(f"{int(missing.sum())} label id(s) not in the store (e.g. {ids[missing][:5].tolist()}; store has {n} rows)")
        present = ~missing
        if not present.any():
            return
        pid = ids[present]
        cols = st.get(pid, ("label_id", "sample_key", "side", "round", "source_digest", "poses", "betas", "trans"))
    pos = np.searchsorted(cols["label_id"], pid)
    mism_key = [k for k, s, j in zip(np.asarray(keys, dtype=object)[present], sides[present], pos) if cols["sample_key"][j] != k or cols["side"][j] != s]
    if mism_key:
        report.errors.append(f"{len(mism_key)} label id(s) belong to another sample/side in the store (e.g. {mism_key[:3]})")
    later = cols["round"][pos] > int(manifest["round"])
    if later.any():
        report.errors.append(f"{int(later.sum())} label id(s) were made in a round after this release's round {manifest['round']} (e.g. {pid[later][:3].tolist()})")
    # a label made from other source data than this release's (e.g. before the annotations changed)
    known = set(manifest.get("config", {}).get("source_sha256") or [])
    digests = cols["source_digest"][pos].astype(str)
    if known:
        stale = np.array([d != "" and d not in known for d in digests], bool)
        if stale.any():
            report.errors.append(
                f"{int(stale.sum())} label id(s) were made from other source data than this release's sources (e.g. {pid[stale][:3].tolist()})"
            )
        report.checked["label source digests checked"] = int(np.count_nonzero(digests != ""))
    # the shard writer turns a non-finite label into zeros (HSMR would otherwise train on it)
    finite = np.ones(pos.size, bool)
    for name in ("poses", "betas", "trans"):
        finite &= np.isfinite(cols[name][pos]).all(axis=1)
    for name in ("poses", "betas", "trans"):
        expected = np.where(finite[:, None], cols[name][pos], np.float32(0))
        diff = ~np.all(arrays[name][present] == expected, axis=1)
        if diff.any():
            report.errors.append(f"{int(diff.sum())} label(s) differ from the store in {name}")
    report.checked["labels checked against store"] = int(present.sum())


def _check_manifest_fields(rep: VerifyReport, rdir: Path, manifest: dict) -> None:
    """Manifest fields that are not checksums: round, release, parent round, config digest, sources."""
    m = ROUND_NAME.match(rdir.name)
    if m and manifest.get("round") != int(m.group(1)):
        rep.errors.append(f"manifest round {manifest.get('round')!r} but the folder is {rdir.name}")
    if ROUND_NAME.match(rdir.name) and manifest.get("release") != rdir.parent.name:
        rep.errors.append(f"manifest release {manifest.get('release')!r} but the folder is releases/{rdir.parent.name}")
    parent = manifest.get("parent_round")
    if parent is not None and not (isinstance(parent, int) and 0 <= parent < int(manifest.get("round", 0))):
        rep.errors.append(f"manifest parent_round {parent!r} is not an earlier round")
    cfg = manifest.get("config")
    if not isinstance(cfg, dict) or config_digest(cfg) != manifest.get("config_digest"):
        rep.errors.append("manifest config_digest does not match its config")
        return
    sources, digests = cfg.get("sources"), cfg.get("source_sha256")
    if digests is not None and (not isinstance(sources, list) or len(digests) != len(sources)):
        rep.errors.append("manifest config: sources and source_sha256 differ in length")
        return
    for src, want in zip(sources or [], digests or []):
        if not Path(src).is_file():
            rep.warnings.append(f"source {src} not found here: not checked")
        elif sha256_file(src) != want:
            rep.errors.append(f"source {src} changed since this release was built: rebuild it (build-pseudo-gt with overwrite=true)")
    if sources is not None and rep.ok:
        rep.checked["sources"] = len(sources)


def verify_release(path: str | os.PathLike, round: int | None = None, *, store: str | os.PathLike | None = None) -> VerifyReport:
    """Round/release folder (+ optional labels.h5 or workdir) -> VerifyReport; never raises on a bad release."""
    try:
        rdir = resolve_round(path, round)
    except (FileNotFoundError, ValueError) as exc:
        return VerifyReport(str(path), errors=[str(exc)])
    rep = VerifyReport(str(rdir))
    try:
        manifest = json.loads((rdir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep.errors.append(f"manifest.json unreadable: {exc}")
        return rep
    if not isinstance(manifest, dict) or manifest.get("format") != RELEASE_FORMAT:
        rep.errors.append(f"manifest format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {RELEASE_FORMAT!r}")
        return rep
    try:
        _verify_round(rep, rdir, manifest, store)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        rep.errors.append(f"manifest.json malformed: {type(exc).__name__}: {exc}")
    return rep


@dataclass
class _StoreLabels:
    """Labels the shards carry, gathered for the `--store` cross-check: label ids, person keys, sides and arrays."""

    ids: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    sides: list[str] = field(default_factory=list)
    arrays: dict[str, list] = field(default_factory=lambda: {"poses": [], "betas": [], "trans": []})

    def add(self, key: str, persons: list[dict]) -> None:
        """One sample's key + person dicts -> remember every side that has a label (label id >= 0)."""
        for i, person in enumerate(persons):
            for side in ("orig", "flip"):
                lid = int(person[f"{side}_label_id"])
                if lid >= 0:
                    self.ids.append(lid)
                    self.keys.append(f"{key}_{person_index_of(person, i)}")
                    self.sides.append(side)
                    for name in self.arrays:
                        self.arrays[name].append(person[f"{side}_{name}"])


def _check_listing(rep: VerifyReport, rdir: Path, manifest: dict) -> None:
    """Shards on disk that the manifest does not list (errors) and leftover *.tmp files (warnings)."""
    listed = {s["name"] for s in manifest["shards"]}
    on_disk = {p.name for p in rdir.glob("*.tar")}
    for extra in sorted(on_disk - listed):
        rep.errors.append(f"{extra}: shard on disk but not in the manifest")
    for tmp in sorted(p.name for p in rdir.glob("*.tmp")):
        rep.warnings.append(f"{tmp}: leftover temporary file")


def _off_round_persons(name: str, key: str, persons: list, manifest: dict) -> list[str]:
    """One sample's persons -> a line for each whose round/release differs from the manifest's."""
    return [
        f"{name}: {key}: person says round {person.get('round')!r} of {person.get('release')!r}"
        for person in persons
        if isinstance(person, dict) and (person.get("round"), person.get("release")) != (manifest.get("round"), manifest.get("release"))
    ]


def _scan_shard(
    rep: VerifyReport, path: Path, manifest: dict, labels: _StoreLabels | None, bad_person: list[str]
) -> tuple[int, int, int, str]:
    """Read one shard -> (samples, persons, labelled, label digest hex); damage and missing label fields go to `rep`."""
    name = path.name
    h = hashlib.sha256()
    q = Quarantine()
    n_s = n_p = n_l = 0
    for sample in iter_shard(path, q):
        n_s += 1
        n_p += len(sample.persons)
        bad_person += _off_round_persons(name, sample.key, sample.persons, manifest)
        try:
            n_l += _label_digest_update(h, sample.key, sample.persons)
        except (KeyError, TypeError, ValueError) as exc:
            rep.errors.append(f"{name}: sample {sample.key} lacks label fields ({exc})")
            continue
        if labels is not None:
            labels.add(sample.key, sample.persons)
    for e in q:
        rep.errors.append(f"{name}: {e.key}: {e.reason}")
    return n_s, n_p, n_l, h.hexdigest()


def _check_shard(
    rep: VerifyReport, rdir: Path, s: dict, manifest: dict, labels: _StoreLabels | None, bad_person: list[str]
) -> ShardInfo | None:
    """One manifest shard entry -> its ShardInfo as found on disk (None if missing); size, sha256, counts, label digest."""
    p = rdir / s["name"]
    if not p.is_file():
        rep.errors.append(f"{s['name']}: missing")
        return None
    size = p.stat().st_size
    if size != s["bytes"]:
        rep.errors.append(f"{s['name']}: size {size} != manifest {s['bytes']}")
    digest = sha256_file(p)
    if digest != s["sha256"]:
        rep.errors.append(f"{s['name']}: sha256 mismatch (file {digest[:16]}…, manifest {s['sha256'][:16]}…)")
    n_s, n_p, n_l, label_digest = _scan_shard(rep, p, manifest, labels, bad_person)
    for label, got in (("samples", n_s), ("persons", n_p), ("labelled", n_l)):
        if got != s[label]:
            rep.errors.append(f"{s['name']}: {label} {got} != manifest {s[label]}")
    if label_digest != s["label_digest"]:
        rep.errors.append(f"{s['name']}: label digest mismatch")
    return ShardInfo(s["name"], digest, size, n_s, n_p, n_l, label_digest)


def _check_counts(rep: VerifyReport, c: dict, infos: list[ShardInfo]) -> None:
    """Manifest counts vs the shards' totals, and in = persons + quarantined, unlabelled = persons - labelled."""
    tot = {k: sum(getattr(i, k) for i in infos) for k in ("samples", "persons", "labelled")}
    for k, v in tot.items():
        if v != c[k]:
            rep.errors.append(f"counts.{k}: shards hold {v}, manifest says {c[k]}")
    if c["in"] != c["persons"] + c["quarantined"]:
        rep.errors.append(f"counts do not add up: in {c['in']} != persons {c['persons']} + quarantined {c['quarantined']}")
    if c["unlabelled"] != c["persons"] - c["labelled"]:
        rep.errors.append("counts.unlabelled != persons - labelled")


def _check_quarantine(rep: VerifyReport, rdir: Path, manifest: dict) -> None:
    """quarantine.jsonl vs the manifest: present, sha256, number of entries and entries per kind."""
    qpath = rdir / QUARANTINE
    if not qpath.is_file():
        rep.errors.append("quarantine.jsonl missing")
        return
    if sha256_file(qpath) != manifest["quarantine"]["sha256"]:
        rep.errors.append("quarantine.jsonl: sha256 mismatch")
    try:
        entries = read_quarantine(qpath)
        n_q = len(entries)
        if n_q != manifest["counts"]["quarantined"]:
            rep.errors.append(f"quarantine.jsonl has {n_q} entries, manifest says {manifest['counts']['quarantined']}")
        by_kind: dict[str, int] = {}
        for e in entries:
            by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
        if by_kind != manifest["quarantine"].get("by_kind", by_kind):
            rep.errors.append(f"quarantine.jsonl kinds {dict(sorted(by_kind.items()))} != manifest {manifest['quarantine']['by_kind']}")
    except (ValueError, KeyError) as exc:
        rep.errors.append(f"quarantine.jsonl unreadable: {exc}")


def _check_against_store(rep: VerifyReport, store: str | os.PathLike, labels: _StoreLabels, manifest: dict) -> None:
    """The `--store` cross-check of the gathered labels; a missing or unreadable labels.h5 is one error."""
    if not labels.ids:
        rep.checked["labels checked against store"] = 0
        return
    try:
        _store_check(
            rep, store, np.asarray(labels.ids, np.int64), labels.keys, np.asarray(labels.sides, dtype=object),
            {k: np.stack(v).astype(np.float32) for k, v in labels.arrays.items()}, manifest,
        )  # fmt: skip
    except (OSError, ValueError) as exc:  # missing, unreadable or truncated labels.h5
        rep.errors.append(f"label store {store}: {exc}")


def _verify_round(rep: VerifyReport, rdir: Path, manifest: dict, store: str | os.PathLike | None) -> None:
    """All checks of one round folder against its manifest (and the store, if given), errors in report order."""
    _check_listing(rep, rdir, manifest)
    _check_manifest_fields(rep, rdir, manifest)
    labels = _StoreLabels() if store is not None else None
    bad_person: list[str] = []
    infos = [info for s in manifest["shards"] if (info := _check_shard(rep, rdir, s, manifest, labels, bad_person)) is not None]
    if bad_person:
        rep.errors.append(f"{len(bad_person)} person(s) disagree with the manifest's round/release (e.g. {bad_person[0]})")
    c = manifest["counts"]
    _check_counts(rep, c, infos)
    _check_quarantine(rep, rdir, manifest)
    if len(infos) == len(manifest["shards"]) and _combined_label_digest(infos) != manifest["label_digest"]:
        rep.errors.append("release label digest mismatch")
    rep.checked.update({"shards": len(manifest["shards"]), **{f"counts.{k}": v for k, v in c.items()}})
    if labels is not None:
        _check_against_store(rep, store, labels, manifest)
