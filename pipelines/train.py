"""`train-regressor`: train the HSMR-style regressor on a release round, evaluate it, checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from skelpgt.datasets.release import list_rounds
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import evaluate, markdown_table
from skelpgt.model.train import TrainConfig, train


@flow(name="train-regressor")
def train_regressor(
    workdir: str = "work/demo",
    release: str = "synthetic",
    round: int | None = None,
    arch: str = "vit-tiny",
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 3e-4,
    models_dir: str | None = None,
    resume: bool = True,
) -> dict:
    """Train on `release` round `round` (default: latest) into <workdir>/checkpoints/<release>/round-<k>; evaluate."""
    workdir_path = Path(workdir).resolve()
    release_dir = workdir_path / "releases" / release
    rounds = list_rounds(release_dir)
    if not rounds:
        raise FileNotFoundError(f"no release rounds under {release_dir}; run build-pseudo-gt first")
    round = rounds[-1] if round is None else round
    out = workdir_path / "checkpoints" / release / f"round-{round}"
    data = DataConfig(release=str(release_dir), round=round, split="train", batch_size=batch_size)
    result = train(TrainConfig(data=data, out_dir=str(out), models_dir=models_dir, arch=arch, steps=steps, lr=lr, resume=resume))
    metrics = evaluate(result["checkpoint"], release_dir, round=round, split="val", models_dir=models_dir, out_dir=out / "eval")
    create_markdown_artifact(key="train-regressor-eval", markdown=markdown_table(metrics))
    get_run_logger().info("checkpoint %s after %d steps", result["checkpoint"], result["step"])
    return {"checkpoint": str(result["checkpoint"]), "metrics": metrics}
