"""Reading and writing the body-model pickles of this field without chumpy.

Official SMPL pickles (and possibly SKEL ones) hold `chumpy.ch.Ch` objects. chumpy does not
install on current Python/numpy, so the unpickler maps every chumpy class to a stub that keeps
the pickled state, and the stub's array (state['x']) is turned into plain numpy.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class ModelFileError(ValueError):
    """A body-model or regressor file is missing, unreadable or not in the expected format."""


class _ChumpyStub:
    """Stands in for any chumpy class; chumpy stores the array value in `state['x']`."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self.__dict__["x"])


class _NoChumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy":
            return _ChumpyStub
        return super().find_class(module, name)


def _dechumpy(value: Any) -> Any:
    if isinstance(value, _ChumpyStub):
        return value.to_numpy()
    if isinstance(value, dict):
        return {k: _dechumpy(v) for k, v in value.items()}
    return value


def load_model_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a model file (Python 2 or 3 pickle, chumpy or not) into plain numpy/scipy objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            obj = _NoChumpyUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated, not a pickle, unknown class...
        raise ModelFileError(f"{path}: not a readable model pickle ({type(err).__name__}: {err})") from err
    return _dechumpy(obj)


def dense(value: Any) -> np.ndarray:
    """A dense numpy array from a numpy array, list or any scipy.sparse matrix/array."""
    return np.asarray(value.toarray() if hasattr(value, "toarray") else value)


def write_pickle_atomic(path: str | os.PathLike, obj: Any, protocol: int = 4) -> None:
    """Pickle `obj` to `path` through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
