"""The use cases, as plain functions (no Prefect): each takes a `Workdir` (or its folder) and a config, returns a small result.

| use case | config | result |
|---|---|---|
| `build_round0(workdir, BuildConfig, Round0Steps)` | inputs, release, overwrite | `Released` |
| `refine_round(workdir, RefineConfig, skelify, RoundSteps=None)` | release, round, checkpoint, camera, ... | `RoundReport` |
| `predict_round(workdir, release, round, checkpoint, ...)` | | (Predictions, checkpoint sha256) |
| `reshard(workdir, ReshardConfig)` | release, round, shard size, name | `Released` |
| `train_round(workdir, TrainRoundConfig, Launch)` | release, round, arch, steps, recipe, ... | `Trained` |
| `rounds_report(workdir, release, models_dir)` | | markdown table |

The Prefect flows (`skelpgt.pipelines.build`, `.refine`, `.train`, `.release`), the CLI, the tests, the
benchmarks and the demos all call these; a flow adds only tasks (passed in as the `*Steps`), retries,
artifacts and its task runner.
"""

from .build import BuildConfig, Released, Round0Steps, build_round0, convert_locally
from .predict import predict_round
from .refine import RefineConfig, RoundReport, RoundSteps, refine_locally, refine_round
from .report import rounds_report
from .reshard import ReshardConfig, reshard
from .train import TrainRoundConfig, Trained, train_round

__all__ = [
    "BuildConfig", "Released", "Round0Steps", "build_round0", "convert_locally", "predict_round", "RefineConfig", "RoundReport",
    "RoundSteps", "refine_locally", "refine_round", "rounds_report", "ReshardConfig", "reshard", "TrainRoundConfig", "Trained", "train_round",
]  # fmt: skip
