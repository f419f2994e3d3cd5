"""Where the body-model files come from: a models directory, real or synthetic.

Layout: `smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl`, `skel/skel_{male,female}.pkl`,
`hsmr/J_regressor_SKEL_mix_MALE.pkl`, `hsmr/SMPL_to_J19.pkl`. With no directory given, the
default is $SKELPGT_MODELS_DIR, else a user-cache folder filled with synthetic stand-ins on
first use.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .keypoints import load_regressor
from .pickles import ModelFileError, load_model_pickle
from .skel import check_skel_dict
from .smpl import default_cache_dir, read_smpl_arrays

MODEL_FILES = {
    "smpl/SMPL_NEUTRAL.pkl": "smpl",
    "smpl/SMPL_MALE.pkl": "smpl",
    "smpl/SMPL_FEMALE.pkl": "smpl",
    "skel/skel_male.pkl": "skel",
    "skel/skel_female.pkl": "skel",
    "hsmr/J_regressor_SKEL_mix_MALE.pkl": (24, 6890),
    "hsmr/SMPL_to_J19.pkl": (19, 6890),
}
SYNTHETIC_VERSION = "synthetic-v1"


def default_models_dir() -> Path:
    """$SKELPGT_MODELS_DIR if set, else the synthetic stand-ins' folder in the user cache."""
    env = os.environ.get("SKELPGT_MODELS_DIR")
    return Path(env) if env else default_cache_dir() / "models" / SYNTHETIC_VERSION


def ensure_models_dir(path: str | os.PathLike | None = None) -> Path:
    """The models directory to use; the default one is filled with stand-ins on first use."""
    if path is not None:
        return Path(path)
    path = default_models_dir()
    if os.environ.get("SKELPGT_MODELS_DIR") or (path / ".complete").is_file():
        return path
    from .synthetic import make_synthetic_models  # once per machine; at the top it adds ~0.35 s (scipy.optimize, -X importtime) to every entry point

    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock:  # concurrent first uses build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".complete").is_file():
            make_synthetic_models(path)
            (path / ".complete").write_text(SYNTHETIC_VERSION + "\n")
    return path


def check_models_dir(path: str | os.PathLike) -> list[str]:
    """Problems found in a models directory (empty list = every file present and well-formed)."""
    path = Path(path)
    problems = []
    for rel, kind in MODEL_FILES.items():
        file = path / rel
        if not file.is_file():
            problems.append(f"{file}: missing")
            continue
        try:
            if kind == "smpl":
                read_smpl_arrays(file)
            elif kind == "skel":
                check_skel_dict(load_model_pickle(file), file)
            else:
                load_regressor(file, rows=kind[0])
        except ModelFileError as err:
            problems.append(str(err))
    return problems
