"""Label rows on their way into the store: caller input -> validated columns (`LabelRows`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .labelstore_index import MAX_ROUND
from .labelstore_layout import ARRAY_COLUMNS, FLOAT_COLUMNS, PRODUCERS, SIDES


@dataclass(frozen=True)
class LabelRows:
    """n label rows as the store holds them: per-row arrays of length n, enums and strings as codes.

    `key_id` and `codes` (dictionary codes of the DICT_COLUMNS) depend on the store's tables, so
    `parse_rows` leaves them empty and the writer fills them with `encoded`.
    """

    sample_key: np.ndarray  # (n,) object, non-empty str
    side: np.ndarray  # (n,) int8 code into SIDES
    round: np.ndarray  # (n,) int64
    parent_label_id: np.ndarray  # (n,) int64, -1 = none
    producer: np.ndarray  # (n,) int8 code into PRODUCERS
    accepted: np.ndarray  # (n,) bool
    arrays: Mapping[str, np.ndarray]  # ARRAY_COLUMNS: (n, width) float32 (poses rad, betas, trans m)
    floats: Mapping[str, np.ndarray]  # FLOAT_COLUMNS: (n,) float32, NaN = unknown
    key_id: np.ndarray | None = None  # (n,) int64
    codes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # DICT_COLUMNS: (n,) int32

    def encoded(self, key_id: np.ndarray, codes: Mapping[str, np.ndarray]) -> "LabelRows":
        """Same rows with their key ids (n,) and dictionary codes {column: (n,) int32} filled in."""
        return dataclasses.replace(self, key_id=key_id, codes=codes)

    def take(self, idx: np.ndarray) -> "LabelRows":
        """Row positions (m,) -> the LabelRows of those rows, in that order."""
        return LabelRows(
            sample_key=self.sample_key[idx],
            side=self.side[idx],
            round=self.round[idx],
            parent_label_id=self.parent_label_id[idx],
            producer=self.producer[idx],
            accepted=self.accepted[idx],
            arrays={k: v[idx] for k, v in self.arrays.items()},
            floats={k: v[idx] for k, v in self.floats.items()},
            key_id=None if self.key_id is None else self.key_id[idx],
            codes={k: v[idx] for k, v in self.codes.items()},
        )

    def columns(self, label_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Label ids (n,) -> {/labels column name: values to store}, in the order they are written."""
        return {
            "label_id": label_ids,
            "sample_key": self.sample_key,
            "key_id": self.key_id,
            "side": self.side,
            "round": self.round.astype(np.int32),
            "parent_label_id": self.parent_label_id,
            "producer": self.producer,
            "accepted": self.accepted.astype(bool),
            **self.arrays,
            **self.floats,
            **self.codes,
        }


def to_columns(rows: Any) -> tuple[dict[str, Any], int]:
    """List of row dicts, or a dict of columns -> (dict of columns, row count n)."""
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


def parse_rows(cols: dict[str, Any], n: int) -> LabelRows:
    """Columns of n rows (scalars broadcast) -> validated LabelRows; fills a missing created_at in `cols`.

    Raises ValueError naming the field for a wrong shape, an unknown side/producer or round.
    """
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

    side = _enum_codes(cols.get("side"), SIDES, n, "side")
    producer = _enum_codes(cols.get("producer"), PRODUCERS, n, "producer")
    round_ = np.broadcast_to(np.asarray(cols.get("round"), np.int64), (n,))
    if (round_ < 0).any() or (round_ > MAX_ROUND).any():
        raise ValueError(f"round must be in [0, {MAX_ROUND}]")
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
        cols["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sample_key = np.empty(n, dtype=object)
    sample_key[:] = keys
    return LabelRows(sample_key, side, round_, parent, producer, accepted, arrays, floats)


def _enum_codes(values: Any, names: tuple[str, ...], n: int, field: str) -> np.ndarray:
    """Names or codes (scalar broadcast to n) -> int8 codes into `names`; ValueError naming `field` otherwise."""
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
