"""CPU demo: toy SKEL release → train a small ViT → evaluate on the held-out split against the mean pose.

    python -m skelpgt.model.demo WORKDIR [--images 400] [--steps 300] [--arch vit-micro] [--release DIR]

With --release, trains/evaluates on that release (e.g. the synthetic demo release of the
pipeline) instead of writing a toy one. Writes WORKDIR/run (checkpoints) and WORKDIR/eval
(eval.md, eval.json, predictions.png) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .data import DataConfig
from .evaluate import evaluate
from .train import TrainConfig, train


def run_demo(workdir, *, release=None, models_dir=None, images=400, steps=300, arch="vit-micro", batch_size=8,
             lr=5e-4, val_fraction=0.1, workers=1, seed=0) -> dict:  # fmt: skip
    from skelpgt.fitting.models import ensure_models_dir

    wd = Path(workdir)
    mdir = ensure_models_dir(models_dir)
    if release is None:
        from .testing import make_skel_release

        release = make_skel_release(wd, mdir, n_images=images, seed=seed, samples_per_shard=100)
    cfg = TrainConfig(
        data=DataConfig(release=str(release), split="train", val_fraction=val_fraction, batch_size=batch_size, seed=seed),
        out_dir=str(wd / "run"), models_dir=str(mdir), arch=arch, steps=steps, lr=lr, ckpt_every=max(steps // 4, 1),
        num_workers=workers, seed=seed, resume=True, log_every=20,
    )  # fmt: skip
    r = train(cfg)
    ev = evaluate(wd / "run" / "last.pt", release, split="val", val_fraction=val_fraction, models_dir=mdir, out_dir=wd / "eval")
    ev["train_losses_first_last"] = (r["losses"][:5], r["losses"][-5:])
    return ev


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("--release")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--arch", default="vit-micro")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ev = run_demo(a.workdir, release=a.release, images=a.images, steps=a.steps, arch=a.arch, batch_size=a.batch_size, lr=a.lr, workers=a.workers)
    print(ev["markdown"])


if __name__ == "__main__":
    main()
