"""`refine-labels`: one SKELify refinement round of a release (round N → N+1), scheduled in prefect.yaml.

Runs the use case `skelpgt.pipelines.usecases.refine_round` with its parallel steps as tasks:
`predict-shard` per release shard (with a checkpoint), `skelify-chunk` per chunk of persons (each
leaves its candidates in the work folder, so a rerun or a retried task on another worker reuses
them), `record-round` (the only label store writer, in the flow process), `write-round-shard` per
release shard. Chunks and shards are fixed by the round's inputs, never by the workers: the same
labels and manifest bytes on one process or any number of Dask workers (`dask_address`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from skelpgt.datasets.release import read_manifest
from skelpgt.datasets.rounds import find_truth
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.device import check_flow_device
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.skelify import Skelify, SkelifyConfig
from skelpgt.model import predict as regressor
from skelpgt.pipelines.runners import results_with_progress, task_runner, write_parts_as_tasks
from skelpgt.pipelines.usecases import refine
from skelpgt.pipelines.usecases.report import errors_vs_truth


@functools.lru_cache(maxsize=2)
def _skelify(models_dir: str, config: SkelifyConfig, device: str) -> Skelify:
    """One SKELify per worker process, configuration and device (model loading takes seconds)."""
    return Skelify.from_models_dir(models_dir, config, device=device)


@task(name="predict-shard", cache_policy=NO_CACHE, retries=1)
def predict_shard(checkpoint: str, shard: str, out: str, models_dir: str, device: str, torch_threads: int) -> str:
    """The regressor's predictions of one release shard (kept when already made) → their file."""
    torch.set_num_threads(torch_threads)
    return str(regressor.predict_shard(checkpoint, shard, out, models_dir=models_dir, device=device))


@task(name="skelify-chunk", cache_policy=NO_CACHE, retries=1)
def skelify_chunk(job: refine.ChunkJob, folder: str, models_dir: str, config: SkelifyConfig, device: str, torch_threads: int) -> str:
    """Score and SKELify one chunk of persons into the round's candidates folder → its candidate file."""
    torch.set_num_threads(torch_threads)  # fixed, so the numbers do not depend on the machine
    return str(refine.run_chunk(job, _skelify(models_dir, config, device), folder))


@task(name="record-round", cache_policy=NO_CACHE)
def record_round(plan: refine.RoundPlan, files: list[str]) -> tuple[dict, dict]:
    """Append every chunk's candidates to the label store and set round N+1's labels (the only writer)."""
    return refine.record_round(plan, files)


def task_steps(models: str, config: SkelifyConfig, device: str, torch_threads: int) -> refine.RoundSteps:
    """The round's parallel steps as this module's tasks, on the calling flow's task runner."""

    def predict(checkpoint: str, parts: list, models_dir: str, device: str) -> list:
        shards, files = ([str(p) for p in col] for col in zip(*parts))
        futures = predict_shard.map(unmapped(checkpoint), shards, files, unmapped(models_dir), unmapped(device), unmapped(torch_threads))
        return results_with_progress(futures, "refine-labels-predictions", "release shards predicted")

    def fit(jobs: list, folder: Path) -> list:
        futures = skelify_chunk.map(jobs, unmapped(str(folder)), unmapped(models), unmapped(config), unmapped(device), unmapped(torch_threads))
        return results_with_progress(futures, "refine-labels-progress", "chunks of persons SKELified")

    record = lambda plan, files: record_round(quote(plan), files)  # noqa: E731  (quoted: Prefect would scan every label of the plan)
    return refine.RoundSteps(fit, record, write_parts_as_tasks, predict)


@flow(name="refine-round")
def refine_round_on_runner(workdir: Workdir, config: refine.RefineConfig, skelify: SkelifyConfig, torch_threads: int) -> refine.RoundReport:
    """`refine_round` with its steps as tasks on this flow's task runner (the caller sets it) → the round's report."""
    torch.set_num_threads(torch_threads)
    planner = _skelify(config.models_dir, skelify, "cpu")  # plans in the flow process; fits run in the tasks
    return refine.refine_round(workdir, config, planner, task_steps(config.models_dir, skelify, config.device, torch_threads))


@flow(name="refine-labels")
def refine_labels(
    workdir: str = "work/demo",
    release: str = "synthetic",
    from_round: int | None = None,
    checkpoint: str | None = "latest",
    models_dir: str | None = None,
    iterations: int = 10,
    batch_size: int = 64,
    camera: str = "fit-focal",
    dask_address: str | None = None,
    device: str = "cpu",
    torch_threads: int = 2,
) -> dict:
    """SKELify every label of round `from_round` (default: the latest) and release round N+1; with a
    `checkpoint`, also from the regressor's predictions (their checkpoint's sha256 goes on every new row).
    'latest' = train-regressor's `<workdir>/checkpoints/<release>/round-<N>/last.pt` when it exists
    (so train → refine → train runs as a schedule); None = from the labels only. `camera`: 'fit-focal'
    (the dataset's intrinsics, else each image's focal fitted from its labelled people), 'full-image'
    (else CLIFF's estimate from the image size), 'source' or 'crop' (HSMR's). `dask_address`:
    'tcp://host:port' or 'local:N' spreads predictions, fits and release shards over Dask workers;
    `device` ('cpu', 'cuda', 'cuda:N') is where fits and predictions run (each Dask worker resolves
    'cuda' to its own GPU); `torch_threads` per task."""
    device = check_flow_device(device, dask_address)  # an unknown device or a missing GPU: one line, before any work
    workdir_path = Workdir(Path(workdir).resolve())
    config = refine.RefineConfig(release, from_round, checkpoint, batch_size, camera, str(ensure_models_dir(models_dir)), device)
    run = refine_round_on_runner.with_options(task_runner=task_runner(dask_address))
    report = run(workdir_path, config, SkelifyConfig(iterations=iterations), torch_threads)
    truth = find_truth(read_manifest(workdir_path.round(release, report.from_round))["config"].get("sources", []))
    # Where the truth is known (synthetic sources): camera-frame and Procrustes-aligned MPJPE, mm.
    mpjpe, pa = zip(*(errors_vs_truth(workdir_path, r, truth, config.models_dir) for r in (report.from_round, report.round)))  # (before, after) each
    digest = report.manifest["config"]["refine"]["checkpoint_digest"]
    create_markdown_artifact(key="refine-labels-round", markdown=_round_markdown(release, report, digest, mpjpe, pa))
    get_run_logger().info("round %d: %d changed, %d kept", report.round, report.changed, report.kept)
    finite = lambda values: {k: (None if math.isnan(v) else v) for k, v in zip(("before", "after"), values)}  # noqa: E731
    return {
        "round": report.round, "changed": report.changed, "kept": report.kept, "skipped": report.skipped,
        "checkpoint_digest": digest, "mpjpe_mm": finite(mpjpe), "pa_mpjpe_mm": finite(pa), "manifest": report.manifest,
    }  # fmt: skip


def _round_markdown(release: str, report: refine.RoundReport, digest: str, mpjpe: tuple, pa: tuple) -> str:
    """The round's artifact: decisions, fit quality and (where the truth is known) label error before/after."""
    mm = lambda v: "–" if math.isnan(v) else f"{v:.1f}"  # noqa: E731  (NaN: truth unknown)
    return "\n".join(
        [
            f"# refine-labels: {release} round {report.from_round} → {report.round}",
            "",
            f"checkpoint: `{report.checkpoint or '–'}` sha256 `{digest[:16] or '–'}`",
            "",
            "| changed | kept | skipped | kp2d_err before | after | limit violation ° before | after | MPJPE vs truth (mm) before | after | PA-MPJPE (mm) before | after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {report.changed} | {report.kept} | {report.skipped} | {report.kp2d_err_before:.4f} | {report.kp2d_err_after:.4f} | "
            f"{report.violation_before:.2f} | {report.violation_after:.2f} | {mm(mpjpe[0])} | {mm(mpjpe[1])} | {mm(pa[0])} | {mm(pa[1])} |",
        ]
    )
