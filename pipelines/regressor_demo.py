"""CPU demo: synthetic release → train a small ViT from scratch → evaluate on held-out images against the mean pose.

    python -m skelpgt.pipelines.regressor_demo WORKDIR [--images 600] [--steps 600] [--arch vit-tiny-conv] [--release DIR | --toy]

By default renders the synthetic dataset (`skelpgt data make-synthetic`) and converts it to a
round-0 release with the use case `build-pseudo-gt` runs (`usecases.build_round0`, in one process,
no Prefect), then trains with the `from-scratch` recipe. `--release DIR` uses an existing release instead; `--toy` a release of
disc images (`model.testing.make_skel_release`). Writes WORKDIR/run (checkpoints) and WORKDIR/eval
(eval.md, eval.json, predictions.png) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.convert import Converter
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import evaluate
from skelpgt.model.testing import make_skel_release
from skelpgt.model.train import TrainConfig, recipe, train
from skelpgt.pipelines.usecases.build import BuildConfig, build_round0, convert_locally


def synthetic_release(workdir: str | Path, models_dir: str | Path, images: int, seed: int = 0) -> Path:
    """Render `images` synthetic images and build their round-0 release `<workdir>/releases/synthetic/round-0` (reused if present)."""
    wd = Workdir.of(workdir)
    if 0 in wd.rounds("synthetic"):
        return wd.round("synthetic", 0)
    config = BuildConfig(release="synthetic", synthetic_images=images, synthetic_seed=seed)
    return build_round0(wd, config, convert_locally(Converter.from_models_dir(models_dir))).folder


def run_demo(workdir, *, release=None, toy=False, models_dir=None, images=600, steps=600, arch="vit-tiny-conv",
             batch_size=16, recipe_name="from-scratch", val_fraction=0.1, workers=1, seed=0) -> dict:  # fmt: skip
    wd = Path(workdir)
    mdir = ensure_models_dir(models_dir)
    if release is None and toy:
        release = make_skel_release(wd, mdir, n_images=images, seed=seed, samples_per_shard=100)
    elif release is None:
        release = synthetic_release(wd, mdir, images, seed)
    cfg = TrainConfig(
        data=DataConfig(release=str(release), split="train", val_fraction=val_fraction, batch_size=batch_size, seed=seed),
        out_dir=str(wd / "run"), models_dir=str(mdir), arch=arch, steps=steps, ckpt_every=max(steps // 4, 1),
        num_workers=workers, seed=seed, resume=True, log_every=50, **recipe(recipe_name),
    )  # fmt: skip
    r = train(cfg)
    ev = evaluate(wd / "run" / "last.pt", release, split="val", val_fraction=val_fraction, models_dir=mdir, out_dir=wd / "eval")
    ev["images_per_s"] = r["images_per_s"]
    return ev


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("--release")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--arch", default="vit-tiny-conv")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--recipe", default="from-scratch")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ev = run_demo(a.workdir, release=a.release, toy=a.toy, images=a.images, steps=a.steps, arch=a.arch,
                  batch_size=a.batch_size, recipe_name=a.recipe, workers=a.workers)  # fmt: skip
    print(ev["markdown"])


if __name__ == "__main__":
    main()
