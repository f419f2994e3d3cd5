"""Quarantine: what could not be used, where it came from, which field and why.

`reason` always starts with a stable kind token followed by ':' (missing, shape, nan, inf, type,
truncated, unreadable, unpaired, duplicate, forbidden), so reports can group by kind.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .atomic import atomic_write_bytes


@dataclass(frozen=True)
class QuarantineEntry:
    """One rejected unit (a person, an image sample, or a whole file when nothing finer is known)."""

    key: str
    file: str
    field: str
    reason: str

    @property
    def kind(self) -> str:
        """Stable reason token, e.g. 'shape' for 'shape: got (43, 3), expected (44, 3)'."""
        return self.reason.split(":", 1)[0]

    def to_json(self) -> str:
        """Entry -> one JSON line (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


class Quarantine:
    """Collector of quarantine entries; readers append to it instead of raising."""

    def __init__(self, entries: Iterable[QuarantineEntry] = ()):
        self.entries: list[QuarantineEntry] = list(entries)

    def add(self, entry: QuarantineEntry) -> None:
        """Record one entry."""
        self.entries.append(entry)

    def extend(self, entries: Iterable[QuarantineEntry]) -> None:
        """Record several entries."""
        self.entries.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[QuarantineEntry]:
        return iter(self.entries)

    def by_kind(self) -> dict[str, int]:
        """Reason kind -> count."""
        return dict(sorted(Counter(e.kind for e in self.entries).items()))

    def sorted(self) -> list[QuarantineEntry]:
        """Entries in a canonical order (file, key, field, reason), so reruns write identical files."""
        return sorted(self.entries, key=lambda e: (e.file, e.key, e.field, e.reason))

    def write_jsonl(self, path: str | os.PathLike, *, sort: bool = True) -> int:
        """Write entries to `path` atomically as JSON lines; returns the number written."""
        entries = self.sorted() if sort else self.entries
        data = "".join(e.to_json() + "\n" for e in entries).encode("utf-8")
        atomic_write_bytes(path, data)
        return len(entries)


def read_quarantine(path: str | os.PathLike) -> list[QuarantineEntry]:
    """quarantine.jsonl -> entries (missing file -> empty list)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with p.open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                out.append(QuarantineEntry(key=d["key"], file=d["file"], field=d["field"], reason=d["reason"]))
    return out
