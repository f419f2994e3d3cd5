"""Task runners of the flows (one task at a time in-process, or Dask: `dask_address`) and their progress artifacts."""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner


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
