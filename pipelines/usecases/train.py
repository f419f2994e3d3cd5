"""Train the regressor on a release round (in this process or under torchrun), then evaluate it on the round's val split."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from skelpgt.datasets.workdir import Workdir
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import evaluate
from skelpgt.model.train import TrainConfig, recipe, train

from ..launch import Launch, failure_line, run_logged, torchrun_command


@dataclass(frozen=True)
class TrainRoundConfig:
    """Train on release `release` round `round` (None: the latest) into `Workdir.checkpoints`.

    `recipe`: 'from-scratch' or 'hsmr' (`model.train.recipe`), `lr` overrides its rate; `sources`:
    [[spec, weight], ...] of other HSMR-v1 tar sets or releases mixed with the round (weight 1);
    `resume`: continue from `last.pt` (a run that reached `steps` is not retrained)."""

    release: str = "synthetic"
    round: int | None = None
    arch: str = "vit-tiny-conv"
    steps: int = 600
    batch_size: int = 16
    recipe: str = "from-scratch"
    lr: float | None = None
    backbone_weights: str | None = None
    models_dir: str | None = None
    resume: bool = True
    sources: tuple = ()


@dataclass
class Trained:
    """A training run: its checkpoint (None on a node > 0), steps start → end, world size, val metrics, per-source counts."""

    checkpoint: str | None
    start_step: int
    step: int
    world: int
    metrics: dict | None = None
    sources: dict | None = None


def train_config(workdir: Workdir, config: TrainRoundConfig, round: int) -> TrainConfig:
    """The model's TrainConfig of training `config` on `round`."""
    release_dir, out = workdir.release(config.release), workdir.checkpoints(config.release, round)
    # mixed: the round folder itself, so that `round` does not apply to the other sources
    mix = ((str(workdir.round(config.release, round)), 1.0), *((str(p), float(w)) for p, w in config.sources)) if config.sources else None
    data = DataConfig(release=str(release_dir), round=None if mix else round, split="train", batch_size=config.batch_size, mix=mix)
    return TrainConfig(
        data=data, out_dir=str(out), models_dir=config.models_dir, arch=config.arch, steps=config.steps, resume=config.resume,
        backbone_weights=config.backbone_weights, ckpt_every=max(config.steps // 4, 1), log_every=50, **recipe(config.recipe, lr=config.lr),
    )  # fmt: skip


def train_round(workdir: str | os.PathLike, config: TrainRoundConfig, launch: Launch = Launch(), emit: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or skip a finished run) and evaluate on the round's val split → Trained; `emit` gets progress lines."""
    workdir = Workdir.of(workdir)
    launch = launch.checked()
    round = workdir.latest_round(config.release, config.round)
    cfg = train_config(workdir, config, round)
    out = Path(cfg.out_dir)
    done = finished_step(out, config.steps) if config.resume else None
    if done is not None:
        emit(f"{out / 'last.pt'} has reached step {done} >= steps={config.steps}: not retrained")
        previous = json.loads((out / "train_metrics.json").read_text()) if (out / "train_metrics.json").exists() else {}
        result = {"checkpoint": str(out / "last.pt"), "start_step": done, "step": done, "sources": previous.get("sources")}
    elif launch.world > 1:
        result = train_distributed(cfg, launch, emit)
        if not result:
            emit(f"node {launch.node_rank}: training done; node 0 evaluates")
            return Trained(None, 0, 0, launch.world)
    else:
        cfg.write_json(out / "train_config.json")
        result = train(cfg)
    metrics = evaluate(result["checkpoint"], workdir.release(config.release), round=round, split="val", models_dir=config.models_dir, out_dir=out / "eval")
    emit(f"checkpoint {result['checkpoint']}: steps {result['start_step']} → {result['step']}")
    return Trained(str(result["checkpoint"]), result["start_step"], result["step"], launch.world, metrics, result.get("sources"))


def finished_step(out: Path, steps: int) -> int | None:
    """Step of `<out>/last.pt` when it has reached `steps` (a finished run: nothing to train), else None."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    step = int(torch.load(last, map_location="cpu", weights_only=False, mmap=True)["step"])  # mmap: reads the step, not the weights
    return step if step >= steps else None


def train_distributed(cfg: TrainConfig, launch: Launch, emit: Callable[[str], None]) -> dict:
    """Train `cfg` under torchrun with `launch`'s ranks; the result rank 0 wrote (train_metrics.json), or {} on other nodes.

    Output goes to `emit` and `<out_dir>/torchrun.log` (`torchrun-node<k>.log` on node k > 0: the folder may be
    shared by the nodes); a failed rank raises one RuntimeError line."""
    out = Path(cfg.out_dir)
    config = cfg.write_json(out / "train_config.json")
    log = out / ("torchrun.log" if launch.node_rank == 0 else f"torchrun-node{launch.node_rank}.log")
    emit(f"{launch.world} ranks ({launch.nproc} per node × {launch.nnodes} nodes, this node {launch.node_rank}) "
         f"via torchrun on {launch.master_addr}:{launch.master_port}; log {log}")  # fmt: skip
    metrics = out / "train_metrics.json"
    before = metrics.stat().st_mtime_ns if metrics.exists() else None
    rc = run_logged(torchrun_command(config, launch), log, emit)
    if rc != 0:
        raise RuntimeError(failure_line(rc, log))
    if launch.node_rank != 0:  # rank 0 (node 0) writes the checkpoints and the metrics
        return {}
    if not metrics.exists() or metrics.stat().st_mtime_ns == before:
        raise RuntimeError(f"torchrun exited 0 but rank 0 wrote no {metrics}; see {log}")
    return json.loads(metrics.read_text())
