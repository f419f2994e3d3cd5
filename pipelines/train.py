"""`train-regressor`: train the HSMR-style regressor on a release round, evaluate it, checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from skelpgt.datasets.release import list_rounds
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import evaluate, markdown_table
from skelpgt.model.train import TrainConfig, train
from skelpgt.model.train import recipe as recipe_kwargs


def checkpoint_dir(workdir: Path, release: str, round: int) -> Path:
    """Folder of the checkpoints trained on release `release` round `round`."""
    return workdir / "checkpoints" / release / f"round-{round}"


def source_table(sources: dict | None) -> str:
    """Markdown of the per-source counts of `skelpgt.model.data.source_counts` ('' if none)."""
    if not sources:
        return ""
    cols = list(next(iter(sources.values())))
    lines = ["", "Training sources (HSMR's validity rules):", "", "| source | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| `{spec}` | " + " | ".join(str(c.get(k, "")) for k in cols) + " |" for spec, c in sources.items()]
    return "\n".join(lines) + "\n"


@flow(name="train-regressor")
def train_regressor(
    workdir: str = "work/demo",
    release: str = "synthetic",
    round: int | None = None,
    arch: str = "vit-tiny-conv",
    steps: int = 600,
    batch_size: int = 16,
    recipe: str = "from-scratch",
    lr: float | None = None,
    backbone_weights: str | None = None,
    models_dir: str | None = None,
    resume: bool = True,
    sources: list | None = None,
) -> dict:
    """Train on `release` round `round` (default: latest) into <workdir>/checkpoints/<release>/round-<k>; evaluate.

    `recipe`: 'from-scratch' (CPU default, random init) or 'hsmr' (HSMR's fine-tuning setting; give
    `arch=vit-h` and `backbone_weights` for real training); `lr` overrides the recipe's. `sources`:
    [[spec, weight], ...] of HSMR-v1 tar sets (brace range, glob, folder) or releases, mixed with the
    release round (weight 1); the artifact lists every source's counts under HSMR's validity rules."""
    workdir_path = Path(workdir).resolve()
    release_dir = workdir_path / "releases" / release
    rounds = list_rounds(release_dir)
    if not rounds:
        raise FileNotFoundError(f"no release rounds under {release_dir}; run build-pseudo-gt first")
    round = rounds[-1] if round is None else round
    out = checkpoint_dir(workdir_path, release, round)
    # mixed: the round folder itself, so that `round` does not apply to the other sources
    mix = ((str(release_dir / f"round-{round}"), 1.0), *((str(p), float(w)) for p, w in sources)) if sources else None
    data = DataConfig(release=str(release_dir), round=None if mix else round, split="train", batch_size=batch_size, mix=mix)
    cfg = TrainConfig(data=data, out_dir=str(out), models_dir=models_dir, arch=arch, steps=steps, resume=resume,
                      backbone_weights=backbone_weights, ckpt_every=max(steps // 4, 1), log_every=50, **recipe_kwargs(recipe, lr=lr))  # fmt: skip
    result = train(cfg)
    metrics = evaluate(result["checkpoint"], release_dir, round=round, split="val", models_dir=models_dir, out_dir=out / "eval")
    create_markdown_artifact(key="train-regressor-eval", markdown=markdown_table(metrics) + source_table(result.get("sources")))
    get_run_logger().info("checkpoint %s after %d steps", result["checkpoint"], result["step"])
    return {"checkpoint": str(result["checkpoint"]), "metrics": metrics, "sources": result.get("sources")}
