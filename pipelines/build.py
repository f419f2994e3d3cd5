"""`build-pseudo-gt`: source shards → SKEL round-0 labels → label store → release.

Thin orchestration over `skelpgt.datasets.pseudo_gt`: one task per source shard converts it
(orig + flip) and keeps its labels in the work folder, so a rerun skips finished shards; a single
task writes the label store; one task per shard writes its release shard; a last task writes the
manifest. Per-shard tasks run in order in-process, or on Dask (`dask_address`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from skelpgt.datasets import pseudo_gt
from skelpgt.datasets.readers import source_files
from skelpgt.datasets.release import check_release_name
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.device import check_flow_device
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.pipelines.runners import results_with_progress, task_runner


@functools.lru_cache(maxsize=4)
def _converter(models_dir: str, config: ConvertConfig, device: str = "cpu") -> Converter:
    """One converter per worker process, configuration and device (model loading takes seconds)."""
    return Converter.from_models_dir(models_dir, config, device=device)


@task(name="convert-shard", cache_policy=NO_CACHE, retries=1)
def convert_shard(source: str, out: str, models_dir: str, config: ConvertConfig, torch_threads: int, device: str = "cpu") -> str:
    """Convert one source shard (skipped when its saved labels are current) on `device` (resolved on the worker); returns the labels file."""
    torch.set_num_threads(torch_threads)  # fixed, so the numbers do not depend on the machine
    conv = pseudo_gt.convert_source_shard(source, _converter(models_dir, config, device), out)
    get_run_logger().info(
        "%s: %d labelled, %d unlabelled, %d quarantined in %.1fs", Path(source).name, conv.n_labelled, conv.n_unlabelled, len(conv.quarantine), conv.seconds
    )
    return out


@task(name="record-labels", cache_policy=NO_CACHE)
def record_labels(store: str, conversions: list[pseudo_gt.ShardConversion]) -> dict[str, dict[str, int]]:
    """Append round-0 labels of every shard to the label store (the only writer)."""
    return pseudo_gt.record_round0(store, conversions)


@task(name="write-release-shard", cache_policy=NO_CACHE)
def write_release_shard(conv: pseudo_gt.ShardConversion, label_ids: dict, stage: str, index: int, release: str):
    """Write the release shard of one source shard (None when every person of it was quarantined)."""
    info = pseudo_gt.write_release_shard(conv, label_ids, stage, index=index, release=release)
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
    logger = get_run_logger()
    check_release_name(release)  # before anything is written anywhere
    device = check_flow_device(device, dask_address)
    workdir_path = Path(workdir).resolve()
    models = str(ensure_models_dir(models_dir))
    if not inputs:
        inputs = [str(_synthetic_inputs(workdir_path, synthetic_images, synthetic_seed, models))]
    sources = source_files(inputs)
    if not sources:
        raise ValueError(f"no .tar or .npz input found in {inputs}")
    config = ConvertConfig(method=method, chunk_size=batch_size, smpl_gender=smpl_gender, skel_gender=skel_gender, beta_bound=beta_bound)
    outs = [str(pseudo_gt.conversion_path(workdir_path, release, s)) for s in sources]
    runner = task_runner(dask_address)
    label_files = convert_shards.with_options(task_runner=runner)(sources, outs, models, config, torch_threads, device)

    conversions = pseudo_gt.drop_duplicate_images([_load(f) for f in label_files])
    summary = pseudo_gt.summarize(conversions)
    manifest = pseudo_gt.release_round0(
        workdir_path, release, conversions, config, models, overwrite=overwrite, record=record_labels, write_shard=write_release_shard
    )
    release_dir = workdir_path / "releases" / release / "round-0"
    create_markdown_artifact(key="build-pseudo-gt-summary", markdown=_summary_markdown(release_dir, summary, manifest))
    logger.info("release %s: %s", release_dir, summary)
    return {"release": str(release_dir), "summary": summary, "manifest": manifest}


def _load(label_file: str) -> pseudo_gt.ShardConversion:
    conv = pseudo_gt.load_conversion(label_file)
    if conv is None:
        raise RuntimeError(f"{label_file}: converted labels unreadable; rerun the flow to convert that shard again")
    return conv


def _synthetic_inputs(workdir: Path, n_images: int, seed: int, models_dir: str) -> Path:
    """The synthetic dataset of this workdir (generated once)."""
    from skelpgt.datasets.synthetic import make_synthetic_dataset

    out = workdir / "source" / f"synthetic-{n_images}-{seed}"
    if not (out / "dataset.json").is_file():
        make_synthetic_dataset(out, n_images, seed=seed, models_dir=models_dir)
    return out / "shards"


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
