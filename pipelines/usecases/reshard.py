"""Reshard: the current labels of a release round, written again as a new release with another shard size."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from skelpgt.datasets.labelstore import LabelStore
from skelpgt.datasets.provenance import code_version
from skelpgt.datasets.quarantine import read_quarantine
from skelpgt.datasets.release import QUARANTINE, RoundFacts, clear_staging, finalize_release, read_manifest, release_lock, resolve_round
from skelpgt.datasets.samples import image_keys, part_inputs, quarantined_keys, release_parts, write_parts
from skelpgt.datasets.workdir import Workdir

from .build import Released


@dataclass(frozen=True)
class ReshardConfig:
    """Release `release` round `round` → release `name` (default `<release>-x<samples_per_shard>`) of `samples_per_shard` images per shard."""

    release: str = "synthetic"
    round: int = 0
    samples_per_shard: int = 1000
    name: str | None = None


def reshard(workdir: str | os.PathLike, config: ReshardConfig, write_shards: Callable = write_parts) -> Released:
    """Write the current labels of the round (label store) as the new release's same-numbered round → Released.

    `write_shards([(part, labels, skips)], stage, release, round)` writes the shards (default: in this
    process; the `release-shards` flow passes its task per shard)."""
    workdir = Workdir.of(workdir)
    folder = resolve_round(workdir.release(config.release), config.round)
    manifest = read_manifest(folder)
    quarantine = read_quarantine(folder / QUARANTINE)
    sources = manifest["config"].get("sources")
    if not sources:
        raise ValueError(f"release {config.release} round {config.round}: its manifest does not list its source files")
    with LabelStore(workdir.labels, "r") as store:
        labels = store.skel_labels(config.round)
    name = config.name or f"{config.release}-x{config.samples_per_shard}"
    release_config = {**manifest["config"], "resharded_from": f"{config.release}/round-{config.round}", "samples_per_shard": config.samples_per_shard}
    facts = RoundFacts(name, config.round, manifest.get("parent_round"), release_config, code_version(), quarantine)
    skips = dict(zip(sources, quarantined_keys(sources, quarantine)))
    images = image_keys(sources, skips, labels)
    per_image = dict(images)
    shards = [(part, *part_inputs(per_image, skips, part, labels)) for part in release_parts(images, config.samples_per_shard)]
    with release_lock(workdir, name):
        stage = clear_staging(workdir, name, config.round)
        written = finalize_release(workdir, facts, shard_infos=write_shards(shards, stage, name, config.round), overwrite=True)
    return Released(workdir.round(name, config.round), written)
