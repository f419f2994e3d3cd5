"""Reshard: the current labels of a release round, written again as a new release with another shard size."""

from __future__ import annotations

import os
from dataclasses import dataclass

from skelpgt.datasets.labelstore import LabelStore
from skelpgt.datasets.provenance import code_version
from skelpgt.datasets.quarantine import read_quarantine
from skelpgt.datasets.release import QUARANTINE, RoundFacts, read_manifest, resolve_round, write_release
from skelpgt.datasets.samples import release_samples
from skelpgt.datasets.workdir import Workdir

from .build import Released


@dataclass(frozen=True)
class ReshardConfig:
    """Release `release` round `round` → release `name` (default `<release>-x<samples_per_shard>`) of `samples_per_shard` images per shard."""

    release: str = "synthetic"
    round: int = 0
    samples_per_shard: int = 1000
    name: str | None = None


def reshard(workdir: str | os.PathLike, config: ReshardConfig) -> Released:
    """Write the current labels of the round (label store) as the new release's same-numbered round → Released."""
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
    samples = release_samples(sources, labels, round=config.round, release=name, quarantine=quarantine)
    written = write_release(workdir, facts, samples, samples_per_shard=config.samples_per_shard, overwrite=True)
    return Released(workdir.round(name, config.round), written)
