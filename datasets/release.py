"""Release rounds: `releases/<name>/round-<k>/` = shards + quarantine.jsonl + manifest.json.

A round is assembled in `round-<k>.partial/` and renamed into place when its manifest is
written, so a round folder either is complete or does not exist. The manifest has sorted keys and
no timestamps: the same shards, quarantine and config give the same manifest bytes, which is what
makes a resumed run indistinguishable from an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import webdataset as wds

from . import hsmr_validity
from .atomic import atomic_write_bytes, fsync_dir
from .labelstore_index import key_hash
from .locks import FileLock
from .quarantine import Quarantine, QuarantineEntry, read_quarantine
from .workdir import MANIFEST, ROUND_NAME, Workdir, list_rounds
from .shards import OutSample, ShardInfo, ShardWriter, person_index_of, sha256_file, shard_invalid_counts, shard_label_digest

RELEASE_FORMAT = "skelpgt-release/1"
QUARANTINE = "quarantine.jsonl"
PVE_VALID = 0.06  # metres; HSMR trusts a label only below this pve_max


def canonical_json(obj: Any) -> bytes:
    """Object -> canonical JSON bytes (sorted keys, fixed separators, UTF-8, trailing newline)."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def config_digest(config: Mapping | None) -> str:
    """Config mapping -> sha256 hex of its canonical JSON."""
    return hashlib.sha256(canonical_json(dict(config or {}))).hexdigest()


def round_dir(workdir: str | os.PathLike, name: str, round: int) -> Path:
    """Workdir, release name, round -> `<workdir>/releases/<name>/round-<k>`."""
    return Workdir.of(workdir).round(name, round)


def resolve_round(path: str | os.PathLike, round: int | None = None) -> Path:
    """Round folder, or release folder + round (default: latest) -> round folder with a manifest."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        if round is not None and ROUND_NAME.match(p.name) and int(ROUND_NAME.match(p.name).group(1)) != int(round):
            raise ValueError(f"{p} is round {p.name}, not round {round}")
        return p
    rounds = list_rounds(p)
    if not rounds:
        raise FileNotFoundError(f"no release round (manifest.json) under {p}")
    k = rounds[-1] if round is None else int(round)
    if k not in rounds:
        raise FileNotFoundError(f"{p} has no round {k} (has {rounds})")
    return p / f"round-{k}"


def read_manifest(path: str | os.PathLike, round: int | None = None) -> dict:
    """Round or release folder -> parsed manifest.json of that round."""
    return json.loads((resolve_round(path, round) / MANIFEST).read_text(encoding="utf-8"))


def _combined_label_digest(infos: Iterable[ShardInfo]) -> str:
    h = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.name):
        h.update(f"{info.name}\x00{info.label_digest}\n".encode())
    return h.hexdigest()


def shard_info_of(path: str | os.PathLike) -> ShardInfo:
    """Existing shard file -> ShardInfo (re-reads it: sha256, counts, label digest)."""
    p = Path(path)
    digest, n_s, n_p, n_l = shard_label_digest(p)
    return ShardInfo(
        name=p.name, sha256=sha256_file(p), bytes=p.stat().st_size, samples=n_s, persons=n_p, labelled=n_l, label_digest=digest,
        hsmr_invalid=shard_invalid_counts(p),
    )  # fmt: skip


@dataclass(frozen=True)
class RoundFacts:
    """What a round's manifest records besides its shards: which round of which release, its parent, how it
    was made (`config`, `code_version`), its quarantine, and how many persons came in (`n_in`: checked to add up)."""

    name: str
    round: int
    parent_round: int | None = None
    config: Mapping | None = None
    code_version: str = ""
    quarantine: Iterable[QuarantineEntry] = ()
    n_in: int | None = None


def build_manifest(facts: RoundFacts, shards: list[ShardInfo], quarantine: list[QuarantineEntry], quarantine_sha256: str) -> dict:
    """Round facts + its shards and sorted quarantine -> manifest dict (no timestamps). ValueError when counts do not add up."""
    shards = sorted(shards, key=lambda s: s.name)
    persons = sum(s.persons for s in shards)
    labelled = sum(s.labelled for s in shards)
    n_q = len(quarantine)
    if facts.n_in is not None and facts.n_in != persons + n_q:
        raise ValueError(f"counts do not add up: in={facts.n_in} != persons {persons} + quarantined {n_q}")
    by_kind: dict[str, int] = {}
    for e in quarantine:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
    cfg = dict(facts.config or {})
    return {
        "format": RELEASE_FORMAT,
        "release": facts.name,
        "round": int(facts.round),
        "parent_round": None if facts.parent_round is None else int(facts.parent_round),
        "shards": [
            {"name": s.name, "sha256": s.sha256, "bytes": s.bytes, "samples": s.samples, "persons": s.persons, "labelled": s.labelled, "label_digest": s.label_digest}
            for s in shards
        ],
        "counts": {
            "in": persons + n_q,
            "samples": sum(s.samples for s in shards),
            "persons": persons,
            "labelled": labelled,
            "unlabelled": persons - labelled,
            "quarantined": n_q,
        },
        "quarantine": {"file": QUARANTINE, "sha256": quarantine_sha256, "by_kind": dict(sorted(by_kind.items()))},
        "label_digest": _combined_label_digest(shards),
        # labels HSMR's training loader would drop (pve_max) or use without β (|β| > 3), by reason
        "hsmr_invalid": hsmr_validity.summary(s.hsmr_invalid for s in shards),
        "config": cfg,
        "config_digest": config_digest(cfg),
        "code_version": str(facts.code_version),
    }


@contextmanager
def release_lock(workdir: str | os.PathLike, name: str):
    """Hold `releases/<name>/.lock` (exclusive, waits): one build, refine or reshard writes a release at a time."""
    folder = Workdir.of(workdir).release(name)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock", timeout=None, note=f"pid {os.getpid()}"):
        yield


def check_rebuild(workdir: str | os.PathLike, name: str, round: int, config: Mapping, code_version: str, *, overwrite: bool) -> None:
    """Refuse, before anything is written, to rebuild an existing round from other inputs or settings unless `overwrite`."""
    final = round_dir(workdir, name, round)
    if overwrite or not (final / MANIFEST).is_file():
        return
    old = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
    cfg = json.loads(canonical_json(dict(config)))  # compare as the manifest stores it
    differ = sorted(k for k in set(cfg) | set(old.get("config", {})) if cfg.get(k) != old.get("config", {}).get(k))
    if old.get("code_version") != code_version:
        differ.append("code_version")
    if differ:
        raise FileExistsError(
            f"{final} was built from other inputs or settings ({', '.join(differ)} differ): "
            "rerun with overwrite=true to replace it, or use another release name"
        )


def staging_dir(workdir: str | os.PathLike, name: str, round: int) -> Path:
    """Where a round is assembled before it is renamed into place."""
    return Workdir.of(workdir).staging(name, round)


def clear_staging(workdir: str | os.PathLike, name: str, round: int) -> Path:
    """Empty staging folder of a round (leftovers of a killed or refused run removed); the caller holds the release lock."""
    stage = staging_dir(workdir, name, round)
    shutil.rmtree(stage, ignore_errors=True)
    return stage


def finalize_release(workdir: str | os.PathLike, facts: RoundFacts, *, shard_infos: Iterable[ShardInfo] | None = None, overwrite: bool = False) -> dict:
    """Shards already in the staging folder -> quarantine.jsonl + manifest.json, then rename to round-<k>/.

    `shard_infos` (from ShardWriter.close) saves re-reading the shards; any shard without one is
    re-read. Re-finalizing an identical round is a no-op; a different one needs `overwrite`.
    """
    stage = staging_dir(workdir, facts.name, facts.round)
    final = round_dir(workdir, facts.name, facts.round)
    stage.mkdir(parents=True, exist_ok=True)
    for stale in stage.glob("*.tmp"):
        stale.unlink()
    known = {i.name: i for i in (shard_infos or ())}
    infos = [known.get(p.name) or shard_info_of(p) for p in sorted(stage.glob("*.tar"))]
    q = Quarantine(facts.quarantine)
    q.write_jsonl(stage / QUARANTINE)
    manifest = build_manifest(facts, infos, q.sorted(), sha256_file(stage / QUARANTINE))
    atomic_write_bytes(stage / MANIFEST, canonical_json(manifest))
    if final.exists():
        same = (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == (stage / MANIFEST).read_bytes()
        if same:
            shutil.rmtree(stage)
            return manifest
        if not overwrite:
            shutil.rmtree(stage)  # refused: leave nothing that a rerun would trip over
            raise FileExistsError(f"{final} exists with a different manifest: rerun with overwrite=true to replace it, or use another release name")
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(stage, final)
        shutil.rmtree(old)
    else:
        os.rename(stage, final)
    fsync_dir(final.parent)
    return manifest


def write_release(
    workdir: str | os.PathLike, facts: RoundFacts, samples: Iterable[OutSample], *,
    samples_per_shard: int = 1000, prefix: str | None = None, overwrite: bool = False, fsync: bool = True,
) -> dict:  # fmt: skip
    """OutSamples (in order) -> complete release round folder; returns its manifest dict."""
    with release_lock(workdir, facts.name):
        stage = staging_dir(workdir, facts.name, facts.round)
        if stage.exists():
            shutil.rmtree(stage)  # leftovers of an interrupted run are rewritten from scratch
        with ShardWriter(stage, prefix=prefix or facts.name, samples_per_shard=samples_per_shard, fsync=fsync) as w:
            for s in samples:
                w.write(s)
        return finalize_release(workdir, facts, shard_infos=w.infos, overwrite=overwrite)


# ---------------------------------------------------------------------------- consumer API
def _person_ok(p: dict, min_quality: float | None) -> bool:
    if min_quality is None:
        return True
    v = p.get("orig_pve_max", float("nan"))
    return bool(np.isfinite(v) and v < min_quality)


def _image_sample(min_quality: float | None):
    def f(sample: dict) -> dict:
        img_ext = next(e for e in ("jpg", "jpeg", "png") if e in sample)
        persons = [dict(p, person_index=person_index_of(p, i)) for i, p in enumerate(sample["data.pyd"]) if _person_ok(p, min_quality)]
        first = sample["data.pyd"][0] if sample["data.pyd"] else {}
        return {
            "__key__": sample["__key__"],
            "__url__": sample.get("__url__"),
            "image": sample[img_ext],
            "persons": persons,
            "round": first.get("round"),
            "release": first.get("release"),
        }

    return f


def _split_persons(src):
    for s in src:
        for p in s["persons"]:
            i = p["person_index"]
            out = {"__key__": f"{s['__key__']}_{i}", "__url__": s["__url__"], "img_name": s["__key__"], "image": s["image"]}
            out.update(p)
            yield out


def in_split(image_key: str, split: str, val_fraction: float) -> bool:
    """Image key -> whether it belongs to `split` ('train'|'val'); stable hash, so all persons of an image stay together."""
    if split not in ("train", "val"):
        raise ValueError("split must be 'train' or 'val'")
    is_val = int(key_hash([image_key])[0] % np.uint64(1_000_000)) < round(val_fraction * 1_000_000)
    return is_val == (split == "val")


def open_release(path: str | os.PathLike, round: int | None = None, **kw):
    """Release/round folder -> webdataset pipeline of decoded samples (default: latest round); keywords of `open_shards`."""
    rdir = resolve_round(path, round)
    manifest = json.loads((rdir / MANIFEST).read_text(encoding="utf-8"))
    urls = [str(rdir / s["name"]) for s in manifest["shards"]]
    if not urls:
        raise ValueError(f"{rdir} holds no shards (every input was quarantined?)")
    return open_shards(urls, **kw)


def open_shards(
    urls: list[str],
    *,
    min_quality: float | None = None,
    per_person: bool = False,
    split: str | None = None,
    val_fraction: float = 0.05,
    shardshuffle: bool | int = False,
    image: str = "rgb8",
    **wds_kwargs,
):
    """HSMR-v1 tar paths (a release's, or HSMR's own: no manifest needed, our extra person fields optional) -> pipeline.

    Per image: {'__key__', 'image' (H,W,3 uint8 for image='rgb8'), 'persons' (list of person
    dicts with 'person_index'), 'round', 'release'}. With `per_person=True`: one sample per person,
    keyed `<image key>_<index>`, with the person's fields at top level plus 'img_name' and 'image'.
    `min_quality` (metres, e.g. 0.06 like HSMR) keeps only persons whose orig_pve_max is below it;
    images left with no person are dropped. `split='train'|'val'` keeps a fixed, hash-chosen
    `val_fraction` of images (by image key) for 'val' and the rest for 'train'. Extra keyword
    arguments go to `webdataset.WebDataset`.
    """
    ds = wds.WebDataset(urls, shardshuffle=shardshuffle, **wds_kwargs)
    if split is not None:
        in_split("", split, val_fraction)  # validate arguments now, not lazily in a worker
        ds = ds.select(lambda s: in_split(s["__key__"], split, val_fraction))
    ds = ds.decode(image).map(_image_sample(min_quality))
    ds = ds.select(lambda s: len(s["persons"]) > 0)
    if per_person:
        ds = ds.compose(_split_persons)
    return ds


def open_release_persons(path: str | os.PathLike, round: int | None = None, **kw):
    """`open_release(..., per_person=True)`: one decoded sample per person."""
    return open_release(path, round, per_person=True, **kw)


def release_quarantine(path: str | os.PathLike, round: int | None = None) -> list[QuarantineEntry]:
    """Round or release folder -> its quarantine entries."""
    return read_quarantine(resolve_round(path, round) / QUARANTINE)
