"""Round-0 SKEL pseudo ground truth: convert a source shard, record its labels, write its release shard.

The three steps the `build-pseudo-gt` flow runs, usable without Prefect:

1. `convert_source_shard`: read one HMR2.0-style tar (or npz), fit SKEL to every labelled person
   and to its mirror image, and save the labels to a small npz (atomic, with the digests it was
   made from, so a rerun with the same input, config and code skips it).
2. `record_round0`: append those labels to the label store (idempotent) and make them round 0.
3. `write_release_shard`: one output shard per source shard, HSMR-v1 person dicts with label ids.

Counts add up per shard: persons in = labelled + unlabelled (no SMPL in the source) + quarantined
(unreadable or failed conversion; those leave the shard with their reason in quarantine.jsonl).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from skelpgt.fitting.camera import normalise_keypoints
from skelpgt.fitting.convert import Converter
from skelpgt.fitting.genders import convert_by_gender
from skelpgt.fitting.sequence import convert_sequence_with_flip

from .atomic import atomic_write_bytes
from .labelstore import LabelStore
from .quarantine import Quarantine, QuarantineEntry, read_quarantine
from .readers import ReadCounts, read_source
from .records import SkelLabel
from .shards import OutSample, ShardInfo, ShardWriter, make_person, sha256_file

SIDES = ("orig", "flip")
_LABEL_FIELDS = ("poses", "betas", "trans", "pve_mean", "pve_max", "kp2d_err", "limit_violation")


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    from importlib.metadata import version

    try:
        sha = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return version("skel-pgt") + (f"+g{sha}" if sha else "")


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


def conversion_path(workdir: str | os.PathLike, release: str, source: str | os.PathLike) -> Path:
    """Where the labels of one source shard are kept between flow steps: one file per source path.

    Same-named shards of different folders (`A/s-000000.tar`, `B/s-000000.tar`) must not share
    it, so the name carries a digest of the absolute path besides the stem.
    """
    from .release import check_release_name

    check_release_name(release)
    path_tag = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:12]
    return Path(workdir) / "work" / release / "round-0" / f"{Path(source).stem}-{path_tag}.labels.npz"


def convert_source_shard(source: str | os.PathLike, converter: Converter, out: str | os.PathLike) -> ShardConversion:
    """Convert every labelled person of `source` (orig + flip), save to `out`; reuse `out` if current."""
    digest, version = sha256_file(source), code_version()
    cached = load_conversion(out)
    if cached is not None and (cached.source_sha256, cached.config_digest, cached.code_version) == (
        digest,
        converter.config.digest(),
        version,
    ):
        return cached
    start = time.perf_counter()
    quarantine, counts = Quarantine(), ReadCounts()
    records = list(read_source(source, quarantine, counts))
    labelled = [r for r in records if r.has_smpl]
    keys: list[str] = []
    labels = {side: {f: np.zeros((0,), np.float32) for f in _LABEL_FIELDS} for side in SIDES}
    if labelled:
        pose = torch.from_numpy(np.stack([r.body_pose for r in labelled]))
        betas = torch.from_numpy(np.stack([r.betas for r in labelled]))
        trans = torch.from_numpy(np.stack([r.trans for r in labelled]))
        kp = normalise_keypoints(
            torch.from_numpy(np.stack([r.keypoints_2d for r in labelled])),
            torch.from_numpy(np.stack([r.center for r in labelled])),
            torch.from_numpy(np.stack([r.scale for r in labelled])),
        )
        # A mocap file (AMASS: a frame rate, one person's frames in order) is converted as a
        # sequence, so its joint-angle curves are continuous.
        sequence = all("mocap_framerate" in r.extra_info for r in labelled)
        fit = convert_sequence_with_flip if sequence else lambda conv, *args, keypoints_2d: conv.convert_with_flip(*args, keypoints_2d=keypoints_2d)
        # each person's target mesh comes from the SMPL body of its own gender (AMASS says which)
        sides, digests = convert_by_gender(converter, [r.gender for r in labelled], lambda conv, rows: fit(conv, pose[rows], betas[rows], trans[rows], keypoints_2d=kp[rows]))
        results = dict(zip(SIDES, sides))
        ok = results["orig"].converged & results["flip"].converged
        for i in torch.nonzero(~ok).flatten().tolist():
            reason = results["orig"].reason[i] or results["flip"].reason[i]
            quarantine.add(QuarantineEntry(labelled[i].key, str(source), "body_pose", f"SKEL conversion failed: {reason}"))
        keep = torch.nonzero(ok).flatten()
        keys = [labelled[i].key for i in keep.tolist()]
        labels = {side: {f: getattr(r, f)[keep].numpy().astype(np.float32) for f in _LABEL_FIELDS} for side, r in results.items()}
        for side in SIDES:  # the config each label was made with (its SMPL gender is part of it)
            labels[side]["config_digest"] = np.array([digests[i] for i in keep.tolist()], dtype=str)
    result = ShardConversion(
        source=str(source), source_sha256=digest, config_digest=converter.config.digest(), code_version=version,
        keys=keys, labels=labels, quarantine=list(quarantine), n_in=counts.n_in,
        n_unlabelled=len(records) - len(labelled), seconds=time.perf_counter() - start,
        person_keys=[r.key for r in records],
    )  # fmt: skip
    save_conversion(result, out)
    return result


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
            labels = {side: {f: z[f"{side}_{f}"] for f in _LABEL_FIELDS} for side in SIDES}
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
    from .records import split_person_key

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


def source_images(source: str, skip: set[str]):
    """(image key, persons in index order) of a source shard, in stored order, leaving out the `skip` person keys."""
    current, persons = None, []
    for rec in read_source(source):
        if rec.key in skip:
            continue
        if rec.image_key != current and persons:
            yield current, persons
            persons = []
        current = rec.image_key
        persons.append(rec)
    if persons:
        yield current, persons


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


def digest_of(obj) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def quarantined_keys(sources: list[str], quarantine: list[QuarantineEntry]) -> list[set[str]]:
    """Per source, the person keys its quarantine entries leave out (per source: the same key may be
    quarantined in one source, as a duplicate, and kept in another)."""
    by_file: dict[str, set[str]] = {}
    for e in quarantine:
        by_file.setdefault(e.file, set()).add(e.key)
    return [by_file.get(str(source), set()) for source in sources]


def release_samples_of(images, labels: dict, *, round: int, release: str):
    """(image key, persons) of `source_images` → OutSamples with their labels ({key: (orig, flip) SkelLabel | None}; unlabelled persons kept)."""
    for key, persons in images:
        dicts = [make_person(p, *labels.get(p.key, (None, None)), round=round, release=release) for p in persons]
        yield OutSample(key, persons[0].image, persons[0].image_ext, dicts)


def release_samples(
    sources: list[str], labels: dict[str, tuple[SkelLabel | None, SkelLabel | None]], *, round: int, release: str, skip: set[str] = frozenset(),
    quarantine: list[QuarantineEntry] = (),
):
    """OutSamples of the source images with their labels (unlabelled persons kept; `skip` keys and the `quarantine` entries of each source left out)."""
    for source, quarantined in zip(sources, quarantined_keys(sources, quarantine)):
        yield from release_samples_of(source_images(source, set(skip) | quarantined), labels, round=round, release=release)


def reshard_round(workdir: str | os.PathLike, release: str, round: int, *, samples_per_shard: int, name: str | None = None) -> dict:
    """Write the current labels of `round` (label store) as release `name` with a new shard size."""
    from .release import QUARANTINE, read_manifest, resolve_round, write_release

    workdir = Path(workdir)
    folder = resolve_round(workdir / "releases" / release, round)
    manifest = read_manifest(folder)
    quarantine = read_quarantine(folder / QUARANTINE)
    sources = manifest["config"].get("sources")
    if not sources:
        raise ValueError(f"release {release} round {round}: its manifest does not list its source files")
    with LabelStore(workdir / "labels.h5", "r") as store:
        labels = store.skel_labels(round)
    name = name or f"{release}-x{samples_per_shard}"
    config = {**manifest["config"], "resharded_from": f"{release}/round-{round}", "samples_per_shard": samples_per_shard}
    return write_release(
        workdir, name, round, release_samples(sources, labels, round=round, release=name, quarantine=quarantine),
        quarantine=quarantine, parent_round=manifest.get("parent_round"), config=config, code_version=code_version(),
        samples_per_shard=samples_per_shard, overwrite=True,
    )  # fmt: skip


def round0_config(conversions: list[ShardConversion], config, **extra) -> dict:
    """What a round-0 manifest records of its making: converter config, source paths and their sha256, `extra`."""
    return {
        "convert": {**asdict(config), "digest": config.digest()}, **extra,
        "sources": [c.source for c in conversions], "source_sha256": [c.source_sha256 for c in conversions],
    }  # fmt: skip


def clear_staging(workdir: str | os.PathLike, release: str, round: int) -> Path:
    """Empty staging folder of a round (leftovers of a killed or refused run removed); the caller holds the release lock."""
    import shutil

    from .release import staging_dir

    stage = staging_dir(workdir, release, round)
    shutil.rmtree(stage, ignore_errors=True)
    return stage


def models_identity(models_dir: str | os.PathLike | None) -> str | None:
    """What a manifest records about the models: the stand-ins' 'synthetic-…' tag or the folder's name (None: unknown)."""
    if models_dir is None:
        return None
    complete = Path(models_dir) / ".complete"
    return complete.read_text().strip() if complete.is_file() else os.path.basename(os.path.normpath(models_dir))


def release_round0(
    workdir: str | os.PathLike, release: str, conversions: list[ShardConversion], config, models_dir: str | os.PathLike | None, *,
    overwrite: bool = False, record=record_round0, write_shard=write_release_shard,
) -> dict:  # fmt: skip
    """Converted shards → label store round 0 + release round 0 (under the release lock) → its manifest.

    A round 0 that exists from other inputs or settings is refused before anything is written,
    unless `overwrite`. `record` and `write_shard` default to this module's functions; the
    `build-pseudo-gt` flow passes its tasks of them, so both paths write the same bytes.
    """
    from .release import check_rebuild, finalize_release, release_lock

    workdir = Path(workdir)
    release_config = round0_config(conversions, config, models_dir=models_identity(models_dir))
    version = code_version()
    with release_lock(workdir, release):
        check_rebuild(workdir, release, 0, release_config, version, overwrite=overwrite)
        label_ids = record(str(workdir / "labels.h5"), conversions)
        stage = str(clear_staging(workdir, release, 0))
        # each shard gets only its own ids: a task's arguments are scanned per call (quadratic at scale, benchmarks/SCALE.md)
        infos = [write_shard(c, {k: label_ids[k] for k in c.keys}, stage, index=i, release=release) for i, c in enumerate(conversions)]
        return finalize_release(
            workdir, release, 0, shard_infos=[i for i in infos if i is not None], quarantine=[e for c in conversions for e in c.quarantine],
            config=release_config, code_version=version, n_in=sum(c.n_in for c in conversions), overwrite=overwrite,
        )  # fmt: skip


def build_round0(
    sources: list[str | os.PathLike], workdir: str | os.PathLike, release: str, converter: Converter, *, overwrite: bool = False
) -> dict:
    """The `build-pseudo-gt` steps in one process (tests, benchmarks, the regressor demo): sources → round-0 release; its manifest."""
    from .release import check_release_name

    check_release_name(release)
    workdir = Path(workdir)
    sources = [str(s) for s in sources]
    conversions = drop_duplicate_images([convert_source_shard(s, converter, conversion_path(workdir, release, s)) for s in sources])
    return release_round0(workdir, release, conversions, converter.config, converter.models_dir, overwrite=overwrite)
