"""Crash recovery of labels.h5: copy what the root attributes declare committed into a fresh file."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from .labelstore_layout import DICT_COLUMNS, FORMAT, add_source_digest, create_current, create_layout, replace_file


def recover(path: str | os.PathLike, *, durable: bool = True, block: int = 1 << 18) -> int:
    """Rewrite labels.h5 from its committed rows after a writer died mid-write; returns the rows kept.

    Only what the root attributes declare committed is copied into a fresh file, which then
    replaces the old one atomically; uncommitted leftovers and any half-written HDF5 metadata
    go with the old file. The caller must hold the writer lock.
    """
    path = Path(path)
    marker = Path(str(path) + ".writing")
    tmp = Path(str(path) + ".recover.tmp")
    try:
        src = h5py.File(path, "r", locking=False)
    except OSError as exc:
        if not path.exists() or path.stat().st_size == 0:
            path.unlink(missing_ok=True)  # died before the first commit: nothing to keep
            marker.unlink(missing_ok=True)
            return 0
        raise RuntimeError(f"{path}: unreadable after a crashed write ({exc}); restore it from a copy") from exc
    with src:
        if "labels" not in src or src.attrs.get("format") != FORMAT:
            src.close()
            path.unlink()
            marker.unlink(missing_ok=True)
            return 0
        counts = _committed_counts(src)
        with h5py.File(tmp, "w", locking=False) as dst:
            create_layout(dst)
            for name in src["current"]:
                create_current(dst, name, counts[f"current/{name}"])
            for dpath, n in counts.items():
                if dpath == "labels/source_digest" and n > src[dpath].shape[0]:
                    continue  # store from before the column: add_source_digest fills it below
                s_ds, d_ds = src[dpath], dst[dpath]
                d_ds.resize(n, axis=0)
                is_str = h5py.check_string_dtype(s_ds.dtype) is not None
                for a in range(0, n, block):
                    b = min(n, a + block)
                    d_ds[a:b] = s_ds.asstr()[a:b] if is_str else s_ds[a:b]
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            add_source_digest(dst)
        n_rows = counts["labels/label_id"]
    replace_file(tmp, path, durable)
    marker.unlink(missing_ok=True)
    return n_rows


def _committed_counts(f: h5py.File) -> dict[str, int]:
    """Dataset path -> committed length, from the root attributes (the commit point)."""
    a = f.attrs
    out = {}
    for name in f["labels"]:
        out[f"labels/{name}"] = int(a["n_rows"])
    for name in f["keys"]:
        out[f"keys/{name}"] = int(a["n_keys"])
    for name in DICT_COLUMNS:
        if f"dicts/{name}" in f:
            out[f"dicts/{name}"] = int(a[f"n_dict_{name}"])
    for name in ("key_hash", "key_hash_id"):
        out[f"index/{name}"] = int(a["n_keys_indexed"])
    for name in ("row_key_id", "row"):
        out[f"index/{name}"] = int(a["n_indexed"])
    for name in f["current"]:
        out[f"current/{name}"] = int(f["current"][name].attrs["n"])
    return out
