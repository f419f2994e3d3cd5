"""SMPL through smplx, from official pickles without chumpy, or from smplx's own npz files.

An official `SMPL_<GENDER>.pkl` is read with the chumpy-free unpickler, converted once to a plain
`.npz` in the cache folder (keyed by the pickle's content hash), and that npz is what smplx loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import smplx
from smplx.utils import Struct
import torch
from torch import Tensor

from .pickles import ModelFileError, dense, load_model_pickle

SMPL_KEYS = ("v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs", "shapedirs")
GENDERS = ("neutral", "male", "female")


def resolve_smpl_path(path: str | os.PathLike, gender: str = "neutral") -> Path:
    """The SMPL file for `gender` from a .pkl/.npz path, a folder of them, or a models dir with smpl/."""
    if gender not in GENDERS:
        raise ValueError(f"SMPL gender must be one of {GENDERS}, got {gender!r}")
    path = Path(path)
    if path.is_file():
        return path
    name = f"SMPL_{gender.upper()}"
    for folder in (path, path / "smpl"):
        for ext in (".pkl", ".npz"):
            if (folder / (name + ext)).is_file():
                return folder / (name + ext)
    present = [g for g in GENDERS if g != gender and any((f / f"SMPL_{g.upper()}{e}").is_file() for f in (path, path / "smpl") for e in (".pkl", ".npz"))]
    if present:
        have = " and ".join(f"SMPL_{g.upper()}" for g in present)
        raise ModelFileError(f"{path} has {have} only: pass --smpl-gender {'|'.join(present)} (flow: smpl_gender), or add {name}.pkl")
    raise ModelFileError(f"{path}: no {name}.pkl or {name}.npz here or in {path / 'smpl'}: point --models-dir (or $SKELPGT_MODELS_DIR) at a models folder")


def read_smpl_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The 7 SMPL arrays smplx needs, as plain numpy, from an official pickle or an npz."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=True) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as err:
            raise ModelFileError(f"{path}: not a readable npz ({type(err).__name__}: {err})") from err
    else:
        data = load_model_pickle(path)
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a dict of SMPL arrays, found {type(data).__name__}")
    missing = [k for k in SMPL_KEYS if k not in data]
    if missing:
        raise ModelFileError(f"{path}: SMPL file lacks keys {missing}")
    arrays = {k: dense(data[k]) for k in SMPL_KEYS}
    n = arrays["v_template"].shape[0]
    expected = {"v_template": (n, 3), "J_regressor": (24, n), "weights": (n, 24), "posedirs": (n, 3, 207), "kintree_table": (2, 24)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ModelFileError(f"{path}: field {key!r} has shape {arrays[key].shape}, expected {shape}")
    if arrays["shapedirs"].ndim != 3 or arrays["shapedirs"].shape[:2] != (n, 3):
        raise ModelFileError(f"{path}: field 'shapedirs' has shape {arrays['shapedirs'].shape}, expected ({n}, 3, K)")
    arrays["kintree_table"] = arrays["kintree_table"].astype(np.int64)
    arrays["f"] = arrays["f"].astype(np.int64)
    return arrays


def default_cache_dir() -> Path:
    """Where converted model files are cached: $SKELPGT_CACHE_DIR, else ~/.cache/skelpgt."""
    return Path(os.environ.get("SKELPGT_CACHE_DIR", Path.home() / ".cache" / "skelpgt"))


def cached_smpl_npz(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain-numpy npz of an SMPL pickle (converted once, cached by content hash)."""
    path = Path(path)
    if path.suffix == ".npz":
        return path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out = Path(cache_dir or default_cache_dir()) / "smpl" / f"{path.stem}-{digest}.npz"
    if not out.is_file():
        arrays = read_smpl_arrays(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    return out


def load_smpl(path: str | os.PathLike, gender: str = "neutral", cache_dir: str | os.PathLike | None = None) -> smplx.SMPL:
    """An `smplx.SMPL` (10 betas, float32) from an official pickle, an npz, or a models directory."""
    arrays = read_smpl_arrays(cached_smpl_npz(resolve_smpl_path(path, gender), cache_dir))
    # smplx only unpickles files itself, so the arrays come in as its data struct; it prints a
    # warning for every 10-beta model, which is what every official SMPL file is.
    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.SMPL(model_path="", data_struct=Struct(**arrays), gender=gender, num_betas=10, batch_size=1)


def smpl_forward(model: smplx.SMPL, pose: Tensor, betas: Tensor, trans: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """SMPL axis-angle pose (B,72), betas (B,10), trans (B,3) → vertices (B,6890,3), joints (B,24,3)."""
    out = model(
        global_orient=pose[:, :3],
        body_pose=pose[:, 3:],
        betas=betas,
        transl=trans if trans is not None else torch.zeros_like(pose[:, :3]),
    )
    return out.vertices, out.joints[:, :24]
