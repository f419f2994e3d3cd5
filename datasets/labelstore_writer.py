"""The single writer of labels.h5: its locks, crash-safe appends with idempotency, current-label pointers.

A batch writes its rows, flushes, and only then advances the committed counts in the root
attributes (and flushes again). A `labels.h5.writing` marker exists while the file is being
modified; finding it at open means the last writer died mid-write, and the store is first
rebuilt from its committed part (`recover`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .atomic import fsync_dir
from .labelstore_index import CFG_BITS, KEY_BITS, MAX_ROUND, SortedLookup, composite, key_hash, rebuild_indexes
from .labelstore_layout import DICT_COLUMNS, add_source_digest, check_format, create_current, fsync_file, init_file, open_h5
from .labelstore_reader import resolve_current
from .labelstore_recover import recover
from .labelstore_rows import LabelRows, parse_rows
from .locks import FileLock


@dataclass
class _Additions:
    """Sample keys and dictionary strings a batch adds to the store's tables (in order of first use)."""

    keys: list[str] = field(default_factory=list)
    strings: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in DICT_COLUMNS})


class _WriterState:
    """The writer's in-memory copy of the store's tables: key ids, string codes, the dedup lookup."""

    def __init__(self, f: h5py.File):
        n_keys = int(f.attrs["n_keys"])
        keys = f["keys/sample_key"].asstr()[:n_keys]
        self.key_ids: dict[str, int] = dict(zip(keys.tolist(), range(n_keys)))
        self.dict_codes: dict[str, dict[str, int]] = {}
        for name in DICT_COLUMNS:
            n = int(f.attrs[f"n_dict_{name}"])
            vals = f["dicts"][name].asstr()[:n].tolist()
            self.dict_codes[name] = {v: i for i, v in enumerate(vals)}
        n = int(f.attrs["n_rows"])
        lab = f["labels"]
        comp = composite(lab["key_id"][:n], lab["producer"][:n], lab["side"][:n], lab["round"][:n], lab["config_digest"][:n])
        # a composite has one row per source version: the newest is the one a rerun may reuse
        last_u, last_at = np.unique(comp[::-1], return_index=True)
        self.dedup = SortedLookup(last_u, lab["label_id"][:n][::-1][last_at])
        self.src_code = np.asarray(lab["source_digest"][:n], np.int32)  # per label id
        self.parent = np.asarray(lab["parent_label_id"][:n], np.int64)  # per label id

    def encode(self, name: str, values: Any, n: int, new: _Additions) -> np.ndarray:
        """Strings of dictionary column `name` (one, or n) -> (n,) int32 codes; unseen strings get new codes."""
        table = self.dict_codes[name]
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
                new.strings[name].append(s)
            codes.append(c)
        if name == "config_digest" and len(table) >= (1 << CFG_BITS):
            raise ValueError(f"more than {1 << CFG_BITS} distinct config digests")
        return np.asarray(codes, np.int32)[inv.reshape(-1)]

    def key_id_of(self, keys: np.ndarray, new: _Additions) -> np.ndarray:
        """Per-person keys (n,) -> key ids (n,) int64; new keys are numbered in order of first appearance."""
        kmap = self.key_ids
        found = list(map(kmap.get, keys))
        if None in found:
            for i, j in enumerate(found):
                if j is None:
                    j = kmap.get(keys[i])
                    if j is None:
                        j = kmap[keys[i]] = len(kmap)
                        new.keys.append(keys[i])
                    found[i] = j
        if len(kmap) >= (1 << KEY_BITS):
            raise ValueError("too many distinct sample keys")
        return np.asarray(found, np.int64)

    def reusable(self, comp: np.ndarray, rows: LabelRows) -> np.ndarray:
        """Dedup composites (n,) -> existing label id per row, or -1 where the row must be written.

        An existing row is reused only if made from the same source data with the same parent;
        changed annotations or a new parent make a new row.
        """
        existing = self.dedup.get(comp)
        src_code = rows.codes["source_digest"]
        stale = existing >= 0
        hit = existing[stale]
        stale[stale] = (self.src_code[hit] != src_code[stale]) | (self.parent[hit] != rows.parent_label_id[stale])
        existing[stale] = -1
        return existing

    def remember(self, comp: np.ndarray, ids: np.ndarray, rows: LabelRows) -> None:
        """Record committed rows (their composites (m,), label ids (m,), columns) for later dedup."""
        self.dedup.put(comp, ids)
        if ids[-1] >= self.src_code.size:  # grown geometrically: appends stay amortised O(rows)
            size = max(int(ids[-1]) + 1, 2 * self.src_code.size)
            self.src_code = np.concatenate([self.src_code, np.zeros(size - self.src_code.size, np.int32)])
            self.parent = np.concatenate([self.parent, np.full(size - self.parent.size, -1, np.int64)])
        self.src_code[ids] = rows.codes["source_digest"]
        self.parent[ids] = rows.parent_label_id

    def forget(self, new: _Additions) -> None:
        """Drop keys and strings numbered for a batch that wrote nothing."""
        for k in new.keys:
            del self.key_ids[k]
        for name, strings in new.strings.items():
            for s in strings:
                del self.dict_codes[name][s]


class StoreWriter:
    """Holds `labels.h5.lock` from open to close; recovers a crashed store, creates a missing one."""

    def __init__(self, path: Path, *, timeout: float | None = 60.0, durable: bool = True):
        self.path = Path(path)
        self.timeout = timeout
        self.durable = durable
        self.f: h5py.File | None = None
        self.recovered: int | None = None  # rows kept by a crash recovery at open, if one ran
        self._state: _WriterState | None = None
        self._marker = Path(str(self.path) + ".writing")
        self._broken = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_lock = FileLock(str(self.path) + ".lock", timeout=timeout, note=f"pid {os.getpid()}").acquire()
        try:
            with self._exclusive():
                if self._marker.exists():
                    # the previous writer died inside a write: HDF5 may hold half-written
                    # metadata beyond the commit point, so copy the committed part afresh
                    self.recovered = recover(self.path, durable=durable)
                if not self.path.exists():
                    init_file(self.path, durable)
                self.f = open_h5(self.path, "a")
                check_format(self.f)
                if "source_digest" not in self.f["labels"]:
                    with self._dirty():
                        add_source_digest(self.f)
                        self._flush()
        except BaseException:
            if self.f is not None:
                self.f.close()
            self._writer_lock.release()
            raise

    def _exclusive(self) -> FileLock:
        """The read/write lock taken exclusively: readers wait while a batch is written."""
        return FileLock(str(self.path) + ".rwlock", timeout=self.timeout)

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
        self.f.flush()
        if self.durable:
            fsync_file(self.path)

    def close(self) -> None:
        """Bring the lookup index up to date, close the file and release the writer lock."""
        if self.f is None:
            return
        try:
            with self._exclusive():
                if self._broken:
                    self.f.close()
                else:
                    with self._dirty():
                        rebuild_indexes(self.f, self._flush, force=False, tail_limit=0)
                        self.f.close()
        finally:
            self.f = None
            self._writer_lock.release()

    def append(self, cols: dict[str, Any], n: int) -> np.ndarray:
        """Columns of n > 0 rows (see LabelStore.append) -> label ids (n,) int64, existing ones reused."""
        if self._state is None:
            self._state = _WriterState(self.f)
        try:
            return self._append(parse_rows(cols, n), cols)
        except BaseException:
            # ids handed out in memory for a batch that was not committed: reload from disk
            self._state = None
            raise

    def _append(self, rows: LabelRows, cols: dict[str, Any]) -> np.ndarray:
        st, new = self._state, _Additions()
        n = rows.side.size
        codes = {name: st.encode(name, cols.get(name), n, new) for name in DICT_COLUMNS}
        rows = rows.encoded(st.key_id_of(rows.sample_key, new), codes)
        comp = composite(rows.key_id, rows.producer, rows.side, rows.round, codes["config_digest"])
        ids, w = _assign_ids(comp, st.reusable(comp, rows), int(self.f.attrs["n_rows"]))
        batch = rows.take(w)
        new_ids = ids[w]
        bad_parent = (batch.parent_label_id >= new_ids) | (batch.parent_label_id < -1)
        if bad_parent.any():
            raise ValueError(f"parent_label_id must be -1 or an earlier label id; got {batch.parent_label_id[bad_parent][:3].tolist()}")
        if w.size:
            self._write_batch(new_ids, batch, new)
            st.remember(comp[w], new_ids, batch)
        else:
            st.forget(new)
        return ids

    def _write_batch(self, ids: np.ndarray, rows: LabelRows, new: _Additions) -> None:
        """Append rows with their new label ids (contiguous from n_rows) and the table additions, then commit."""
        f = self.f
        n0, m = int(ids[0]), ids.size
        with self._exclusive(), self._dirty():
            lab = f["labels"]
            for name, values in rows.columns(ids).items():
                ds = lab[name]
                ds.resize(n0 + m, axis=0)
                ds[n0 : n0 + m] = values
            nk0 = int(f.attrs["n_keys"])
            if new.keys:
                for name, values in (("sample_key", np.asarray(new.keys, dtype=object)), ("hash", key_hash(new.keys))):
                    ds = f["keys"][name]
                    ds.resize(nk0 + len(new.keys), axis=0)
                    ds[nk0:] = values
            for name, strings in new.strings.items():
                if strings:
                    ds = f["dicts"][name]
                    d0 = int(f.attrs[f"n_dict_{name}"])
                    ds.resize(d0 + len(strings), axis=0)
                    ds[d0:] = np.asarray(strings, dtype=object)
            self._flush()
            # commit point: counts advance only after the data is on disk
            f.attrs["n_rows"] = n0 + m
            f.attrs["n_keys"] = nk0 + len(new.keys)
            for name, strings in new.strings.items():
                if strings:
                    f.attrs[f"n_dict_{name}"] = int(f.attrs[f"n_dict_{name}"]) + len(strings)
            self._flush()
            rebuild_indexes(f, self._flush, force=False)

    def set_current(self, round: int, label_ids: Sequence[int] | np.ndarray) -> int:
        """Round, label ids -> how many of them became current for their (sample_key, side) in that round."""
        ids = np.asarray(label_ids, np.int64).reshape(-1)
        if not 0 <= int(round) <= MAX_ROUND:
            raise ValueError(f"round must be in [0, {MAX_ROUND}]")
        f = self.f
        n_rows = int(f.attrs["n_rows"])
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            raise ValueError(f"unknown label ids (store has {n_rows} rows)")
        name = str(int(round))
        cur = resolve_current(f, int(round))
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
        with self._exclusive(), self._dirty():
            if name not in f["current"]:
                create_current(f, name)
                self._flush()
            ds = f["current"][name]
            n0 = int(ds.attrs["n"])
            ds.resize(n0 + keep_ids.size, axis=0)
            ds[n0:] = keep_ids
            self._flush()
            ds.attrs["n"] = n0 + keep_ids.size
            self._flush()
        return int(keep_ids.size)

    def carry_forward(self, from_round: int, to_round: int) -> int:
        """From round, to round -> how many current labels of `from_round` were copied where `to_round` has none."""
        prev = resolve_current(self.f, from_round)
        now = resolve_current(self.f, to_round)
        if prev is None:
            return 0
        pcomp, pids = prev
        if now is not None:
            pids = pids[~np.isin(pcomp, now[0])]
        return self.set_current(to_round, pids)


def _assign_ids(comp: np.ndarray, existing: np.ndarray, n0: int) -> tuple[np.ndarray, np.ndarray]:
    """Composites (n,), reusable id or -1 per row (n,), next free id -> (label id per row, positions to write).

    Rows repeating a composite within the batch share the first one's id; new rows keep input order.
    """
    uniq, first, inv = np.unique(comp, return_index=True, return_inverse=True)
    first_existing = existing[first]
    new_first = np.sort(first[first_existing < 0])
    id_of_uniq = first_existing.copy()
    # map each new first-occurrence back to its unique slot
    id_of_uniq[np.searchsorted(uniq, comp[new_first])] = np.arange(n0, n0 + new_first.size, dtype=np.int64)
    return id_of_uniq[inv.reshape(-1)], new_first
