"""`train-regressor`: train the HSMR-style regressor on a release round, evaluate it, checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from skelpgt.datasets.release import list_rounds
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import evaluate, markdown_table
from skelpgt.model.train import TrainConfig, train
from skelpgt.model.train import recipe as recipe_kwargs
from skelpgt.pipelines.launch import Launch, failure_line, run_logged, torchrun_command


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


def finished_step(out: Path, steps: int) -> int | None:
    """Step of `<out>/last.pt` when it has reached `steps` (a finished run: nothing to train), else None."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    step = int(torch.load(last, map_location="cpu", weights_only=False, mmap=True)["step"])  # mmap: reads the step, not the weights
    return step if step >= steps else None


def train_distributed(cfg: TrainConfig, launch: Launch) -> dict:
    """Train `cfg` under torchrun with `launch`'s ranks; the result rank 0 wrote (train_metrics.json), or {} on other nodes.

    Output goes to the flow log and `<out_dir>/torchrun.log` (`torchrun-node<k>.log` on node k > 0: the folder may be
    shared by the nodes); a failed rank raises one RuntimeError line."""
    logger = get_run_logger()
    out = Path(cfg.out_dir)
    config = cfg.write_json(out / "train_config.json")
    log = out / ("torchrun.log" if launch.node_rank == 0 else f"torchrun-node{launch.node_rank}.log")
    cmd = torchrun_command(config, launch)
    logger.info("%d ranks (%d per node × %d nodes, this node %d) via torchrun on %s:%s; log %s",
                launch.world, launch.nproc, launch.nnodes, launch.node_rank, launch.master_addr, launch.master_port, log)  # fmt: skip
    metrics = out / "train_metrics.json"
    before = metrics.stat().st_mtime_ns if metrics.exists() else None
    rc = run_logged(cmd, log, logger.info)
    if rc != 0:
        raise RuntimeError(failure_line(rc, log))
    if launch.node_rank != 0:  # rank 0 (node 0) writes the checkpoints and the metrics
        return {}
    if not metrics.exists() or metrics.stat().st_mtime_ns == before:
        raise RuntimeError(f"torchrun exited 0 but rank 0 wrote no {metrics}; see {log}")
    return json.loads(metrics.read_text())


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
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port).checked()
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
    logger = get_run_logger()
    done = finished_step(out, steps) if resume else None
    if done is not None:
        logger.info("%s has reached step %d >= steps=%d: not retrained", out / "last.pt", done, steps)
        previous = json.loads((out / "train_metrics.json").read_text()) if (out / "train_metrics.json").exists() else {}
        result = {"checkpoint": str(out / "last.pt"), "start_step": done, "step": done, "sources": previous.get("sources")}
    elif launch.world > 1:
        result = train_distributed(cfg, launch)
        if not result:
            logger.info("node %d: training done; node 0 evaluates", node_rank)
            return {"checkpoint": None, "node_rank": node_rank, "world": launch.world}
    else:
        cfg.write_json(out / "train_config.json")
        result = train(cfg)
    metrics = evaluate(result["checkpoint"], release_dir, round=round, split="val", models_dir=models_dir, out_dir=out / "eval")
    create_markdown_artifact(key="train-regressor-eval", markdown=markdown_table(metrics) + source_table(result.get("sources")))
    logger.info("checkpoint %s: steps %d → %d", result["checkpoint"], result["start_step"], result["step"])
    return {"checkpoint": str(result["checkpoint"]), "start_step": result["start_step"], "step": result["step"],
            "world": launch.world, "metrics": metrics, "sources": result.get("sources")}  # fmt: skip
