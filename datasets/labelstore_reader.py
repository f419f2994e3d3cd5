"""Label store queries: rows by id, a person's history, a round's current labels, counts.

Readers take `labels.h5.rwlock` shared per query, so they never see a write batch half done, and
keep one read-only handle open while the file is unchanged. A store opened for writing reads
through the writer's own handle instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .labelstore_index import find_key_id, rows_of_key
from .labelstore_layout import COLUMNS, DICT_COLUMNS, PRODUCERS, SIDES, check_format, open_h5
from .locks import FileLock
from .records import SkelLabel


class StoreReader:
    """Queries on labels.h5 at `path`; reads through `own_file` (a writer's open handle) when that is set."""

    def __init__(self, path: Path, *, timeout: float | None = 60.0, own_file: h5py.File | None = None):
        self.path = Path(path)
        self.timeout = timeout
        self.own_file = own_file
        self._rf: _CachedFile | None = None
        self._rsig: tuple | None = None

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        if self.own_file is not None:
            yield self.own_file
            return
        with FileLock(str(self.path) + ".rwlock", shared=True, timeout=self.timeout):
            # Reuse the open handle while the file is unchanged; any committed write changes
            # mtime/size, and a handle opened before it would hold stale metadata.
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._rf is None or sig != self._rsig:
                self._drop_cached()
                f = open_h5(self.path, "r")
                try:
                    check_format(f)
                except BaseException:
                    f.close()
                    raise
                self._rf, self._rsig = _CachedFile(f), sig
            yield self._rf

    def close(self) -> None:
        """Close the cached read-only handle (the next query reopens it)."""
        self._drop_cached()

    def _drop_cached(self) -> None:
        if self._rf is not None:
            self._rf.f.close()
            self._rf = None

    def __len__(self) -> int:
        with self._reading() as f:
            return int(f.attrs["n_rows"])

    def get(self, label_ids: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Label ids -> columns (sorted by id); strings decoded; unknown ids raise KeyError."""
        ids = np.asarray(label_ids, np.int64).reshape(-1)
        with self._reading() as f:
            n = int(f.attrs["n_rows"])
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise KeyError(f"unknown label ids (store has {n} rows)")
            return read_rows(f, ids, fields)

    def history(self, sample_key: str, side: str | None = None, *, with_current: bool = False) -> list[dict]:
        """Per-person key -> every label version of it (both sides unless `side`), oldest first, as row dicts.

        `with_current` adds 'current_in_rounds' (rounds in which that version is the current
        label); it reads every round's current list, so it costs more than the lookup itself.
        """
        with self._reading() as f:
            kid = find_key_id(f, sample_key)
            if kid < 0:
                return []
            cols = read_rows(f, rows_of_key(f, kid))
            current_in = _current_rounds(f, cols["label_id"]) if with_current else None
        out = _rows_to_dicts(cols)
        if current_in is not None:
            for r in out:
                r["current_in_rounds"] = current_in.get(r["label_id"], [])
        if side is not None:
            out = [r for r in out if r["side"] == side]
        return out

    def rounds(self) -> list[int]:
        """Rounds that have a current-label set, ascending."""
        with self._reading() as f:
            return sorted(int(k) for k in f["current"])

    def current(self, round: int) -> dict[str, np.ndarray]:
        """Round -> current labels: arrays sample_key, side, label_id, sorted by (sample_key, side)."""
        with self._reading() as f:
            res = resolve_current(f, round)
            if res is None:
                return {"sample_key": np.zeros(0, object), "side": np.zeros(0, object), "label_id": np.zeros(0, np.int64)}
            cols = read_rows(f, res[1], ("label_id", "sample_key", "side"))
        order = np.lexsort((cols["side"].astype(str), cols["sample_key"].astype(str)))
        return {k: cols[k][order] for k in ("sample_key", "side", "label_id")}

    def labels_of_round(self, round: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Round -> columns of its current labels (one row per sample_key+side), sorted by label id."""
        with self._reading() as f:
            res = resolve_current(f, round)
            ids = np.zeros(0, np.int64) if res is None else res[1]
            return read_rows(f, ids, fields)

    def rows_of_round(self, round: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Round -> columns of every label version produced in it (accepted or not)."""
        with self._reading() as f:
            n = int(f.attrs["n_rows"])
            rows = np.nonzero(f["labels/round"][:n] == int(round))[0]
            return read_rows(f, rows, fields)

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
                res = resolve_current(f, int(name))
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


def resolve_current(f: Any, round: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Open store, round -> (sorted key_id*2+side composites, their current label ids), or None without a set."""
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


def read_rows(f: Any, rows: np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Open store, row ids -> {field: values} of the unique rows, ascending; enums and strings decoded."""
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


def _current_rounds(f: Any, label_ids: np.ndarray) -> dict[int, list[int]]:
    """Label ids -> {label id: rounds in which it is current}, for the ids current somewhere."""
    out: dict[int, list[int]] = {}
    wanted = set(int(i) for i in label_ids)
    for name in sorted(f["current"], key=int):
        res = resolve_current(f, int(name))
        if res is None:
            continue
        for i in sorted(set(res[1][np.isin(res[1], label_ids)].tolist()) & wanted):
            out.setdefault(i, []).append(int(name))
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
    """Columns -> one dict per row in COLUMNS order, numpy scalars as Python scalars."""
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
