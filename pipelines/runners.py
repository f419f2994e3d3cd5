"""Task runners of the flows: one task at a time in-process, or Dask (`dask_address`)."""

from __future__ import annotations

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
