"""`refine-labels`: one SKELify refinement round of a release (round N → N+1), scheduled in prefect.yaml."""

from __future__ import annotations

import math
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from skelpgt.datasets.refine import predict_round, refine_round
from skelpgt.datasets.release import list_rounds, read_manifest, round_dir
from skelpgt.datasets.rounds import find_truth, label_error_vs_truth
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.skelify import Skelify, SkelifyConfig
from skelpgt.pipelines.train import checkpoint_dir


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
) -> dict:
    """SKELify every label of round `from_round` (default: the latest) and release round N+1; with a
    `checkpoint`, also from the regressor's predictions (their checkpoint's sha256 goes on every new row).
    'latest' = train-regressor's `<workdir>/checkpoints/<release>/round-<N>/last.pt` when it exists
    (so train → refine → train runs as a schedule); None = from the labels only. `camera`: 'fit-focal'
    (the dataset's intrinsics, else each image's focal fitted from its labelled people), 'full-image'
    (else CLIFF's estimate from the image size), 'source' or 'crop' (HSMR's)."""
    workdir_path = Path(workdir).resolve()
    rounds = list_rounds(workdir_path / "releases" / release)
    if not rounds:
        raise FileNotFoundError(f"no release rounds under {workdir_path / 'releases' / release}; run build-pseudo-gt first")
    start = rounds[-1] if from_round is None else from_round
    if checkpoint == "latest":
        found = checkpoint_dir(workdir_path, release, start) / "last.pt"
        checkpoint = str(found) if found.exists() else None
    models = ensure_models_dir(models_dir)
    predictions, digest = predict_round(checkpoint, workdir_path, release, start, models) if checkpoint else (None, "")
    skelify = Skelify(SKEL.from_file(models), KeypointRegressor.from_models_dir(models), SkelifyConfig(iterations=iterations))
    report = refine_round(workdir_path, release, start, skelify, predictions=predictions, checkpoint_digest=digest, batch_size=batch_size, camera=camera)
    truth = find_truth(read_manifest(round_dir(workdir_path, release, start))["config"].get("sources", []))
    # Where the truth is known (synthetic sources): camera-frame and Procrustes-aligned MPJPE, mm.
    mpjpe, pa = (
        [label_error_vs_truth(workdir_path, r, truth, models, aligned=a) * 1000 if truth else float("nan") for r in (start, report.round)]
        for a in (False, True)
    )
    mm = lambda v: "–" if math.isnan(v) else f"{v:.1f}"  # noqa: E731  (NaN: truth unknown)
    table = "\n".join(
        [
            f"# refine-labels: {release} round {start} → {report.round}",
            "",
            f"checkpoint: `{checkpoint or '–'}` sha256 `{digest[:16] or '–'}`",
            "",
            "| changed | kept | skipped | kp2d_err before | after | limit violation ° before | after | MPJPE vs truth (mm) before | after | PA-MPJPE (mm) before | after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {report.changed} | {report.kept} | {report.skipped} | {report.kp2d_err_before:.4f} | {report.kp2d_err_after:.4f} | "
            f"{report.violation_before:.2f} | {report.violation_after:.2f} | {mm(mpjpe[0])} | {mm(mpjpe[1])} | {mm(pa[0])} | {mm(pa[1])} |",
        ]
    )
    create_markdown_artifact(key="refine-labels-round", markdown=table)
    get_run_logger().info("round %d: %d changed, %d kept", report.round, report.changed, report.kept)
    return {
        "round": report.round, "changed": report.changed, "kept": report.kept, "skipped": report.skipped,
        "checkpoint_digest": digest, "mpjpe_mm": {k: (None if math.isnan(v) else v) for k, v in zip(("before", "after"), mpjpe)},
        "pa_mpjpe_mm": {k: (None if math.isnan(v) else v) for k, v in zip(("before", "after"), pa)}, "manifest": report.manifest,
    }  # fmt: skip
