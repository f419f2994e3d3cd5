"""`build-pseudo-gt`: source shards → SKEL round-0 labels → label store → release.

Runs the use case `skelpgt.pipelines.usecases.build_round0` with its steps as tasks: one task per
source shard converts it (orig + flip) and keeps its labels in the work folder, so a rerun skips
finished shards; a single task writes the label store; one task per shard writes its release shard.
Per-shard tasks run in order in-process, or on Dask (`dask_address`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from skelpgt.datasets.conversion import ShardConversion, record_round0
from skelpgt.datasets.conversion import write_release_shard as write_shard
from skelpgt.datasets.workdir import Workdir, check_release_name
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.device import check_flow_device
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.pipelines.runners import results_with_progress, task_runner
from skelpgt.pipelines.usecases.build import BuildConfig, Round0Steps, build_round0, convert_source_shard


@functools.lru_cache(maxsize=4)
def _converter(models_dir: str, config: ConvertConfig, device: str = "cpu") -> Converter:
    """One converter per worker process, configuration and device (model loading takes seconds)."""
    return Converter.from_models_dir(models_dir, config, device=device)


@task(name="convert-shard", cache_policy=NO_CACHE, retries=1)
def convert_shard(source: str, out: str, models_dir: str, config: ConvertConfig, torch_threads: int, device: str = "cpu") -> str:
    """Convert one source shard (skipped when its saved labels are current) on `device` (resolved on the worker); returns the labels file."""
    torch.set_num_threads(torch_threads)  # fixed, so the numbers do not depend on the machine
    conv = convert_source_shard(source, _converter(models_dir, config, device), out)
    get_run_logger().info(
        "%s: %d labelled, %d unlabelled, %d quarantined in %.1fs", Path(source).name, conv.n_labelled, conv.n_unlabelled, len(conv.quarantine), conv.seconds
    )
    return out


@task(name="record-labels", cache_policy=NO_CACHE)
def record_labels(store: str, conversions: list[ShardConversion]) -> dict[str, dict[str, int]]:
    """Append round-0 labels of every shard to the label store (the only writer)."""
    return record_round0(store, conversions)


@task(name="write-release-shard", cache_policy=NO_CACHE)
def write_release_shard(conv: ShardConversion, label_ids: dict, stage: str, index: int, release: str):
    """Write the release shard of one source shard (None when every person of it was quarantined)."""
    info = write_shard(conv, label_ids, stage, index=index, release=release)
    if info is None:
        get_run_logger().info("%s: no release shard (every person quarantined)", Path(conv.source).name)
    else:
        get_run_logger().info("%s: %d images, %d persons, sha256 %s", info.name, info.samples, info.persons, info.sha256[:12])
    return info


@flow(name="convert-shards")
def convert_shards(sources: list[str], outs: list[str], models_dir: str, config: ConvertConfig, torch_threads: int, device: str = "cpu") -> list[str]:
    """Map `convert-shard` over the sources, reporting progress as shards finish."""
    futures = convert_shard.map(sources, outs, unmapped(models_dir), unmapped(config), unmapped(torch_threads), unmapped(device))
    return results_with_progress(futures, "build-pseudo-gt-progress", "source shards converted")


@flow(name="build-pseudo-gt", log_prints=True)
def build_pseudo_gt(
    inputs: list[str] | None = None,
    workdir: str = "work/demo",
    release: str = "synthetic",
    models_dir: str | None = None,
    method: str = "fast",
    batch_size: int = 256,
    smpl_gender: str = "neutral",
    skel_gender: str = "male",
    synthetic_images: int = 48,
    synthetic_seed: int = 0,
    torch_threads: int = 2,
    dask_address: str | None = None,
    overwrite: bool = False,
    beta_bound: float | None = None,
    device: str = "cpu",
) -> dict:
    """Build release round 0 from HMR2.0-style tars / npz files (default: the synthetic dataset).

    An existing round 0 built from other inputs or settings is refused before anything is
    written; `overwrite=true` replaces it (new label rows for changed sources, old rows kept).
    `beta_bound` (e.g. 3, off by default) softly holds |SKEL β| inside HSMR's loader's validity bound.
    `device` ('cpu', 'cuda', 'cuda:N') is where the converter fits; `cuda` on Dask: each worker's
    own GPU (fitting.device). Labels are the same up to float rounding, so it is not in the digest.
    """
    check_release_name(release)  # before anything is written anywhere
    device = check_flow_device(device, dask_address)
    models = str(ensure_models_dir(models_dir))
    config = ConvertConfig(method=method, chunk_size=batch_size, smpl_gender=smpl_gender, skel_gender=skel_gender, beta_bound=beta_bound)
    runner = task_runner(dask_address)

    def convert(sources: list[str], outs: list[str]) -> list[str]:
        return convert_shards.with_options(task_runner=runner)(sources, outs, models, config, torch_threads, device)

    steps = Round0Steps(convert, config, models, record=record_labels, write_shard=write_release_shard)
    build = BuildConfig(tuple(inputs or ()), release, overwrite, synthetic_images, synthetic_seed)
    built = build_round0(Workdir(Path(workdir).resolve()), build, steps)
    create_markdown_artifact(key="build-pseudo-gt-summary", markdown=_summary_markdown(built.folder, built.summary, built.manifest))
    get_run_logger().info("release %s: %s", built.folder, built.summary)
    return {"release": str(built.folder), "summary": built.summary, "manifest": built.manifest}


def _summary_markdown(release_dir: Path, summary: dict, manifest: dict) -> str:
    pm, px = summary["pve_mean_mm"], summary["pve_max_mm"]
    return "\n".join(
        [
            f"# build-pseudo-gt: `{release_dir}`",
            "",
            "| persons in | labelled | unlabelled (no SMPL) | quarantined | shards | fits/s |",
            "|---|---|---|---|---|---|",
            f"| {summary['persons_in']} | {summary['labelled']} | {summary['unlabelled']} | {summary['quarantined']} | {summary['shards']} | {summary['fits_per_s']:.1f} |",
            "",
            "| orig side, mm | p50 | p90 | p99 |",
            "|---|---|---|---|",
            f"| pve_mean | {pm[50]:.1f} | {pm[90]:.1f} | {pm[99]:.1f} |",
            f"| pve_max | {px[50]:.1f} | {px[90]:.1f} | {px[99]:.1f} |",
            "",
            *_hsmr_invalid_markdown(manifest.get("hsmr_invalid")),
            f"label digest `{manifest.get('label_digest', '')}`",
        ]
    )


def _hsmr_invalid_markdown(entry: dict | None) -> list[str]:
    """The manifest's count of labels HSMR's loader would drop, as a small table (nothing if absent)."""
    if not entry:
        return []
    reasons = entry["by_reason"]
    return [
        f"HSMR's loader would treat {entry['invalid']} of {entry['labels']} labels (orig + flip sides) as invalid:",
        "",
        "| " + " | ".join(reasons) + " |",
        "|" + "---|" * len(reasons),
        "| " + " | ".join(str(v) for v in reasons.values()) + " |",
        "",
    ]
