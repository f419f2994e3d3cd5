"""Task runners of the flows (one task at a time in-process, or Dask: `dask_address`), their progress artifacts,
and the shard-writing task that `refine-labels` and `release-shards` share."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from skelpgt.datasets.samples import Part, write_part
from skelpgt.datasets.shards import ShardInfo


def task_runner(dask_address: str | None):
    """In-process (one task at a time; torch uses the cores) or Dask: 'tcp://host:port' or 'local:N' (N one-thread worker processes)."""
    if not dask_address:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner  # optional extra (`pip install skel-pgt[dask]`): imported only when asked for

    if dask_address.startswith("local:"):
        workers = int(dask_address.split(":", 1)[1])
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
        )
    return DaskTaskRunner(address=dask_address)


def results_with_progress(futures: list, key: str, description: str) -> list:
    """Results of task `futures` in submission order, with a progress artifact `key` updated as they finish."""
    progress = create_progress_artifact(0.0, key=key, description=description)
    for done, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress, 100.0 * done / len(futures))
    return [f.result() for f in futures]


@task(name="write-round-shard", cache_policy=NO_CACHE, retries=1)
def write_round_shard(part: Part, labels: dict, skips: dict, stage: str, index: int, release: str, round: int) -> ShardInfo:
    """Release shard `index` of a round into its staging folder (`samples.write_part`)."""
    info = write_part(part, labels, skips, stage, index=index, release=release, round=round)
    get_run_logger().info("%s: %d images, %d persons, sha256 %s", info.name, info.samples, info.persons, info.sha256[:12])
    return info


def write_parts_as_tasks(shards: list[tuple[Part, dict, dict]], stage: Path, release: str, round: int) -> list[ShardInfo]:
    """`samples.write_parts` with one `write-round-shard` task per shard, on the calling flow's task runner."""
    futures = [write_round_shard.submit(part, labels, skips, str(stage), i, release, round) for i, (part, labels, skips) in enumerate(shards)]
    return [f.result() for f in futures]
