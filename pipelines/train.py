"""`train-regressor`: train the HSMR-style regressor on a release round, evaluate it, checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from skelpgt.datasets.workdir import Workdir
from skelpgt.model.evaluate import markdown_table
from skelpgt.pipelines.launch import Launch
from skelpgt.pipelines.usecases.train import TrainRoundConfig, train_round


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
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> dict:
    """Train on `release` round `round` (default: latest) into <workdir>/checkpoints/<release>/round-<k>; evaluate.

    `recipe`: 'from-scratch' (CPU default, random init) or 'hsmr' (HSMR's fine-tuning setting; give
    `arch=vit-h` and `backbone_weights` for real training); `lr` overrides the recipe's. `sources`:
    [[spec, weight], ...] of HSMR-v1 tar sets (brace range, glob, folder) or releases, mixed with the
    release round (weight 1); the artifact lists every source's counts under HSMR's validity rules.

    `nproc` ranks per node × `nnodes` nodes > 1: the flow runs torchrun itself (DDP: gloo on CPU, nccl on
    GPU) with the config as `<out>/train_config.json`, output in `<out>/torchrun.log`. Several nodes: run
    this flow on each with its `node_rank`, node 0's `master_addr` and one `master_port`; node 0 (rank 0)
    writes the checkpoints and evaluates, the others return after training. One node picks a free port.
    `resume` (default): continue from `<out>/last.pt`; a run that already reached `steps` is not retrained."""
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port)
    config = TrainRoundConfig(release, round, arch, steps, batch_size, recipe, lr, backbone_weights, models_dir, resume, tuple(sources or ()))
    trained = train_round(Workdir(Path(workdir).resolve()), config, launch, emit=get_run_logger().info)
    if trained.checkpoint is None:  # a node > 0: node 0 evaluates
        return {"checkpoint": None, "node_rank": node_rank, "world": trained.world}
    create_markdown_artifact(key="train-regressor-eval", markdown=markdown_table(trained.metrics) + source_table(trained.sources))
    return {"checkpoint": trained.checkpoint, "start_step": trained.start_step, "step": trained.step,
            "world": trained.world, "metrics": trained.metrics, "sources": trained.sources}  # fmt: skip
