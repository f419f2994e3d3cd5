"""Training sources: our releases (a folder with round manifests) and HSMR-v1 / HMR2.0-format tar sets.

A tar-set spec is written as HSMR's configs write shard URLs: a brace range
(`/data/aic/{000000..000209}.tar`), a glob (`/data/insta/*.tar`), a folder of `.tar` files, or a
single tar; several specs can be joined with `::`. No `manifest.json` is needed and the fields our
releases add (`orig_label_id`, `round`, `release`, `person_index`, …) are optional. A training
split (`DataConfig.split`, by a hash of the image key) applies to every source alike.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from braceexpand import braceexpand

from skelpgt.datasets.release import MANIFEST, list_rounds, open_release, open_shards


def is_release(spec: str | os.PathLike) -> bool:
    """Whether `spec` is one of our releases (a round folder with manifest.json, or a folder of such rounds)."""
    p = Path(spec)
    return p.is_dir() and ((p / MANIFEST).is_file() or bool(list_rounds(p)))


def tar_urls(spec: str | os.PathLike) -> list[str]:
    """Tar-set spec (brace range, glob, folder, file; `::`-joined) → the tar paths, in spec order; each must exist."""
    urls: list[str] = []
    for part in str(spec).split("::"):
        for item in braceexpand(part):
            if any(ch in item for ch in "*?["):
                found = sorted(glob.glob(item))
                if not found:
                    raise FileNotFoundError(f"tar set {spec!r}: no file matches {item!r}")
                urls += found
            elif Path(item).is_dir():
                found = sorted(str(p) for p in Path(item).glob("*.tar"))
                if not found:
                    raise FileNotFoundError(f"tar set {spec!r}: folder {item} holds no .tar files")
                urls += found
            elif Path(item).is_file():
                urls.append(item)
            else:
                raise FileNotFoundError(f"tar set {spec!r}: {item} does not exist")
    return urls


def open_source_persons(spec: str | os.PathLike, round: int | None = None, **kw):
    """One pass over a source's persons (`open_release(..., per_person=True)` fields), release or tar set alike."""
    if is_release(spec):
        return open_release(spec, round, per_person=True, **kw)
    return open_shards(tar_urls(spec), per_person=True, **kw)
