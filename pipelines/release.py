"""`release-shards`: re-shard the current labels of a release round into a new release (use case `reshard`)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from skelpgt.datasets.workdir import Workdir
from skelpgt.pipelines.usecases.reshard import ReshardConfig, reshard


@flow(name="release-shards")
def release_shards(workdir: str = "work/demo", release: str = "synthetic", round: int = 0, samples_per_shard: int = 1000, name: str | None = None) -> dict:
    """Write round `round` of `release` (its current labels in the store) with a new shard size."""
    manifest = reshard(Workdir(Path(workdir).resolve()), ReshardConfig(release, round, samples_per_shard, name)).manifest
    get_run_logger().info("release %s round %d: %d shards, counts %s", manifest["release"], round, len(manifest["shards"]), manifest["counts"])
    return manifest
