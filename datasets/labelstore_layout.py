"""labels.h5 on-disk layout: format constants, column dtypes and chunking, creating and opening the file.

Every dataset, attribute, dtype and chunk shape of the store is declared here and nowhere else
(see schema.md, section 4), so the writer, the reader and crash recovery cannot disagree on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from .atomic import fsync_dir
from .records import N_BETAS, SKEL_POSE_DIM

FORMAT = "skelpgt-labels/1"
SIDES = ("orig", "flip")
PRODUCERS = ("convert", "skelify", "manual")
DICT_COLUMNS = ("config_digest", "code_version", "checkpoint_digest", "created_at", "source_digest")
FLOAT_COLUMNS = ("pve_mean", "pve_max", "kp2d_err", "limit_violation")
ARRAY_COLUMNS = {"poses": SKEL_POSE_DIM, "betas": N_BETAS, "trans": 3}
# Public column order of a label row.
COLUMNS = (
    "label_id", "sample_key", "side", "round", "parent_label_id", "producer",
    "poses", "betas", "trans", "pve_mean", "pve_max", "kp2d_err", "limit_violation", "accepted",
    "config_digest", "code_version", "checkpoint_digest", "created_at", "source_digest",
)  # fmt: skip

STR_DT = h5py.string_dtype("utf-8")
SIDE_DT = h5py.enum_dtype({s: i for i, s in enumerate(SIDES)}, basetype="i1")
PRODUCER_DT = h5py.enum_dtype({p: i for i, p in enumerate(PRODUCERS)}, basetype="i1")
ROW_CHUNK = 8192
ARRAY_CHUNK = 1024
DICT_CHUNK = 256
INDEX_NAMES = ("key_hash", "key_hash_id", "row_key_id", "row")


def create_layout(f: h5py.File) -> None:
    """Create the empty groups, columns and root attributes of a label store."""
    g = f.create_group("labels")

    def col(name, dtype, width=None):
        shape = (0,) if width is None else (0, width)
        chunks = (ROW_CHUNK,) if width is None else (ARRAY_CHUNK, width)
        g.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype, chunks=chunks)

    col("label_id", "i8")
    col("sample_key", STR_DT)
    col("key_id", "i8")
    col("side", SIDE_DT)
    col("round", "i4")
    col("parent_label_id", "i8")
    col("producer", PRODUCER_DT)
    for name, width in ARRAY_COLUMNS.items():
        col(name, "f4", width)
    for name in FLOAT_COLUMNS:
        col(name, "f4")
    col("accepted", "?")
    for name in DICT_COLUMNS:
        col(name, "i4")  # code into /dicts/<name>
    k = f.create_group("keys")
    k.create_dataset("sample_key", shape=(0,), maxshape=(None,), dtype=STR_DT, chunks=(ROW_CHUNK,))
    k.create_dataset("hash", shape=(0,), maxshape=(None,), dtype="u8", chunks=(ROW_CHUNK,))
    d = f.create_group("dicts")
    for name in DICT_COLUMNS:
        d.create_dataset(name, shape=(0,), maxshape=(None,), dtype=STR_DT, chunks=(DICT_CHUNK,))
    ix = f.create_group("index")
    for name, dt in zip(INDEX_NAMES, ("u8", "i8", "i8", "i8")):
        ix.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(ROW_CHUNK,))
    f.create_group("current")
    f.attrs.update(
        {"format": FORMAT, "n_rows": 0, "n_keys": 0, "n_indexed": 0, "n_keys_indexed": 0}
        | {f"n_dict_{name}": 0 for name in DICT_COLUMNS}
    )
    f.attrs["sides"] = ",".join(SIDES)
    f.attrs["producers"] = ",".join(PRODUCERS)
    f.attrs["dict_encoded"] = ",".join(DICT_COLUMNS)
    add_source_digest(f)


def create_current(f: h5py.File, name: str, n: int = 0) -> h5py.Dataset:
    """Create the empty current-label list /current/<name> (int64 label ids) whose attr 'n' commits `n` of them."""
    ds = f["current"].create_dataset(name, shape=(0,), maxshape=(None,), dtype="i8", chunks=(ROW_CHUNK,))
    ds.attrs["n"] = n
    return ds


def add_source_digest(f: h5py.File) -> None:
    """Give a store the source_digest column if it lacks it (stores written before it existed: '' = unknown)."""
    n = int(f.attrs["n_rows"])
    lab = f["labels"]
    if "source_digest" not in lab:
        lab.create_dataset("source_digest", shape=(0,), maxshape=(None,), dtype="i4", chunks=(ROW_CHUNK,))
    if lab["source_digest"].shape[0] < n:
        n0 = lab["source_digest"].shape[0]
        lab["source_digest"].resize(n, axis=0)
        lab["source_digest"][n0:n] = 0
    if "source_digest" not in f["dicts"]:
        f["dicts"].create_dataset("source_digest", shape=(0,), maxshape=(None,), dtype=STR_DT, chunks=(DICT_CHUNK,))
    if int(f.attrs.get("n_dict_source_digest", 0)) == 0:
        # code 0 is always '' (no source: manual labels, rows from before the column)
        f["dicts/source_digest"].resize(1, axis=0)
        f["dicts/source_digest"][0] = ""
        f.attrs["n_dict_source_digest"] = 1
        f.attrs["dict_encoded"] = ",".join(DICT_COLUMNS)


def check_format(f: h5py.File) -> None:
    """Raise ValueError unless `f` carries this store's format tag."""
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise ValueError(f"not a skelpgt label store (format {fmt!r}, expected {FORMAT!r})")


def open_h5(path: Path, mode: str) -> h5py.File:
    """labels.h5 -> open h5py file; an unreadable one (truncated, not HDF5) -> ValueError naming the file and the fix."""
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as exc:
        if not path.exists() or isinstance(exc, PermissionError):
            raise
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path}: not a readable label store ({reason}); restore it from a copy, or rebuild round 0 in a new workdir") from exc


def init_file(path: Path, durable: bool) -> None:
    """Create an empty store atomically (built as a temp file, then renamed into place)."""
    tmp = Path(str(path) + ".init.tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        create_layout(f)
    replace_file(tmp, path, durable)


def replace_file(tmp: Path, path: Path, durable: bool) -> None:
    """Rename a finished temp file over `path` (fsynced first when `durable`)."""
    if durable:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """fsync an already flushed file by path (h5py exposes no descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
