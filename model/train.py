"""Training loop: AdamW, checkpoints that resume exactly, torchrun DDP (gloo on CPU, nccl on GPU).

`train(TrainConfig(...)) -> dict` runs `steps` optimiser steps (one batch per step per rank) and
returns {'losses': [total per step run], 'terms': [...], 'start_step', 'step', 'checkpoint', 'images_per_s'}.

Checkpoints (`<out_dir>/step-NNNNNN.pt` every `ckpt_every` steps and at the end, plus a copy as
`last.pt`) hold model, optimiser, step, data position (batches consumed per rank), torch / NumPy /
Python RNG states and the config. Resuming (`resume_from=path`, or `resume=True` for `last.pt`)
restores them and restarts the data stream at the saved batch, so the run continues exactly: on
CPU the losses after resuming equal the uninterrupted run's bit for bit. The data augmentation
does not consume global RNG (each sample has its own seeded generator), so only dropout/drop-path
use the restored torch state.

DDP: under `torchrun` (WORLD_SIZE > 1) the process group is initialised (gloo on CPU, nccl on
GPU), each rank reads every WORLD_SIZE-th sample of the stream, and rank 0 writes checkpoints.
Mixed precision (bf16 autocast for the network; the body model and losses stay fp32) on GPU when
`amp=True`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from skelpgt.fitting.models import ensure_models_dir
from tqdm import tqdm

from .data import DataConfig, make_loader, source_counts
from .losses import BodyModel, LossWeights, compute_losses
from .network import (
    Regressor,
    load_backbone,
    mean_pelvis_rotation,
    net_config,
    pelvis_frame,
    read_backbone_checkpoint,
)

log = logging.getLogger("skelpgt.model.train")


@dataclass
class TrainConfig:
    data: DataConfig
    out_dir: str
    models_dir: str | None = None
    arch: str = "vit-tiny"
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: str = "constant"  # or "cosine": decay to 0 at `steps` after the warm-up (from-scratch training)
    weights: LossWeights = field(default_factory=LossWeights)
    ckpt_every: int = 1000
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    resume: bool = False
    resume_from: str | None = None
    amp: bool = True
    device: str | None = None
    backbone_weights: str | None = None
    progress: bool = False
    count_sources: bool = True  # one extra pass over every source (pyd only) for HSMR's per-source validity counts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"] = self.data.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        data = dict(d["data"])
        for name in ("mix", "pelvis_frame"):  # JSON turns the nested tuples into lists
            if data.get(name) is not None:
                data[name] = tuple(map(tuple, data[name]))
        d["data"] = DataConfig.from_dict(data)
        d["weights"] = LossWeights(**d.get("weights", {}))
        return cls(**d)

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON to `path` atomically (what `--config` and `read_json` read back); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> TrainConfig:
        """The TrainConfig written by `write_json` (equal to the one written); a clear error naming the file otherwise."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a TrainConfig JSON file ({type(e).__name__}: {e})") from e


RECIPES: dict[str, dict] = {
    # HSMR's setting (hsmr-pipeline.md §5.5/§5.6): fine-tuning a pretrained backbone over ~160k steps.
    "hsmr": {"lr": 1e-5, "warmup_steps": 0, "schedule": "constant", "weights": LossWeights()},
    # Random init on a CPU in minutes (the synthetic demo): with HSMR's weights the network sits on the
    # mean pose for thousands of steps; a warm cosine schedule, 10-20x stronger rotation/shape terms and
    # the per-token keypoint head make it read the image within a few hundred.
    "from-scratch": {
        "lr": 1e-3, "warmup_steps": 40, "schedule": "cosine",
        "weights": LossWeights(orient=0.02, body=0.02, betas=0.005, tokens=0.1),
    },
}  # fmt: skip


def recipe(name: str, **overrides) -> dict:
    """TrainConfig keyword arguments of a named recipe (`RECIPES`), with `overrides` (None values ignored) applied."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}


def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: torch.device) -> tuple[int, int]:
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(cfg: TrainConfig, body: BodyModel) -> Regressor:
    arch = dataclasses.replace(net_config(cfg.arch), token_head=cfg.weights.tokens > 0)
    model = Regressor(arch, mean_pelvis_rotation(body.skel))
    if cfg.backbone_weights:
        report = load_backbone(model, read_backbone_checkpoint(cfg.backbone_weights))
        model.backbone_report = dataclasses.asdict(report)
    return model


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then constant or cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; known: 'constant', 'cosine'")


def save_checkpoint(path: Path, model, optim, step: int, cfg: TrainConfig, extra: dict | None = None) -> None:
    raw = model.module if hasattr(model, "module") else model
    state = {
        "model": raw.state_dict(), "optim": optim.state_dict(), "step": step, "data_batches": step,
        "rng": rng_state(), "config": cfg.to_dict(), "net_config": raw.config.to_dict(), **(extra or {}),
    }  # fmt: skip
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def train_step(model, body: BodyModel, optim, batch: dict, cfg: TrainConfig, step: int, amp: bool = False) -> tuple:
    """One optimiser step (0-based `step` sets the learning rate) on a batch on the model's device → (total, terms)."""
    with torch.autocast(batch["img"].device.type, dtype=torch.bfloat16, enabled=amp):
        pred = model(batch["img"])
    pred = {k: v.float() for k, v in pred.items()}
    raw = model.module if hasattr(model, "module") else model
    tokens = raw.token_index(batch["kp2d"]) if cfg.weights.tokens > 0 else None
    total, terms = compute_losses(pred, batch, body, cfg.weights, tokens)
    optim.zero_grad(set_to_none=True)
    total.backward()
    for group in optim.param_groups:
        group["lr"] = learning_rate(cfg, step)
    optim.step()
    return total, terms


def train(cfg: TrainConfig) -> dict:
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = setup_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = ensure_models_dir(cfg.models_dir)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    body = BodyModel(models_dir).to(device)
    for p in body.parameters():
        p.requires_grad_(False)
    if cfg.data.pelvis_frame is None:
        cfg.data.pelvis_frame = tuple(map(tuple, pelvis_frame(body.skel).double().tolist()))
    model = build_model(cfg, body).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    resume_path = cfg.resume_from or (out / "last.pt" if cfg.resume and (out / "last.pt").exists() else None)
    if resume_path:
        ck = load_checkpoint(resume_path)
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        start = int(ck["step"])
        set_rng_state(ck["rng"])
        log.info("resumed from %s at step %d", resume_path, start)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sources = source_counts(cfg.data) if cfg.count_sources and rank == 0 else None
    for spec, counts in (sources or {}).items():
        log.info("source %s: %s", spec, json.dumps(counts))
    loader = make_loader(cfg.data, rank, world, start_batch=start, num_workers=cfg.num_workers)
    use_amp = cfg.amp and device.type == "cuda"
    losses, terms_log = [], []
    step = start
    ckpt = None
    bar = None
    if cfg.progress and rank == 0:
        bar = tqdm(total=cfg.steps, initial=start, desc="train")
    model.train()
    t0, n_img = time.perf_counter(), 0
    it = iter(loader)
    while step < cfg.steps:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        total, terms = train_step(model, body, optim, batch, cfg, step, use_amp)
        step += 1
        n_img += batch["img"].shape[0]
        losses.append(float(total.detach()))
        terms_log.append({k: float(v.detach()) for k, v in terms.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            log.info("step %d %s", step, json.dumps({k: round(v, 5) for k, v in terms_log[-1].items()}))
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            ckpt = out / f"step-{step:06d}.pt"
            save_checkpoint(ckpt, model, optim, step, cfg)
            shutil.copyfile(ckpt, out / "last.pt")
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    result = {"losses": losses, "terms": terms_log, "start_step": start, "step": step, "checkpoint": str(ckpt) if ckpt else None,
              "images_per_s": n_img * world / elapsed if elapsed > 0 else float("nan"), "rank": rank, "world": world,
              "backbone_report": getattr(model.module if hasattr(model, "module") else model, "backbone_report", None),
              "sources": sources}  # fmt: skip
    if rank == 0:
        (out / "train_metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "terms"}, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    """`python -m skelpgt.model.train RELEASE OUT_DIR [--steps N ...]` or `... --config CFG.json` (works under torchrun)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", nargs="?", help="release folder or HSMR-v1 tar set ('/data/aic/{000000..000209}.tar', a glob, a folder)")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--config", help="a TrainConfig JSON file (TrainConfig.write_json, as train-regressor writes it); replaces every other option")
    ap.add_argument("--arch", default="vit-tiny")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models-dir")
    ap.add_argument("--backbone-weights")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--mix", action="append", default=[], metavar="SOURCE=WEIGHT",
                    help="another source (release folder or tar set) mixed with RELEASE (weight 1) by weight, HSMR's RandomMix; repeatable")
    a = ap.parse_args(argv)
    if a.config and (a.release or a.out_dir):
        ap.error("--config replaces RELEASE and OUT_DIR (and every other option): give one or the other")
    if not a.config and not (a.release and a.out_dir):
        ap.error("give RELEASE and OUT_DIR, or --config CFG.json")
    # every rank logs to the same stream under torchrun: the rank on each line says whose it is
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {dist_info()[0]}] %(message)s")
    if a.config:
        cfg = TrainConfig.read_json(a.config)
    else:
        extra = tuple((spec, float(w)) for spec, _, w in (m.rpartition("=") for m in a.mix))
        mix = ((a.release, 1.0), *extra) if extra else None
        cfg = TrainConfig(
            data=DataConfig(release=a.release, batch_size=a.batch_size, seed=a.seed, mix=mix), out_dir=a.out_dir, arch=a.arch,
            steps=a.steps, lr=a.lr, num_workers=a.workers, ckpt_every=a.ckpt_every, seed=a.seed, models_dir=a.models_dir,
            backbone_weights=a.backbone_weights, resume=a.resume, progress=True,
        )  # fmt: skip
    r = train(cfg)
    if r["rank"] == 0:
        print(json.dumps({k: v for k, v in r.items() if k not in ("terms", "losses")}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
