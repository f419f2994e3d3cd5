"""Pickled `.data.pyd` payloads: a restricted loader and a deterministic, numpy-1-compatible dumper.

Loading: shards come from outside, and pickle runs whatever globals it names, so only numpy
array/scalar/dtype constructors and a few inert builtins are allowed.

Dumping: numpy 2 pickles arrays through `numpy._core.multiarray._reconstruct`, a module numpy 1.x
(HSMR's environment) does not have. We reduce arrays through `numpy.ndarray` + numpy's own
`__setstate__` instead, which both major versions load. Pickle's memo makes bytes depend on
object identity (a string or array shared twice is written once); `dump_pyd` first rebuilds the
object so that identity follows from values alone (strings interned, containers and arrays
fresh), hence same values -> same bytes, whichever code path built them.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import numpy as np

PICKLE_PROTOCOL = 4


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referred to a global outside the allow-list."""


_ALLOWED_BUILTINS = {"set", "frozenset", "complex", "slice", "bytearray", "range", "bytes", "str", "int", "float", "bool", "list", "tuple", "dict"}
_NUMPY_CORE_FUNCS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode")):
            return super().find_class(module, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"):
            sub = module.rsplit(".", 1)[1]
            if (sub, name) in _NUMPY_CORE_FUNCS:
                # numpy 2 keeps numpy.core only as a deprecated alias of numpy._core.
                return super().find_class(f"numpy._core.{sub}", name)
        if module == "numpy":
            obj = getattr(np, name, None)
            if obj is np.ndarray or obj is np.dtype or (isinstance(obj, type) and issubclass(obj, np.generic)):
                return obj
        if module == "numpy.dtypes" and name.endswith("DType"):
            return super().find_class(module, name)
        raise ForbiddenGlobal(f"forbidden: pickle refers to global {module}.{name}")


def load_pyd(data: bytes) -> Any:
    """Pickle bytes -> object, refusing any global that is not a numpy constructor or inert builtin."""
    return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()


def _reduce_ndarray(arr: np.ndarray) -> tuple:
    _, _, state = arr.__reduce__()
    # numpy.ndarray(shape, dtype) builds an empty array; numpy's __setstate__ then restores it.
    return (np.ndarray, ((0,), "b"), state)


_SCALARS = (np.integer, np.float16, np.float32, np.float64, np.complex64, np.complex128)


class _CompatPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            return _reduce_ndarray(obj)
        if isinstance(obj, _SCALARS):
            # numpy scalars otherwise go through numpy._core.multiarray.scalar (numpy-2 only).
            return (type(obj), (obj.item(),))
        return NotImplemented


def canonical(obj: Any, _seen: set | None = None) -> Any:
    """Copy of `obj` whose object sharing depends only on values: str interned, containers fresh, no array twice."""
    t = type(obj)
    if t is float or t is int or t is bool or obj is None:
        return obj  # pickle never memoizes these
    if t is np.ndarray:
        if _seen is None:
            _seen = set()
        if not obj.dtype.hasobject:
            # an array met twice would be written once and referenced: copy the repeats instead
            if id(obj) in _seen:
                return obj.copy()
            _seen.add(id(obj))
            return obj
        out = np.empty(obj.shape, dtype=obj.dtype)
        for idx in np.ndindex(obj.shape):
            out[idx] = canonical(obj[idx], _seen)
        return out
    if t is str:
        return sys.intern(obj)
    if _seen is None:
        _seen = set()
    if t is dict:
        out = {}
        intern = sys.intern
        for k, v in obj.items():
            k = intern(k) if type(k) is str else canonical(k, _seen)
            tv = type(v)
            # inline the common leaves (numbers, plain arrays): this runs for every person field
            if tv is float or tv is int:
                out[k] = v
            elif tv is np.ndarray and not v.dtype.hasobject and id(v) not in _seen:
                _seen.add(id(v))
                out[k] = v
            else:
                out[k] = canonical(v, _seen)
        return out
    if t is list:
        return [canonical(v, _seen) for v in obj]
    if t is tuple:
        return tuple([canonical(v, _seen) for v in obj])
    if t is bytes:
        return bytes(bytearray(obj))
    if isinstance(obj, _SCALARS):
        return type(obj)(obj.item())
    return obj


def dump_pyd(obj: Any) -> bytes:
    """Object -> deterministic pickle bytes (protocol 4, numpy-1 loadable arrays)."""
    buf = io.BytesIO()
    _CompatPickler(buf, protocol=PICKLE_PROTOCOL).dump(canonical(obj))
    return buf.getvalue()
