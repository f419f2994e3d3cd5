"""The work folder of a project and where everything lives in it: the one place that spells the layout.

    <root>/labels.h5                                        label store (all releases, all rounds)
    <root>/releases/<release>/round-<k>/                    a release round (shards, quarantine, manifest)
    <root>/releases/<release>/round-<k>.partial/            the same while it is assembled
    <root>/releases/<release>/.lock                         one writer of a release at a time
    <root>/work/<release>/round-0/<stem>-<path tag>.labels.npz   one source shard's round-0 conversion
    <root>/checkpoints/<release>/round-<k>/                 the regressor trained on that round
    <root>/predictions/<release>/round-<k>-<sha16>.npz      a checkpoint's predictions of that round (+ .parts/)
    <root>/refine/<release>/round-<k>-<config digest>/      a refinement round's candidate files
    <root>/source/synthetic-<n>-<seed>/                     the default synthetic dataset

A `Workdir` is also an `os.PathLike` of its root, so functions taking a folder take one too.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_RELEASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
ROUND_NAME = re.compile(r"^round-(\d+)$")
MANIFEST = "manifest.json"


def check_release_name(name: str) -> str:
    """Release name -> itself, or ValueError: one folder name (letters, digits, '_', '-', '.'), never a path."""
    if not isinstance(name, str) or not _RELEASE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid release name {name!r}: use letters, digits, '_', '-' or '.' (no '/', no '..', not starting with '.')")
    return name


def list_rounds(release_dir: str | os.PathLike) -> list[int]:
    """Release folder -> its complete rounds (those with a manifest), ascending."""
    p = Path(release_dir)
    out = []
    if p.is_dir():
        for d in p.iterdir():
            m = ROUND_NAME.match(d.name)
            if m and (d / MANIFEST).is_file():
                out.append(int(m.group(1)))
    return sorted(out)


@dataclass(frozen=True)
class Workdir:
    """A project's work folder (module docstring): paths of the label store, releases, conversions, checkpoints, ..."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, path: str | os.PathLike) -> Workdir:
        """A Workdir, or the folder path of one -> Workdir."""
        return path if isinstance(path, Workdir) else cls(Path(path))

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    @property
    def labels(self) -> Path:
        return self.root / "labels.h5"

    def release(self, name: str) -> Path:
        return self.root / "releases" / check_release_name(name)

    def round(self, name: str, round: int) -> Path:
        return self.release(name) / f"round-{int(round)}"

    def staging(self, name: str, round: int) -> Path:
        """Where a round is assembled before it is renamed into place."""
        return self.release(name) / f"round-{int(round)}.partial"

    def rounds(self, name: str) -> list[int]:
        """Complete rounds of release `name`, ascending."""
        return list_rounds(self.release(name))

    def latest_round(self, name: str, round: int | None = None) -> int:
        """`round`, or the latest complete round of release `name`; FileNotFoundError when it has none."""
        rounds = self.rounds(name)
        if not rounds:
            raise FileNotFoundError(f"no release rounds under {self.release(name)}; run build-pseudo-gt first (or check the release name and workdir)")
        return rounds[-1] if round is None else int(round)

    def conversion(self, release: str, source: str | os.PathLike) -> Path:
        """Round-0 labels of one source shard, kept between build steps. Same-named shards of different
        folders (`A/s-000000.tar`, `B/s-000000.tar`) must not share one, so the name carries a digest of the
        absolute path besides the stem."""
        path_tag = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:12]
        return self.root / "work" / check_release_name(release) / "round-0" / f"{Path(source).stem}-{path_tag}.labels.npz"

    def checkpoints(self, release: str, round: int) -> Path:
        """Folder of the regressor trained on release `release` round `round`."""
        return self.root / "checkpoints" / check_release_name(release) / f"round-{int(round)}"

    def predictions(self, release: str, round: int, checkpoint_sha256: str) -> Path:
        """The joined predictions of a checkpoint on a round (its per-shard parts: `prediction_parts`)."""
        return self.root / "predictions" / check_release_name(release) / f"round-{int(round)}-{checkpoint_sha256[:16]}.npz"

    def prediction_parts(self, release: str, round: int, checkpoint_sha256: str) -> Path:
        joined = self.predictions(release, round, checkpoint_sha256)
        return joined.with_name(joined.name[: -len(".npz")] + ".parts")

    def candidates(self, release: str, round: int, config_digest: str) -> Path:
        """Candidate files of refinement round `round` (kept: the round's audit trail and its resume cache)."""
        return self.root / "refine" / check_release_name(release) / f"round-{int(round)}-{config_digest}"

    def synthetic_source(self, images: int, seed: int) -> Path:
        """The synthetic dataset this workdir generates by default."""
        return self.root / "source" / f"synthetic-{int(images)}-{int(seed)}"
