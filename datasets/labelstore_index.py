"""Lookups of the label store: key hashes, the packed dedup key, in-memory and on-disk sorted indexes.

In memory the writer maps the packed (key, producer, side, round, config) composite to the newest
label id with `SortedLookup`. On disk, /index holds the key hashes and the rows' key ids sorted, so
a reader finds one person's rows by binary search instead of scanning every column; rows written
after the last rebuild form an unindexed tail that lookups scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

# Dedup composite: key_id | producer | side | round | config code packed into 64 bits.
KEY_BITS, PROD_BITS, SIDE_BITS, ROUND_BITS, CFG_BITS = 34, 2, 1, 12, 15
MAX_ROUND = (1 << ROUND_BITS) - 1
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


def composite(key_id, producer, side, round_, cfg) -> np.ndarray:
    """Per-row key id, producer, side, round, config code (arrays or scalars) -> packed uint64 dedup keys."""
    c = np.asarray(key_id, np.uint64) << np.uint64(PROD_BITS + SIDE_BITS + ROUND_BITS + CFG_BITS)
    c |= np.asarray(producer, np.uint64) << np.uint64(SIDE_BITS + ROUND_BITS + CFG_BITS)
    c |= np.asarray(side, np.uint64) << np.uint64(ROUND_BITS + CFG_BITS)
    c |= np.asarray(round_, np.uint64) << np.uint64(CFG_BITS)
    c |= np.asarray(cfg, np.uint64)
    return c


class SortedLookup:
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


def find_key_id(f: Any, sample_key: str) -> int:
    """Open store, per-person key -> its key id, or -1 when the store has no such key."""
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


def rows_of_key(f: Any, key_id: int) -> np.ndarray:
    """Open store, key id -> its row indices, ascending (index lookup + scan of the unindexed tail)."""
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


def rebuild_indexes(f: h5py.File, flush: Callable[[], None], *, force: bool, tail_limit: int | None = None) -> None:
    """Re-sort the on-disk lookup indexes when their unindexed tail grows (geometric, so amortised O(n log n)).

    `flush` makes the file durable (the writer's flush); the caller holds the write locks.
    """
    a = f.attrs
    n_rows, n_keys = int(a["n_rows"]), int(a["n_keys"])
    n_ix, n_kix = int(a["n_indexed"]), int(a["n_keys_indexed"])

    def stale(n, n_done):
        limit = max(1 << 16, n_done // 2) if tail_limit is None else tail_limit
        return n > n_done and (force or n - n_done > limit)

    if stale(n_keys, n_kix):
        _rewrite_index(f, flush, f["keys/hash"][:n_keys], "n_keys_indexed", ("key_hash", "key_hash_id"))
    if stale(n_rows, n_ix):
        _rewrite_index(f, flush, f["labels/key_id"][:n_rows], "n_indexed", ("row_key_id", "row"))
    flush()


def _rewrite_index(f: h5py.File, flush: Callable[[], None], keys: np.ndarray, count_attr: str, names: tuple[str, str]) -> None:
    """Store `keys` sorted (index `names[0]`) with their positions (`names[1]`), crash-safely."""
    ix = f["index"]
    order = np.argsort(keys, kind="stable")
    f.attrs[count_attr] = 0  # readers fall back to scanning while the index is rewritten
    f.flush()
    for name, values in zip(names, (keys[order], order.astype(np.int64))):
        ix[name].resize(len(keys), axis=0)
        ix[name][:] = values
    flush()
    f.attrs[count_attr] = len(keys)
