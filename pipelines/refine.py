"""`refine-labels`: one SKELify refinement round of a release (round N → N+1), scheduled in prefect.yaml."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from skelpgt.datasets.refine import refine_round
from skelpgt.datasets.release import list_rounds
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.skelify import Skelify, SkelifyConfig


class NotBuiltYet(RuntimeError):
    """A requested feature exists in the interface but not yet in the code."""


@flow(name="refine-labels")
def refine_labels(
    workdir: str = "work/demo",
    release: str = "synthetic",
    from_round: int | None = None,
    checkpoint: str | None = None,
    models_dir: str | None = None,
    iterations: int = 10,
    batch_size: int = 64,
) -> dict:
    """SKELify every label of round `from_round` (default: the latest) and release round N+1."""
    if checkpoint:
        raise NotBuiltYet("starting SKELify from regressor predictions needs the regressor (train-regressor), not built yet")
    workdir_path = Path(workdir).resolve()
    rounds = list_rounds(workdir_path / "releases" / release)
    if not rounds:
        raise FileNotFoundError(f"no release rounds under {workdir_path / 'releases' / release}; run build-pseudo-gt first")
    start = rounds[-1] if from_round is None else from_round
    models = ensure_models_dir(models_dir)
    skelify = Skelify(SKEL.from_file(models), KeypointRegressor.from_models_dir(models), SkelifyConfig(iterations=iterations))
    report = refine_round(workdir_path, release, start, skelify, batch_size=batch_size)
    table = "\n".join(
        [
            f"# refine-labels: {release} round {start} → {report.round}",
            "",
            "| changed | kept | skipped | kp2d_err before | after | limit violation ° before | after |",
            "|---|---|---|---|---|---|---|",
            f"| {report.changed} | {report.kept} | {report.skipped} | {report.kp2d_err_before:.4f} | {report.kp2d_err_after:.4f} | {report.violation_before:.2f} | {report.violation_after:.2f} |",
        ]
    )
    create_markdown_artifact(key="refine-labels-round", markdown=table)
    get_run_logger().info("round %d: %d changed, %d kept", report.round, report.changed, report.kept)
    return {"round": report.round, "changed": report.changed, "kept": report.kept, "manifest": report.manifest}
