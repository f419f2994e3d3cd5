"""build-pseudo-gt end to end vs the converter called directly on the same people, same run.

Renders a synthetic dataset (not timed), then times
  direct:   read the source shards, Converter.convert_with_flip on all labelled people (chunks of
            --batch), nothing written;
  pipeline: the build-pseudo-gt flow (Prefect API, tasks, label store, release shards, manifest)
            on a fresh workdir;
and prints persons/s of both and the ratio direct/pipeline time (target ≥ 0.85: orchestration and
I/O cost ≤ 15%). The issue's full size is ≥ 5 minutes of conversion work (about 4000 images on a
2-core CPU): `--images 4000`.

Usage: python benchmarks/pipeline.py [--images 400] [--batch 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=128, help="images per source shard")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="skelpgt-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    torch.set_num_threads(args.threads)

    from skelpgt.datasets import read_source
    from skelpgt.datasets.synthetic import make_synthetic_dataset
    from skelpgt.fitting.camera import normalise_keypoints
    from skelpgt.fitting.convert import ConvertConfig, Converter
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.pipelines.build import build_pseudo_gt

    models = ensure_models_dir()
    data = root / "source"
    if not (data / "dataset.json").is_file():
        print(f"rendering {args.images} synthetic images into {data} (not timed)", flush=True)
        make_synthetic_dataset(data, args.images, seed=0, models_dir=models, shard_size=args.shard_size)
    shards = data / "shards"

    start = time.perf_counter()
    people = [r for r in read_source(shards) if r.has_smpl]
    stack = lambda name: torch.from_numpy(np.stack([getattr(r, name) for r in people]))  # noqa: E731
    converter = Converter.from_models_dir(models, ConvertConfig(chunk_size=args.batch))
    kp = normalise_keypoints(stack("keypoints_2d"), stack("center"), stack("scale"))
    orig, flip = converter.convert_with_flip(stack("body_pose"), stack("betas"), stack("trans"), keypoints_2d=kp)
    direct = time.perf_counter() - start
    print(f"direct:   {len(people)} people (orig + flip) in {direct:.1f} s = {len(people) / direct:.1f} people/s", flush=True)

    start = time.perf_counter()
    result = build_pseudo_gt(inputs=[str(shards)], workdir=str(root / "work"), models_dir=str(models), batch_size=args.batch, torch_threads=args.threads)
    pipeline = time.perf_counter() - start
    labelled = result["summary"]["labelled"]
    print(f"pipeline: {labelled} people (orig + flip) in {pipeline:.1f} s = {labelled / pipeline:.1f} people/s")
    print(f"ratio direct/pipeline time: {direct / pipeline:.2f}  (target ≥ 0.85)")
    same = np.abs(orig.pve_mean.numpy() - np.concatenate(_pve(result["release"]))).max() if labelled == len(people) else float("nan")
    print(f"max |pve_mean| difference, direct vs pipeline labels: {same:.2e} m")


def _pve(release: str) -> list[np.ndarray]:
    """orig_pve_mean of every labelled person in the release, in shard order."""
    from skelpgt.datasets import iter_shard

    out = []
    for shard in sorted(Path(release).glob("*.tar")):
        out.append(np.array([p["orig_pve_mean"] for s in iter_shard(shard) for p in s.persons if p["orig_label_id"] >= 0]))
    return out


if __name__ == "__main__":
    main()
