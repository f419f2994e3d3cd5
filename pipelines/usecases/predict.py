"""A checkpoint's predictions of every person of a release round (the second starts of a refinement round)."""

from __future__ import annotations

import os
from collections.abc import Callable

from skelpgt.datasets.release import read_manifest
from skelpgt.datasets.shards import sha256_file
from skelpgt.datasets.workdir import Workdir
from skelpgt.model.predict import Predictions, join_predictions, load_predictions, predict_shard


def predict_shards_locally(checkpoint: str, parts: list, models_dir: str | None, device: str) -> list:
    """[(release shard, part file)] → the part files, predicted one after the other in this process (an existing part is kept)."""
    return [predict_shard(checkpoint, shard, out, models_dir=models_dir, device=device) for shard, out in parts]


def predict_round(
    workdir: str | os.PathLike, release: str, round: int, checkpoint: str | os.PathLike, models_dir: str | None = None,
    device: str = "cpu", predict_shards: Callable | None = None,
) -> tuple[Predictions, str]:  # fmt: skip
    """Predictions of `checkpoint` for release round `round`, per release shard (`predict_shards`, default in this
    process), joined once into `Workdir.predictions` and reused → (Predictions, checkpoint sha256)."""
    workdir = Workdir.of(workdir)
    digest = sha256_file(checkpoint)
    out = workdir.predictions(release, round, digest)
    if not out.is_file():
        folder, parts_dir = workdir.round(release, round), workdir.prediction_parts(release, round, digest)
        parts = [(str(folder / s["name"]), parts_dir / (s["name"] + ".npz")) for s in read_manifest(folder)["shards"]]
        join_predictions((predict_shards or predict_shards_locally)(str(checkpoint), parts, models_dir, device), out)
    return load_predictions(out), digest
