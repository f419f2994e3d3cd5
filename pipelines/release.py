"""`release-shards`: re-shard the current labels of a release round into a new release (use case `reshard`),
one `write-round-shard` task per new shard, on Dask when `dask_address` is given."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from skelpgt.datasets.workdir import Workdir
from skelpgt.pipelines.runners import task_runner, write_parts_as_tasks
from skelpgt.pipelines.usecases.reshard import ReshardConfig, reshard


@flow(name="reshard")
def reshard_on_runner(workdir: Workdir, config: ReshardConfig) -> dict:
    """`reshard` with a task per shard on this flow's task runner (the caller sets it) → the manifest."""
    return reshard(workdir, config, write_parts_as_tasks).manifest


@flow(name="release-shards")
def release_shards(
    workdir: str = "work/demo", release: str = "synthetic", round: int = 0, samples_per_shard: int = 1000, name: str | None = None,
    dask_address: str | None = None,
) -> dict:  # fmt: skip
    """Write round `round` of `release` (its current labels in the store) with a new shard size; `dask_address`:
    'tcp://host:port' or 'local:N' writes the shards on Dask workers."""
    run = reshard_on_runner.with_options(task_runner=task_runner(dask_address))
    manifest = run(Workdir(Path(workdir).resolve()), ReshardConfig(release, round, samples_per_shard, name))
    get_run_logger().info("release %s round %d: %d shards, counts %s", manifest["release"], round, len(manifest["shards"]), manifest["counts"])
    return manifest
