"""The body models a fit reads from one models dir: SKEL and the HSMR 44-keypoint regressor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .keypoints import KeypointRegressor
from .skel import SKEL


@dataclass(frozen=True)
class Body:
    """SKEL of one gender + the keypoint regressor (44 keypoints from SKEL's skin), and where they came from."""

    skel: SKEL
    keypoints: KeypointRegressor
    models_dir: Path  # the models dir they were read from (the SMPL bodies live there too)


def load_body(models_dir: str | os.PathLike, gender: str = "male") -> Body:
    """`skel_<gender>.pkl` and the keypoint regressor of `models_dir` → Body (float32, on the CPU)."""
    return Body(SKEL.from_file(models_dir, gender), KeypointRegressor.from_models_dir(models_dir), Path(models_dir))
