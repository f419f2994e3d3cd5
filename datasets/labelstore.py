"""Append-only SKEL label store `labels.h5`: one row per label version, lineage, per-round current labels.

Layout (all datasets chunked and resizable along axis 0; see schema.md):

    /labels/<column>        one row per label version; label_id == row index
    /keys/sample_key        distinct per-person keys (vlen UTF-8), key_id == position
    /keys/hash              64-bit FNV-1a of each key (for the on-disk lookup index)
    /dicts/<column>         distinct strings of the dictionary-encoded provenance columns
    /current/<round>        label ids made current in that round, in order (last one wins per key+side)
    /index/*                sorted lookup indexes (key hash -> key_id, key_id -> rows), rebuilt lazily

Crash safety: a batch writes its rows, flushes, and only then advances the committed counts in
the root attributes (and flushes again). Readers never look past the committed counts, and the
next writer trims anything beyond them, so a killed writer loses at most the batch in flight.
Concurrency: one writer (`labels.h5.lock`, held for the writer's lifetime); each write batch
takes `labels.h5.rwlock` exclusively and each read query takes it shared, so readers may run
while a long-lived writer is open and never see a half-written batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .atomic import fsync_dir
from .locks import FileLock
from .records import N_BETAS, SKEL_POSE_DIM, SkelLabel

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

_STR = h5py.string_dtype("utf-8")
_SIDE_DT = h5py.enum_dtype({s: i for i, s in enumerate(SIDES)}, basetype="i1")
_PRODUCER_DT = h5py.enum_dtype({p: i for i, p in enumerate(PRODUCERS)}, basetype="i1")
_ROW_CHUNK = 8192
_ARRAY_CHUNK = 1024
# Dedup composite: key_id | producer | side | round | config code packed into 64 bits.
_KEY_BITS, _PROD_BITS, _SIDE_BITS, _ROUND_BITS, _CFG_BITS = 34, 2, 1, 12, 15
_MAX_ROUND = (1 << _ROUND_BITS) - 1
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def key_hash(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Strings -> uint64 FNV-1a over their Unicode code points (vectorised over keys)."""
    u = np.asarray(keys, dtype=str)
    n = u.shape[0]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    width = u.dtype.itemsize // 4
    if n == 0 or width == 0:
        return h
    cps = np.ascontiguousarray(u).view(np.uint32).reshape(n, width)
    for j in range(width):  # loop over character positions, vectorised over keys
        c = cps[:, j].astype(np.uint64)
        live = c != 0  # numpy pads shorter strings with NUL
        if not live.any():
            break
        h = np.where(live, (h ^ c) * _FNV_PRIME, h)
    return h


def _composite(key_id, producer, side, round_, cfg) -> np.ndarray:
    c = np.asarray(key_id, np.uint64) << np.uint64(_PROD_BITS + _SIDE_BITS + _ROUND_BITS + _CFG_BITS)
    c |= np.asarray(producer, np.uint64) << np.uint64(_SIDE_BITS + _ROUND_BITS + _CFG_BITS)
    c |= np.asarray(side, np.uint64) << np.uint64(_ROUND_BITS + _CFG_BITS)
    c |= np.asarray(round_, np.uint64) << np.uint64(_CFG_BITS)
    c |= np.asarray(cfg, np.uint64)
    return c


class _SortedLookup:
    """uint64 -> int64 map held as sorted arrays plus a small unsorted tail (merged geometrically)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.k, self.v = keys[order], values[order]
        # tail kept sorted; merged into the main arrays once it exceeds a quarter of them
        self.tk = np.zeros(0, np.uint64)
        self.tv = np.zeros(0, np.int64)

    def get(self, q: np.ndarray) -> np.ndarray:
        """Keys -> values, -1 where absent (first inserted wins)."""
        out = np.full(q.shape[0], -1, np.int64)
        if self.k.size:
            pos = np.searchsorted(self.k, q)
            pos_c = np.minimum(pos, self.k.size - 1)
            hit = self.k[pos_c] == q
            out[hit] = self.v[pos_c[hit]]
        if self.tk.size:
            tk, tv = self.tk, self.tv
            miss = out < 0
            pos = np.minimum(np.searchsorted(tk, q[miss]), tk.size - 1)
            hit = tk[pos] == q[miss]
            idx = np.nonzero(miss)[0][hit]
            out[idx] = tv[pos[hit]]
        return out

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert or overwrite (unique `keys`)."""
        for k, v in ((self.k, self.v), (self.tk, self.tv)):
            if k.size and keys.size:
                pos = np.minimum(np.searchsorted(k, keys), k.size - 1)
                hit = k[pos] == keys
                v[pos[hit]] = values[hit]
                keys, values = keys[~hit], values[~hit]
        if keys.size:
            self.add(keys, values)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert keys known to be absent."""
        k = np.concatenate([self.tk, keys])
        v = np.concatenate([self.tv, values])
        if k.size > max(4096, self.k.size // 4):
            k, v = np.concatenate([self.k, k]), np.concatenate([self.v, v])
            order = np.argsort(k, kind="stable")
            self.k, self.v = k[order], v[order]
            self.tk, self.tv = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        else:
            order = np.argsort(k, kind="stable")
            self.tk, self.tv = k[order], v[order]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _disk_searchsorted(ds: h5py.Dataset, value, lo: int, hi: int, side: str = "left") -> int:
    """Binary search over a sorted on-disk 1-D dataset slice [lo, hi) reading a few elements, not the column."""
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        v = ds[mid]
        if v < value or (side == "right" and v == value):
            lo = mid + 1
        else:
            hi = mid
    block = ds[lo:hi]
    return lo + int(np.searchsorted(block, value, side=side))


def _create_layout(f: h5py.File) -> None:
    """Create the empty groups, columns and root attributes of a label store."""
    g = f.create_group("labels")

    def col(name, dtype, width=None):
        shape = (0,) if width is None else (0, width)
        chunks = (_ROW_CHUNK,) if width is None else (_ARRAY_CHUNK, width)
        g.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype, chunks=chunks)

    col("label_id", "i8")
    col("sample_key", _STR)
    col("key_id", "i8")
    col("side", _SIDE_DT)
    col("round", "i4")
    col("parent_label_id", "i8")
    col("producer", _PRODUCER_DT)
    for name, width in ARRAY_COLUMNS.items():
        col(name, "f4", width)
    for name in FLOAT_COLUMNS:
        col(name, "f4")
    col("accepted", "?")
    for name in DICT_COLUMNS:
        col(name, "i4")  # code into /dicts/<name>
    k = f.create_group("keys")
    k.create_dataset("sample_key", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(_ROW_CHUNK,))
    k.create_dataset("hash", shape=(0,), maxshape=(None,), dtype="u8", chunks=(_ROW_CHUNK,))
    d = f.create_group("dicts")
    for name in DICT_COLUMNS:
        d.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    ix = f.create_group("index")
    for name, dt in (("key_hash", "u8"), ("key_hash_id", "i8"), ("row_key_id", "i8"), ("row", "i8")):
        ix.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(_ROW_CHUNK,))
    f.create_group("current")
    f.attrs.update(
        {"format": FORMAT, "n_rows": 0, "n_keys": 0, "n_indexed": 0, "n_keys_indexed": 0}
        | {f"n_dict_{name}": 0 for name in DICT_COLUMNS}
    )
    f.attrs["sides"] = ",".join(SIDES)
    f.attrs["producers"] = ",".join(PRODUCERS)
    f.attrs["dict_encoded"] = ",".join(DICT_COLUMNS)
    _add_source_digest(f)


def _add_source_digest(f: h5py.File) -> None:
    """Give a store the source_digest column if it lacks it (stores written before it existed: '' = unknown)."""
    n = int(f.attrs["n_rows"])
    lab = f["labels"]
    if "source_digest" not in lab:
        lab.create_dataset("source_digest", shape=(0,), maxshape=(None,), dtype="i4", chunks=(_ROW_CHUNK,))
    if lab["source_digest"].shape[0] < n:
        n0 = lab["source_digest"].shape[0]
        lab["source_digest"].resize(n, axis=0)
        lab["source_digest"][n0:n] = 0
    if "source_digest" not in f["dicts"]:
        f["dicts"].create_dataset("source_digest", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    if int(f.attrs.get("n_dict_source_digest", 0)) == 0:
        # code 0 is always '' (no source: manual labels, rows from before the column)
        f["dicts/source_digest"].resize(1, axis=0)
        f["dicts/source_digest"][0] = ""
        f.attrs["n_dict_source_digest"] = 1
        f.attrs["dict_encoded"] = ",".join(DICT_COLUMNS)


class LabelStore:
    """labels.h5 handle: `LabelStore(path)` reads; `LabelStore(path, mode='a')` is the single writer."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, timeout: float | None = 60.0, durable: bool = True):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = Path(path)
        self.mode = mode
        self.durable = durable
        self._rw = FileLock(str(self.path) + ".rwlock", shared=True, timeout=timeout)
        self._f: h5py.File | None = None
        self._rf: _CachedFile | None = None
        self._rsig: tuple | None = None
        self._writer_lock: FileLock | None = None
        self._key_ids: dict[str, int] | None = None
        self._dedup: _SortedLookup | None = None
        self._src_code: np.ndarray | None = None  # source_digest code per label id (writer)
        self._parent: np.ndarray | None = None  # parent_label_id per label id (writer)
        self._dict_codes: dict[str, dict[str, int]] = {}
        self._marker = Path(str(self.path) + ".writing")
        self._broken = False
        self.recovered: int | None = None  # rows kept by a crash recovery at open, if one ran
        if mode == "a":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer_lock = FileLock(str(self.path) + ".lock", timeout=timeout, note=f"pid {os.getpid()}").acquire()
            try:
                with FileLock(str(self.path) + ".rwlock", timeout=timeout):
                    if self._marker.exists():
                        # the previous writer died inside a write: HDF5 may hold half-written
                        # metadata beyond the commit point, so copy the committed part afresh
                        self.recovered = recover(self.path, durable=durable)
                    if not self.path.exists():
                        _init_file(self.path, durable)
                    self._f = _open_h5(self.path, "a")
                    self._check_format(self._f)
                    if "source_digest" not in self._f["labels"]:
                        with self._dirty():
                            _add_source_digest(self._f)
                            self._flush()
            except BaseException:
                if self._f is not None:
                    self._f.close()
                self._writer_lock.release()
                raise
        elif not self.path.exists():
            raise FileNotFoundError(f"label store not found: {self.path}")

    # ------------------------------------------------------------------ layout
    @staticmethod
    def _check_format(f: h5py.File) -> None:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(f"not a skelpgt label store (format {fmt!r}, expected {FORMAT!r})")

    @contextmanager
    def _dirty(self) -> Iterator[None]:
        """Mark the file as being modified; the marker survives only if we die (or fail) before the end."""
        if self._broken:
            raise RuntimeError(f"an earlier write to {self.path} failed; reopen the store to recover it")
        self._marker.write_text(f"pid {os.getpid()}\n")
        if self.durable:
            fsync_dir(self.path.parent)
        try:
            yield
        except BaseException:
            self._broken = True
            raise
        self._marker.unlink()

    def _flush(self) -> None:
        self._f.flush()
        if self.durable:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ access helpers
    @contextmanager
    def _reading(self) -> Iterator[Any]:
        if self._f is not None:
            yield self._f
            return
        with FileLock(self._rw.path, shared=True, timeout=self._rw.timeout):
            # Reuse the open handle while the file is unchanged; any committed write changes
            # mtime/size, and a handle opened before it would hold stale metadata.
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._rf is None or sig != self._rsig:
                self._close_reader()
                f = _open_h5(self.path, "r")
                try:
                    self._check_format(f)
                except BaseException:
                    f.close()
                    raise
                self._rf, self._rsig = _CachedFile(f), sig
            yield self._rf

    def _close_reader(self) -> None:
        if self._rf is not None:
            self._rf.f.close()
            self._rf = None

    def close(self) -> None:
        """Writer: bring the lookup index up to date, flush and release the locks. Reader: close the file."""
        self._close_reader()
        if self._f is not None:
            try:
                with FileLock(str(self.path) + ".rwlock", timeout=self._rw.timeout):
                    if self._broken:
                        self._f.close()
                    else:
                        with self._dirty():
                            self._rebuild_indexes(force=False, tail_limit=0)
                            self._f.close()
            finally:
                self._f = None
                if self._writer_lock is not None:
                    self._writer_lock.release()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        with self._reading() as f:
            return int(f.attrs["n_rows"])

    # ------------------------------------------------------------------ writing
    def _load_writer_state(self) -> None:
        f = self._f
        n_keys = int(f.attrs["n_keys"])
        keys = f["keys/sample_key"].asstr()[:n_keys]
        self._key_ids = dict(zip(keys.tolist(), range(n_keys)))
        for name in DICT_COLUMNS:
            n = int(f.attrs[f"n_dict_{name}"])
            vals = f["dicts"][name].asstr()[:n].tolist()
            self._dict_codes[name] = {v: i for i, v in enumerate(vals)}
        n = int(f.attrs["n_rows"])
        lab = f["labels"]
        comp = _composite(
            lab["key_id"][:n], lab["producer"][:n], lab["side"][:n], lab["round"][:n], lab["config_digest"][:n]
        )
        # a composite has one row per source version: the newest is the one a rerun may reuse
        last_u, last_at = np.unique(comp[::-1], return_index=True)
        self._dedup = _SortedLookup(last_u, lab["label_id"][:n][::-1][last_at])
        self._src_code = np.asarray(lab["source_digest"][:n], np.int32)
        self._parent = np.asarray(lab["parent_label_id"][:n], np.int64)

    def _require_writer(self) -> None:
        if self._f is None or self.mode != "a":
            raise PermissionError("label store opened read-only; use LabelStore(path, mode='a')")

    @staticmethod
    def _to_columns(rows: Any) -> tuple[dict[str, Any], int]:
        if isinstance(rows, Mapping):
            cols = dict(rows)
        else:
            rows = list(rows)
            if not rows:
                return {}, 0
            cols = {k: [r.get(k) for r in rows] for k in rows[0]}
            extra = {k for r in rows for k in r} - set(cols)
            if extra:
                raise ValueError(f"rows have inconsistent fields: {sorted(extra)}")
        if "sample_key" not in cols:
            raise ValueError("rows need a 'sample_key'")
        sk = cols["sample_key"]
        n = 1 if isinstance(sk, str) else len(sk)
        return cols, n

    @staticmethod
    def _enum_codes(values: Any, names: tuple[str, ...], n: int, field: str) -> np.ndarray:
        a = np.asarray(values)
        if a.ndim == 0:
            a = np.broadcast_to(a, (n,))
        if a.dtype.kind in "iu":
            codes = a.astype(np.int8)
            bad = (codes < 0) | (codes >= len(names))
        else:
            a = a.astype(str)
            codes = np.full(n, -1, np.int8)
            for i, name in enumerate(names):
                codes[a == name] = i
            bad = codes < 0
        if bad.any():
            raise ValueError(f"{field} must be one of {names}; got {np.asarray(a)[bad][:3].tolist()}")
        return codes

    def _dict_encode(self, name: str, values: Any, n: int, new_strings: dict[str, list[str]]) -> np.ndarray:
        table = self._dict_codes[name]
        if values is None or isinstance(values, str):
            uniq, inv = [values or ""], np.zeros(n, np.int64)
        else:
            arr = np.asarray(values, dtype=str)
            uniq_arr, inv = np.unique(arr, return_inverse=True)
            uniq = uniq_arr.tolist()
        codes = []
        for s in uniq:
            c = table.get(s)
            if c is None:
                c = len(table)
                table[s] = c
                new_strings[name].append(s)
            codes.append(c)
        if name == "config_digest" and len(table) >= (1 << _CFG_BITS):
            raise ValueError(f"more than {1 << _CFG_BITS} distinct config digests")
        return np.asarray(codes, np.int32)[inv.reshape(-1)]

    def append(self, rows: Any) -> np.ndarray:
        """Label rows (list of dicts, or dict of columns with scalars broadcast) -> label ids (int64, one per row).

        Required: sample_key, side ('orig'|'flip'), round, producer ('convert'|'skelify'|'manual'),
        poses (46,) rad, betas (10,), trans (3,) m. Optional: parent_label_id (-1), pve_mean,
        pve_max (m), kp2d_err, limit_violation (NaN), accepted (True), config_digest, code_version,
        checkpoint_digest (''), created_at (now, UTC ISO), source_digest ('': the sha256 of the
        source data the label was made from). A row whose (sample_key, side, round, producer,
        config_digest) already exists with the same source_digest and parent is not written again:
        its existing id is returned; otherwise (changed annotations, new parent) a new row is written.
        """
        self._require_writer()
        cols, n = self._to_columns(rows)
        if n == 0:
            return np.zeros(0, np.int64)
        if self._key_ids is None:
            self._load_writer_state()
        try:
            return self._append(cols, n)
        except BaseException:
            # ids handed out in memory for a batch that was not committed: reload from disk
            self._key_ids = None
            self._dedup = None
            self._src_code = self._parent = None
            self._dict_codes = {}
            raise

    def _append(self, cols: dict[str, Any], n: int) -> np.ndarray:
        keys = [cols["sample_key"]] if isinstance(cols["sample_key"], str) else list(cols["sample_key"])
        if any(not isinstance(k, str) or not k for k in keys):
            raise ValueError("sample_key must be non-empty strings")

        def scalar_or(name, default, dtype):
            v = cols.get(name)
            a = np.asarray(default if v is None else v, dtype=dtype)
            if a.ndim == 0:
                a = np.broadcast_to(a, (n,))
            if a.shape != (n,):
                raise ValueError(f"{name} has shape {a.shape}, expected ({n},)")
            return a

        side = self._enum_codes(cols.get("side"), SIDES, n, "side")
        producer = self._enum_codes(cols.get("producer"), PRODUCERS, n, "producer")
        round_ = np.broadcast_to(np.asarray(cols.get("round"), np.int64), (n,))
        if (round_ < 0).any() or (round_ > _MAX_ROUND).any():
            raise ValueError(f"round must be in [0, {_MAX_ROUND}]")
        arrays = {}
        for name, width in ARRAY_COLUMNS.items():
            if name not in cols:
                raise ValueError(f"rows need '{name}' ({width},)")
            a = np.asarray(cols[name], np.float32)
            if a.shape == (width,):
                a = np.broadcast_to(a, (n, width))
            if a.shape != (n, width):
                raise ValueError(f"{name} has shape {a.shape}, expected ({n}, {width})")
            arrays[name] = a
        floats = {name: scalar_or(name, np.nan, np.float32) for name in FLOAT_COLUMNS}
        parent = scalar_or("parent_label_id", -1, np.int64)
        accepted = scalar_or("accepted", True, bool)
        if cols.get("created_at") is None:
            cols["created_at"] = _now_iso()
        new_strings: dict[str, list[str]] = {name: [] for name in DICT_COLUMNS}
        dict_codes = {name: self._dict_encode(name, cols.get(name), n, new_strings) for name in DICT_COLUMNS}

        # key ids (new keys numbered in order of first appearance)
        kmap = self._key_ids
        n_keys0 = len(kmap)
        found = list(map(kmap.get, keys))
        new_keys: list[str] = []
        if None in found:
            for i, j in enumerate(found):
                if j is None:
                    j = kmap.get(keys[i])
                    if j is None:
                        j = kmap[keys[i]] = len(kmap)
                        new_keys.append(keys[i])
                    found[i] = j
        key_id = np.asarray(found, np.int64)
        if len(kmap) >= (1 << _KEY_BITS):
            raise ValueError("too many distinct sample keys")

        # idempotency: existing (key, side, round, producer, config) from the same source data and
        # parent -> existing id; changed source data (new annotations) or a new parent makes a new row
        comp = _composite(key_id, producer, side, round_, dict_codes["config_digest"])
        existing = self._dedup.get(comp)
        src_code = dict_codes["source_digest"]
        stale = existing >= 0
        hit = existing[stale]
        stale[stale] = (self._src_code[hit] != src_code[stale]) | (self._parent[hit] != parent[stale])
        existing[stale] = -1
        uniq, first, inv = np.unique(comp, return_index=True, return_inverse=True)
        first_existing = existing[first]
        new_first = np.sort(first[first_existing < 0])  # keep input order for new rows
        n0 = int(self._f.attrs["n_rows"])
        new_ids = np.arange(n0, n0 + new_first.size, dtype=np.int64)
        id_of_uniq = first_existing.copy()
        # map each new first-occurrence back to its unique slot
        slot = np.searchsorted(uniq, comp[new_first])
        id_of_uniq[slot] = new_ids
        ids = id_of_uniq[inv.reshape(-1)]
        w = new_first
        bad_parent = (parent[w] >= new_ids) | (parent[w] < -1)
        if bad_parent.any():
            raise ValueError(f"parent_label_id must be -1 or an earlier label id; got {parent[w][bad_parent][:3].tolist()}")
        if w.size:
            self._write_batch(
                n0,
                new_ids,
                [keys[i] for i in w.tolist()],
                key_id[w], side[w], round_[w], parent[w], producer[w],
                {k: v[w] for k, v in arrays.items()},
                {k: np.asarray(v)[w] for k, v in floats.items()},
                np.asarray(accepted)[w],
                {k: v[w] for k, v in dict_codes.items()},
                new_keys,
                new_strings,
            )  # fmt: skip
            self._dedup.put(comp[w], new_ids)
            if new_ids[-1] >= self._src_code.size:  # grown geometrically: appends stay amortised O(rows)
                size = max(int(new_ids[-1]) + 1, 2 * self._src_code.size)
                self._src_code = np.concatenate([self._src_code, np.zeros(size - self._src_code.size, np.int32)])
                self._parent = np.concatenate([self._parent, np.full(size - self._parent.size, -1, np.int64)])
            self._src_code[new_ids] = src_code[w]
            self._parent[new_ids] = parent[w]
        else:
            self._forget_uncommitted(n_keys0, new_keys, new_strings)
        return ids

    def _forget_uncommitted(self, n_keys0, new_keys, new_strings) -> None:
        for k in new_keys:
            del self._key_ids[k]
        for name, strings in new_strings.items():
            for s in strings:
                del self._dict_codes[name][s]

    def _write_batch(self, n0, ids, keys, key_id, side, round_, parent, producer, arrays, floats, accepted, dict_codes, new_keys, new_strings):
        f = self._f
        m = ids.size
        with FileLock(str(self.path) + ".rwlock", timeout=self._rw.timeout), self._dirty():
            lab = f["labels"]
            data = {
                "label_id": ids,
                "sample_key": np.asarray(keys, dtype=object),
                "key_id": key_id,
                "side": side,
                "round": round_.astype(np.int32),
                "parent_label_id": parent,
                "producer": producer,
                "accepted": accepted.astype(bool),
                **arrays,
                **floats,
                **dict_codes,
            }
            for name, values in data.items():
                ds = lab[name]
                ds.resize(n0 + m, axis=0)
                ds[n0 : n0 + m] = values
            nk0 = int(f.attrs["n_keys"])
            if new_keys:
                for name, values in (("sample_key", np.asarray(new_keys, dtype=object)), ("hash", key_hash(new_keys))):
                    ds = f["keys"][name]
                    ds.resize(nk0 + len(new_keys), axis=0)
                    ds[nk0:] = values
            for name, strings in new_strings.items():
                if strings:
                    ds = f["dicts"][name]
                    d0 = int(f.attrs[f"n_dict_{name}"])
                    ds.resize(d0 + len(strings), axis=0)
                    ds[d0:] = np.asarray(strings, dtype=object)
            self._flush()
            # commit point: counts advance only after the data is on disk
            f.attrs["n_rows"] = n0 + m
            f.attrs["n_keys"] = nk0 + len(new_keys)
            for name, strings in new_strings.items():
                if strings:
                    f.attrs[f"n_dict_{name}"] = int(f.attrs[f"n_dict_{name}"]) + len(strings)
            self._flush()
            self._rebuild_indexes(force=False)

    def _rebuild_indexes(self, *, force: bool, tail_limit: int | None = None) -> None:
        """Re-sort the on-disk lookup indexes when their unindexed tail grows (geometric, so amortised O(n log n))."""
        f = self._f
        a = f.attrs
        n_rows, n_keys = int(a["n_rows"]), int(a["n_keys"])
        n_ix, n_kix = int(a["n_indexed"]), int(a["n_keys_indexed"])

        def stale(n, n_done):
            limit = max(1 << 16, n_done // 2) if tail_limit is None else tail_limit
            return n > n_done and (force or n - n_done > limit)

        if stale(n_keys, n_kix):
            self._rewrite_index(f["keys/hash"][:n_keys], "n_keys_indexed", ("key_hash", "key_hash_id"))
        if stale(n_rows, n_ix):
            self._rewrite_index(f["labels/key_id"][:n_rows], "n_indexed", ("row_key_id", "row"))
        self._flush()

    def _rewrite_index(self, keys: np.ndarray, count_attr: str, names: tuple[str, str]) -> None:
        """Store `keys` sorted (index `names[0]`) with their positions (`names[1]`), crash-safely."""
        f, ix = self._f, self._f["index"]
        order = np.argsort(keys, kind="stable")
        f.attrs[count_attr] = 0  # readers fall back to scanning while the index is rewritten
        f.flush()
        for name, values in zip(names, (keys[order], order.astype(np.int64))):
            ix[name].resize(len(keys), axis=0)
            ix[name][:] = values
        self._flush()
        f.attrs[count_attr] = len(keys)

    def set_current(self, round: int, label_ids: Sequence[int] | np.ndarray) -> int:
        """Make `label_ids` the current labels of their (sample_key, side) in `round`; returns how many changed."""
        self._require_writer()
        ids = np.asarray(label_ids, np.int64).reshape(-1)
        if not 0 <= int(round) <= _MAX_ROUND:
            raise ValueError(f"round must be in [0, {_MAX_ROUND}]")
        f = self._f
        n_rows = int(f.attrs["n_rows"])
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            raise ValueError(f"unknown label ids (store has {n_rows} rows)")
        name = str(int(round))
        cur = self._resolve_current(f, int(round))
        kid = f["labels/key_id"][:n_rows]
        side = f["labels/side"][:n_rows]
        comp = kid[ids].astype(np.int64) * 2 + side[ids]
        # within the call the last id per key+side wins
        rev_u, rev_first = np.unique(comp[::-1], return_index=True)
        keep_ids = ids[::-1][rev_first]
        if cur is not None and cur[0].size:
            ccomp, cids = cur
            pos = np.minimum(np.searchsorted(ccomp, rev_u), ccomp.size - 1)
            same = (ccomp[pos] == rev_u) & (cids[pos] == keep_ids)  # already current: skip
            keep_ids = keep_ids[~same]
        keep_ids = np.sort(keep_ids)
        if keep_ids.size == 0:
            return 0
        with FileLock(str(self.path) + ".rwlock", timeout=self._rw.timeout), self._dirty():
            g = f["current"]
            if name not in g:
                ds = g.create_dataset(name, shape=(0,), maxshape=(None,), dtype="i8", chunks=(_ROW_CHUNK,))
                ds.attrs["n"] = 0
                self._flush()
            ds = g[name]
            n0 = int(ds.attrs["n"])
            ds.resize(n0 + keep_ids.size, axis=0)
            ds[n0:] = keep_ids
            self._flush()
            ds.attrs["n"] = n0 + keep_ids.size
            self._flush()
        return int(keep_ids.size)

    def carry_forward(self, from_round: int, to_round: int) -> int:
        """Copy the current labels of `from_round` into `to_round` where `to_round` has none yet; returns count."""
        self._require_writer()
        with self._reading() as f:
            prev = self._resolve_current(f, from_round)
            now = self._resolve_current(f, to_round)
        if prev is None:
            return 0
        pcomp, pids = prev
        if now is not None:
            pids = pids[~np.isin(pcomp, now[0])]
        return self.set_current(to_round, pids)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _resolve_current(f: h5py.File, round: int) -> tuple[np.ndarray, np.ndarray] | None:
        name = str(int(round))
        if name not in f["current"]:
            return None
        ds = f["current"][name]
        ids = ds[: int(ds.attrs["n"])]
        n_rows = int(f.attrs["n_rows"])
        ids = ids[ids < n_rows]
        if ids.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo, hi = int(ids.min()), int(ids.max()) + 1
        kid = f["labels/key_id"][lo:hi][ids - lo]
        side = f["labels/side"][lo:hi][ids - lo]
        comp = kid.astype(np.int64) * 2 + side
        u, first = np.unique(comp[::-1], return_index=True)  # last entry wins
        return u, ids[::-1][first]

    def _read_rows(self, f: h5py.File, rows: np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        rows = np.unique(np.asarray(rows, np.int64))
        fields = COLUMNS if fields is None else fields
        out: dict[str, np.ndarray] = {}
        if rows.size == 0:
            sel: Any = slice(0, 0)
        elif rows.size > 256:
            # many rows: one contiguous read of the span is far cheaper than a point selection
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            sel = None
        else:
            sel = rows
        for name in fields:
            if name == "source_digest" and name not in f["labels"]:  # store from before the column
                out[name] = np.full(rows.size, "", dtype=object)
                continue
            ds = f[f"labels/{name}"]
            if sel is None:
                raw = ds[lo:hi][rows - lo] if name != "sample_key" else ds.asstr()[lo:hi][rows - lo]
            elif name == "sample_key":
                raw = ds.asstr()[sel]
            else:
                raw = ds[sel]
            if name == "side":
                raw = np.asarray(SIDES, dtype=object)[raw]
            elif name == "producer":
                raw = np.asarray(PRODUCERS, dtype=object)[raw]
            elif name in DICT_COLUMNS:
                table = _dict_table(f, name)
                raw = table[raw] if raw.size else np.zeros(0, object)
            out[name] = np.asarray(raw)
        return out

    def get(self, label_ids: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Label ids -> columns (sorted by id); strings decoded; unknown ids raise KeyError."""
        ids = np.asarray(label_ids, np.int64).reshape(-1)
        with self._reading() as f:
            n = int(f.attrs["n_rows"])
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise KeyError(f"unknown label ids (store has {n} rows)")
            return self._read_rows(f, ids, fields)

    def _key_id(self, f: h5py.File, sample_key: str) -> int:
        h = key_hash([sample_key])[0]
        n_keys, n_kix = int(f.attrs["n_keys"]), int(f.attrs["n_keys_indexed"])
        cands: list[int] = []
        if n_kix:
            ds = f["index/key_hash"]
            lo = _disk_searchsorted(ds, h, 0, n_kix, "left")
            # sorted, so equal hashes form a prefix of the block (64 colliding keys never happen)
            m = int(np.count_nonzero(ds[lo : min(lo + 64, n_kix)] == h))
            if m:
                cands.extend(f["index/key_hash_id"][lo : lo + m].tolist())
        if n_keys > n_kix:
            tail = f["keys/hash"][n_kix:n_keys]
            cands.extend((np.nonzero(tail == h)[0] + n_kix).tolist())
        names = f["keys/sample_key"].asstr()
        for c in sorted(cands):
            if names[c] == sample_key:
                return int(c)
        return -1

    def _rows_of_key(self, f: Any, key_id: int) -> np.ndarray:
        """Row indices of one key id (index lookup + scan of the unindexed tail)."""
        n_rows, n_ix = int(f.attrs["n_rows"]), int(f.attrs["n_indexed"])
        rows = []
        if n_ix:
            ds = f["index/row_key_id"]
            lo = _disk_searchsorted(ds, key_id, 0, n_ix, "left")
            hi = _disk_searchsorted(ds, key_id, lo, n_ix, "right") if lo < n_ix else lo
            if hi > lo:
                rows.append(f["index/row"][lo:hi])
        if n_rows > n_ix:
            tail = f["labels/key_id"][n_ix:n_rows]
            rows.append(np.nonzero(tail == key_id)[0] + n_ix)
        return np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)

    def history(self, sample_key: str, side: str | None = None, *, with_current: bool = False) -> list[dict]:
        """Per-person key -> every label version of it (both sides unless `side`), oldest first, as row dicts.

        `with_current` adds 'current_in_rounds' (rounds in which that version is the current
        label); it reads every round's current list, so it costs more than the lookup itself.
        """
        with self._reading() as f:
            kid = self._key_id(f, sample_key)
            if kid < 0:
                return []
            cols = self._read_rows(f, self._rows_of_key(f, kid))
            current_in = self._current_rounds(f, cols["label_id"]) if with_current else None
        out = _rows_to_dicts(cols)
        if current_in is not None:
            for r in out:
                r["current_in_rounds"] = current_in.get(r["label_id"], [])
        if side is not None:
            out = [r for r in out if r["side"] == side]
        return out

    def _current_rounds(self, f: h5py.File, label_ids: np.ndarray) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        wanted = set(int(i) for i in label_ids)
        for name in sorted(f["current"], key=int):
            res = self._resolve_current(f, int(name))
            if res is None:
                continue
            for i in sorted(set(res[1][np.isin(res[1], label_ids)].tolist()) & wanted):
                out.setdefault(i, []).append(int(name))
        return out

    def rounds(self) -> list[int]:
        """Rounds that have a current-label set, ascending."""
        with self._reading() as f:
            return sorted(int(k) for k in f["current"])

    def current(self, round: int) -> dict[str, np.ndarray]:
        """Round -> current labels: arrays sample_key, side, label_id, sorted by (sample_key, side)."""
        with self._reading() as f:
            res = self._resolve_current(f, round)
            if res is None:
                return {"sample_key": np.zeros(0, object), "side": np.zeros(0, object), "label_id": np.zeros(0, np.int64)}
            cols = self._read_rows(f, res[1], ("label_id", "sample_key", "side"))
        order = np.lexsort((cols["side"].astype(str), cols["sample_key"].astype(str)))
        return {k: cols[k][order] for k in ("sample_key", "side", "label_id")}

    def labels_of_round(self, round: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Round -> columns of its current labels (one row per sample_key+side), sorted by label id."""
        with self._reading() as f:
            res = self._resolve_current(f, round)
            ids = np.zeros(0, np.int64) if res is None else res[1]
            return self._read_rows(f, ids, fields)

    def rows_of_round(self, round: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Round -> columns of every label version produced in it (accepted or not)."""
        with self._reading() as f:
            n = int(f.attrs["n_rows"])
            rows = np.nonzero(f["labels/round"][:n] == int(round))[0]
            return self._read_rows(f, rows, fields)

    def skel_labels(self, round: int) -> dict[str, tuple[SkelLabel | None, SkelLabel | None]]:
        """Round -> {person key: (orig SkelLabel | None, flip SkelLabel | None)} of its current labels."""
        cols = self.labels_of_round(round, ("label_id", "sample_key", "side", "poses", "betas", "trans", "pve_mean", "pve_max", "kp2d_err"))
        out: dict[str, list] = {}
        for i in range(cols["label_id"].size):
            lab = SkelLabel(
                label_id=int(cols["label_id"][i]),
                poses=cols["poses"][i],
                betas=cols["betas"][i],
                trans=cols["trans"][i],
                pve_mean=float(cols["pve_mean"][i]),
                pve_max=float(cols["pve_max"][i]),
                kp2d_err=float(cols["kp2d_err"][i]),
            )
            slot = out.setdefault(str(cols["sample_key"][i]), [None, None])
            slot[0 if cols["side"][i] == "orig" else 1] = lab
        return {k: (v[0], v[1]) for k, v in out.items()}

    def counts(self) -> list[dict]:
        """Per (round, producer): rows produced, of them accepted, and current labels of that round made by that producer."""
        with self._reading() as f:
            n = int(f.attrs["n_rows"])
            rnd = f["labels/round"][:n].astype(np.int64)
            prod = f["labels/producer"][:n].astype(np.int64)
            acc = f["labels/accepted"][:n].astype(np.int64)
            cur = {}
            for name in f["current"]:
                res = self._resolve_current(f, int(name))
                if res is not None:
                    cur[int(name)] = np.bincount(prod[res[1]], minlength=len(PRODUCERS))
        n_p = len(PRODUCERS)
        n_r = int(max([int(rnd.max()) if n else -1, *cur.keys(), -1])) + 1
        rows = np.bincount(rnd * n_p + prod, minlength=n_r * n_p).reshape(n_r, n_p) if n_r else np.zeros((0, n_p), int)
        accepted = np.bincount(rnd * n_p + prod, weights=acc, minlength=n_r * n_p).reshape(n_r, n_p) if n_r else rows
        out = []
        for r in range(n_r):
            for p in range(n_p):
                c = int(cur[r][p]) if r in cur else 0
                if rows[r, p] or c:
                    out.append({"round": r, "producer": PRODUCERS[p], "rows": int(rows[r, p]), "accepted": int(accepted[r, p]), "current": c})
        return out


class _CachedFile:
    """Read-only h5py.File wrapper caching object handles, root attributes and string tables."""

    def __init__(self, f: h5py.File):
        self.f = f
        self.attrs = dict(f.attrs)
        self._items: dict[str, Any] = {}
        self.tables: dict[str, np.ndarray] = {}

    def __getitem__(self, path: str) -> Any:
        obj = self._items.get(path)
        if obj is None:
            obj = self._items[path] = self.f[path]
        return obj


def _dict_table(f: Any, name: str) -> np.ndarray:
    """Decoded strings of a dictionary-encoded column (cached on read-only handles)."""
    tables = getattr(f, "tables", None)
    if tables is not None and name in tables:
        return tables[name]
    n = int(f.attrs[f"n_dict_{name}"])
    table = np.asarray(f[f"dicts/{name}"].asstr()[:n], dtype=object)
    if tables is not None:
        tables[name] = table
    return table


def _rows_to_dicts(cols: dict[str, np.ndarray]) -> list[dict]:
    n = cols["label_id"].size if "label_id" in cols else 0
    out = []
    for i in range(n):
        r = {}
        for k in COLUMNS:
            if k not in cols:
                continue
            v = cols[k][i]
            if isinstance(v, np.ndarray):
                r[k] = v
            elif isinstance(v, (np.bool_, bool)):
                r[k] = bool(v)
            elif isinstance(v, np.integer):
                r[k] = int(v)
            elif isinstance(v, np.floating):
                r[k] = float(v)
            else:
                r[k] = v
        out.append(r)
    return out


def _open_h5(path: Path, mode: str) -> h5py.File:
    """labels.h5 -> open h5py file; an unreadable one (truncated, not HDF5) -> ValueError naming the file and the fix."""
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as exc:
        if not path.exists() or isinstance(exc, PermissionError):
            raise
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path}: not a readable label store ({reason}); restore it from a copy, or rebuild round 0 in a new workdir") from exc


def open_store(workdir_or_path: str | os.PathLike, mode: str = "r", **kw) -> LabelStore:
    """Workdir (holding labels.h5) or the .h5 path itself -> LabelStore."""
    p = Path(workdir_or_path)
    if p.is_dir():
        p = p / "labels.h5"
    return LabelStore(p, mode, **kw)


def _init_file(path: Path, durable: bool) -> None:
    """Create an empty store atomically (built as a temp file, then renamed into place)."""
    tmp = Path(str(path) + ".init.tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        _create_layout(f)
    _replace(tmp, path, durable)


def _replace(tmp: Path, path: Path, durable: bool) -> None:
    """Rename a finished temp file over `path` (fsynced first when `durable`)."""
    if durable:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


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
            _create_layout(dst)
            for name in src["current"]:
                ds = dst["current"].create_dataset(name, shape=(0,), maxshape=(None,), dtype="i8", chunks=(_ROW_CHUNK,))
                ds.attrs["n"] = counts[f"current/{name}"]
            for dpath, n in counts.items():
                if dpath == "labels/source_digest" and n > src[dpath].shape[0]:
                    continue  # store from before the column: _add_source_digest fills it below
                s_ds, d_ds = src[dpath], dst[dpath]
                d_ds.resize(n, axis=0)
                is_str = h5py.check_string_dtype(s_ds.dtype) is not None
                for a in range(0, n, block):
                    b = min(n, a + block)
                    d_ds[a:b] = s_ds.asstr()[a:b] if is_str else s_ds[a:b]
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            _add_source_digest(dst)
        n_rows = counts["labels/label_id"]
    _replace(tmp, path, durable)
    marker.unlink(missing_ok=True)
    return n_rows
