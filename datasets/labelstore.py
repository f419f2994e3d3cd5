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

This module is the public facade; the work is done by labelstore_layout (file format),
labelstore_rows (input validation), labelstore_index (lookups), labelstore_reader (queries),
labelstore_writer (the writer) and labelstore_recover (crash recovery).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .labelstore_index import key_hash
from .labelstore_layout import ARRAY_COLUMNS, COLUMNS, DICT_COLUMNS, FLOAT_COLUMNS, FORMAT, PRODUCERS, SIDES
from .labelstore_reader import StoreReader
from .labelstore_recover import recover
from .labelstore_rows import to_columns
from .labelstore_writer import StoreWriter
from .workdir import Workdir

__all__ = [
    "ARRAY_COLUMNS", "COLUMNS", "DICT_COLUMNS", "FLOAT_COLUMNS", "FORMAT", "PRODUCERS", "SIDES",
    "LabelStore", "key_hash", "open_store", "recover",
]  # fmt: skip


class LabelStore(StoreReader):
    """labels.h5 handle: `LabelStore(path)` reads; `LabelStore(path, mode='a')` is the single writer."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, timeout: float | None = 60.0, durable: bool = True):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.mode = mode
        self.durable = durable
        self._writer = StoreWriter(Path(path), timeout=timeout, durable=durable) if mode == "a" else None
        if self._writer is None and not Path(path).exists():
            raise FileNotFoundError(f"label store not found: {Path(path)}")
        super().__init__(Path(path), timeout=timeout, own_file=None if self._writer is None else self._writer.f)
        self.recovered: int | None = None if self._writer is None else self._writer.recovered

    def _writing(self) -> StoreWriter:
        if self._writer is None or self._writer.f is None:
            raise PermissionError("label store opened read-only; use LabelStore(path, mode='a')")
        return self._writer

    def close(self) -> None:
        """Writer: bring the lookup index up to date, flush and release the locks. Reader: close the file."""
        super().close()
        if self._writer is not None:
            self.own_file = None
            self._writer.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        writer = self._writing()
        cols, n = to_columns(rows)
        if n == 0:
            return np.zeros(0, np.int64)
        return writer.append(cols, n)

    def set_current(self, round: int, label_ids: Sequence[int] | np.ndarray) -> int:
        """Make `label_ids` the current labels of their (sample_key, side) in `round`; returns how many changed."""
        return self._writing().set_current(round, label_ids)

    def carry_forward(self, from_round: int, to_round: int) -> int:
        """Copy the current labels of `from_round` into `to_round` where `to_round` has none yet; returns count."""
        return self._writing().carry_forward(from_round, to_round)


def open_store(workdir_or_path: str | os.PathLike, mode: str = "r", **kw) -> LabelStore:
    """Workdir (holding labels.h5) or the .h5 path itself -> LabelStore."""
    p = Path(workdir_or_path)
    return LabelStore(Workdir(p).labels if p.is_dir() else p, mode, **kw)
