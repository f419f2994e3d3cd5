"""Build round 0: source shards → SMPL→SKEL conversions (orig + flip) → label store round 0 → release round 0.

`build_round0` is the one path: the `build-pseudo-gt` flow, the CLI-free callers (tests, benchmarks,
the regressor demo) all run it. How the per-shard steps run is a `Round0Steps`: `convert_locally`
converts in this process; the flow passes its tasks (one per source shard, on Dask if asked), so
both write the same bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from skelpgt.datasets.conversion import (
    LABEL_FIELDS,
    SIDES,
    ShardConversion,
    drop_duplicate_images,
    load_conversion,
    record_round0,
    save_conversion,
    summarize,
    write_release_shard,
)
from skelpgt.datasets.provenance import code_version, models_identity
from skelpgt.datasets.quarantine import Quarantine, QuarantineEntry
from skelpgt.datasets.readers import ReadCounts, read_source, source_files
from skelpgt.datasets.release import RoundFacts, check_rebuild, clear_staging, finalize_release, release_lock
from skelpgt.datasets.shards import sha256_file
from skelpgt.datasets.synthetic import make_synthetic_dataset
from skelpgt.datasets.workdir import Workdir, check_release_name
from skelpgt.fitting.camera import normalise_keypoints
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.genders import convert_by_gender
from skelpgt.fitting.sequence import convert_sequence_with_flip


@dataclass(frozen=True)
class BuildConfig:
    """What to build: `inputs` (.tar/.npz files or folders; empty: the workdir's synthetic dataset of
    `synthetic_images` images, `synthetic_seed`) as release `release`; `overwrite` replaces a round 0
    built from other inputs or settings (refused otherwise, before anything is written)."""

    inputs: tuple[str, ...] = ()
    release: str = "synthetic"
    overwrite: bool = False
    synthetic_images: int = 48
    synthetic_seed: int = 0


@dataclass(frozen=True)
class Round0Steps:
    """How the per-shard steps run, and the converter settings they run with (recorded in the manifest).

    `convert(sources, outs)` converts each source into its conversion file and returns the files;
    `record` (the only store writer) and `write_shard` default to the data layer's functions."""

    convert: Callable[[list[str], list[str]], list[str]]
    config: ConvertConfig
    models_dir: str | None
    record: Callable = record_round0
    write_shard: Callable = write_release_shard


@dataclass
class Released:
    """A written release round: its folder, its manifest and (round 0) the conversion summary."""

    folder: Path
    manifest: dict
    summary: dict = field(default_factory=dict)


def convert_locally(converter: Converter) -> Round0Steps:
    """Round0Steps that convert one shard after the other in this process with `converter`."""

    def convert(sources: list[str], outs: list[str]) -> list[str]:
        for source, out in zip(sources, outs, strict=True):
            convert_source_shard(source, converter, out)
        return outs

    return Round0Steps(convert, converter.config, converter.models_dir)


def build_round0(workdir: str | os.PathLike, config: BuildConfig, steps: Round0Steps) -> Released:
    """Sources → conversions (reused when current) → label store round 0 + release round 0 → Released."""
    check_release_name(config.release)  # before anything is written anywhere
    workdir = Workdir.of(workdir)
    sources = source_files(config.inputs or [synthetic_inputs(workdir, config, steps.models_dir)])
    if not sources:
        raise ValueError(f"no .tar or .npz input found in {list(config.inputs)}")
    outs = [str(workdir.conversion(config.release, s)) for s in sources]
    conversions = drop_duplicate_images([_load(f) for f in steps.convert(sources, outs)])
    manifest = release_round0(workdir, config.release, conversions, steps, overwrite=config.overwrite)
    return Released(workdir.round(config.release, 0), manifest, summarize(conversions))


def synthetic_inputs(workdir: Workdir, config: BuildConfig, models_dir: str | None) -> Path:
    """The workdir's synthetic dataset (generated once) → its shards folder."""
    out = workdir.synthetic_source(config.synthetic_images, config.synthetic_seed)
    if not (out / "dataset.json").is_file():
        make_synthetic_dataset(out, config.synthetic_images, seed=config.synthetic_seed, models_dir=models_dir)
    return out / "shards"


def _load(label_file: str) -> ShardConversion:
    conv = load_conversion(label_file)
    if conv is None:
        raise RuntimeError(f"{label_file}: converted labels unreadable; rerun to convert that shard again")
    return conv


def convert_source_shard(source: str | os.PathLike, converter: Converter, out: str | os.PathLike) -> ShardConversion:
    """Convert every labelled person of `source` (orig + flip), save to `out`; reuse `out` if current."""
    digest, version = sha256_file(source), code_version()
    cached = load_conversion(out)
    if cached is not None and (cached.source_sha256, cached.config_digest, cached.code_version) == (digest, converter.config.digest(), version):
        return cached
    start = time.perf_counter()
    quarantine, counts = Quarantine(), ReadCounts()
    records = list(read_source(source, quarantine, counts))
    labelled = [r for r in records if r.has_smpl]
    keys: list[str] = []
    labels = {side: {f: np.zeros((0,), np.float32) for f in LABEL_FIELDS} for side in SIDES}
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
        labels = {side: {f: getattr(r, f)[keep].numpy().astype(np.float32) for f in LABEL_FIELDS} for side, r in results.items()}
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


def round0_config(conversions: list[ShardConversion], config: ConvertConfig, **extra) -> dict:
    """What a round-0 manifest records of its making: converter config, source paths and their sha256, `extra`."""
    return {
        "convert": {**asdict(config), "digest": config.digest()}, **extra,
        "sources": [c.source for c in conversions], "source_sha256": [c.source_sha256 for c in conversions],
    }  # fmt: skip


def release_round0(workdir: Workdir, release: str, conversions: list[ShardConversion], steps: Round0Steps, *, overwrite: bool = False) -> dict:
    """Converted shards → label store round 0 + release round 0 (under the release lock) → its manifest.

    A round 0 that exists from other inputs or settings is refused before anything is written, unless `overwrite`."""
    release_config = round0_config(conversions, steps.config, models_dir=models_identity(steps.models_dir))
    version = code_version()
    with release_lock(workdir, release):
        check_rebuild(workdir, release, 0, release_config, version, overwrite=overwrite)
        label_ids = steps.record(str(workdir.labels), conversions)
        stage = str(clear_staging(workdir, release, 0))
        # each shard gets only its own ids: a task's arguments are scanned per call (quadratic at scale, benchmarks/SCALE.md)
        infos = [steps.write_shard(c, {k: label_ids[k] for k in c.keys}, stage, index=i, release=release) for i, c in enumerate(conversions)]
        facts = RoundFacts(release, 0, None, release_config, version, [e for c in conversions for e in c.quarantine], sum(c.n_in for c in conversions))
        return finalize_release(workdir, facts, shard_infos=[i for i in infos if i is not None], overwrite=overwrite)
