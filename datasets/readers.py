"""Source readers: HMR2.0-style tars and SPIN/AMASS-style `.npz` -> one `PersonRecord` per person.

Readers never raise on bad samples: each rejected unit becomes exactly one `QuarantineEntry`, so
`persons read + quarantined == units in` always holds (see `ReadCounts`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .pyd import load_pyd
from .quarantine import Quarantine, QuarantineEntry
from .smplparams import SmplParamsError, read_smpl_params
from .records import (
    IMAGE_EXTS,
    N_KEYPOINTS,
    PersonRecord,
    check_image_bytes,
    person_from_dict,
    person_key,
    safe_image_key,
)
from .tario import TarDamage, iter_tar

PYD_EXT = "data.pyd"


@dataclass
class ReadCounts:
    """Units seen by a reader: `n_in == n_good + n_quarantined` by construction."""

    n_good: int = 0
    n_quarantined: int = 0

    @property
    def n_in(self) -> int:
        return self.n_good + self.n_quarantined


class _Sink:
    """Routes quarantine entries to the caller's collector while counting."""

    def __init__(self, quarantine: Quarantine | None, counts: ReadCounts | None):
        self.q = quarantine if quarantine is not None else Quarantine()
        self.c = counts if counts is not None else ReadCounts()

    def bad(self, entry: QuarantineEntry) -> None:
        self.q.add(entry)
        self.c.n_quarantined += 1

    def good(self) -> None:
        self.c.n_good += 1

    def route(self, result: PersonRecord | QuarantineEntry) -> Iterator[PersonRecord]:
        """Yield a validated record (counted good) or quarantine the entry explaining why not."""
        if isinstance(result, QuarantineEntry):
            self.bad(result)
        else:
            self.good()
            yield result


def _pick_image(members: dict[str, bytes]) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    return None


def read_hmr2_tar(
    path: str | os.PathLike,
    quarantine: Quarantine | None = None,
    counts: ReadCounts | None = None,
) -> Iterator[PersonRecord]:
    """HMR2.0-style tar (`<key>.jpg|png` + `<key>.data.pyd`) -> validated PersonRecords, in tar order."""
    sink = _Sink(quarantine, counts)
    src = os.fspath(path)
    if os.path.isfile(src) and os.path.getsize(src) == 0:
        sink.bad(QuarantineEntry("*", src, "tar", "empty: zero-byte file"))
        return
    n_items = 0
    seen: set[str] = set()
    for item in iter_tar(src):
        n_items += 1
        if isinstance(item, TarDamage):
            sink.bad(QuarantineEntry(key=item.key or "*", file=src, field=item.member or "tar", reason=item.reason))
            continue
        key, members = item.key, item.members
        if key in seen:  # same image twice in one tar: its persons would share keys and label ids
            sink.bad(QuarantineEntry(key, src, "key", "duplicate: image key appears twice in this tar"))
            continue
        seen.add(key)
        if item.duplicates:
            sink.bad(QuarantineEntry(key, src, item.duplicates[0], f"duplicate: member .{item.duplicates[0]} appears twice"))
            continue
        img = _pick_image(members)
        if PYD_EXT not in members:
            field = "data.pyd"
            sink.bad(QuarantineEntry(key, src, field, "unpaired: no .data.pyd member for this image" if img else "unpaired: sample has neither image nor .data.pyd"))
            continue
        if img is None:
            sink.bad(QuarantineEntry(key, src, "image", "unpaired: no .jpg/.jpeg/.png member for this .data.pyd"))
            continue
        ext, image = img
        bad_img = check_image_bytes(image, ext)
        if bad_img:
            sink.bad(QuarantineEntry(key, src, "image", bad_img))
            continue
        try:
            persons = load_pyd(members[PYD_EXT])
        except Exception as exc:
            reason = str(exc) if str(exc).startswith("forbidden:") else f"unreadable: cannot unpickle ({type(exc).__name__}: {exc})"
            sink.bad(QuarantineEntry(key, src, "data.pyd", reason))
            continue
        if not isinstance(persons, list):
            sink.bad(QuarantineEntry(key, src, "data.pyd", f"type: expected a list of person dicts, got {type(persons).__name__}"))
            continue
        if not persons:
            sink.bad(QuarantineEntry(key, src, "data.pyd", "missing: empty person list"))
            continue
        for i, d in enumerate(persons):
            yield from sink.route(person_from_dict(d, image_key=key, person_index=i, source_file=src, image=image, image_ext=ext))
    if n_items == 0:  # a well-formed but empty archive: one unit, so the shard is accounted for
        sink.bad(QuarantineEntry("*", src, "tar", "empty: the archive holds no samples"))


def _keypoints_from_npz(z, n: int, sink: _Sink, src: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(N,44,3) 2D and (N,44,4) 3D keypoints assembled from whichever npz keys exist (zeros otherwise)."""
    kp2d = np.zeros((n, N_KEYPOINTS, 3), np.float32)
    kp3d = np.zeros((n, N_KEYPOINTS, 4), np.float32)
    # (key, target, row offset, expected trailing shape, rows to take)
    layout = [
        ("keypoints_2d", kp2d, 0, (N_KEYPOINTS, 3), N_KEYPOINTS),
        ("keypoints_3d", kp3d, 0, (N_KEYPOINTS, 4), N_KEYPOINTS),
        ("openpose", kp2d, 0, (25, 3), 25),
        ("body_keypoints_2d", kp2d, 0, (25, 3), 25),
        ("body_keypoints_3d", kp3d, 0, (25, 4), 25),
        ("part", kp2d, 25, (24, 3), 19),  # SPIN GT joints: our rows 25-43 are its first 19
        ("extra_keypoints_2d", kp2d, 25, (19, 3), 19),
        ("S", kp3d, 25, (24, 4), 19),
        ("extra_keypoints_3d", kp3d, 25, (19, 4), 19),
    ]
    for name, target, off, shape, rows in layout:
        if name not in z.files:
            continue
        a = np.asarray(z[name])
        if a.shape[1:] != shape or a.shape[0] != n:
            sink.bad(QuarantineEntry("*", src, name, f"shape: got {a.shape}, expected ({n}, {', '.join(map(str, shape))})"))
            return None
        target[:, off : off + rows] = a[:, :rows]
    return kp2d, kp3d


def read_npz(
    path: str | os.PathLike,
    quarantine: Quarantine | None = None,
    counts: ReadCounts | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    scale_in_pixels: bool = False,
) -> Iterator[PersonRecord]:
    """SPIN/AMASS-style npz (pose|poses (N,72|156|165), betas, trans, imgname, center, scale, part, ...) -> PersonRecords.

    `scale` is taken as bbox/200 like the HMR2 tars ((N,) -> (s, s)); pass `scale_in_pixels=True`
    for files that store pixels. Images are read from `image_root/imgname` when given; otherwise
    records carry no image. Pose layouts (SMPL, SMPL-H, SMPL-X, AMASS `root_orient`+`pose_body`):
    see `smplparams`; an AMASS `gender` becomes the record's `gender` (the SMPL body its
    parameters belong to) and, with `mocap_framerate`, goes into `extra_info`. Extreme β are kept.
    """
    sink = _Sink(quarantine, counts)
    src = os.fspath(path)
    try:
        z = np.load(src, allow_pickle=False)
        files = set(z.files)
    except Exception as exc:
        sink.bad(QuarantineEntry("*", src, "npz", f"unreadable: {type(exc).__name__}: {exc}"))
        return
    with z:
        try:
            params = read_smpl_params(z, require_betas=False)
        except SmplParamsError as err:
            sink.bad(QuarantineEntry("*", src, err.field, err.reason))
            return
        n = len(params.pose)
        body_pose, betas, trans = params.pose, params.betas, params.trans
        # kept in each person's extra_info (and so in the release): which SMPL body, what frame rate
        extra = {"mocap_framerate": params.framerate} if params.framerate is not None else {}
        has_smpl, center, scale = _npz_boxes(z, files, n, scale_in_pixels)
        kps = _keypoints_from_npz(z, n, sink, src)
        if kps is None:
            return
        kp2d, kp3d = kps
        names = np.asarray(z["imgname"]).astype(str) if "imgname" in files else None
    stem = safe_image_key(Path(src).name)
    seen: dict[str, int] = {}
    root = Path(image_root) if image_root is not None else None
    for i in range(n):
        if names is not None:
            image_key = safe_image_key(str(names[i]))
            ext = Path(str(names[i])).suffix.lstrip(".").lower()
        else:
            image_key, ext = f"{stem}/{i:06d}", ""
        pidx = seen.get(image_key, 0)
        seen[image_key] = pidx + 1
        image = b""
        if root is not None and names is not None:
            image, bad = _npz_image(root / str(names[i]), ext)
            if bad:
                sink.bad(QuarantineEntry(person_key(image_key, pidx), src, "image", bad))
                continue
        else:
            ext = ""
        d = {
            "keypoints_2d": kp2d[i],
            "keypoints_3d": kp3d[i],
            "center": center[i],
            "scale": scale[i],
            "body_pose": body_pose[i],
            "betas": betas[i],
            "trans": trans[i],
            "has_body_pose": has_smpl[i],
            "has_betas": has_smpl[i],
            "personid": pidx,
            "extra_info": {**extra, "smpl_gender": params.genders[i]} if params.genders[i] else dict(extra),
        }
        rec = person_from_dict(d, image_key=image_key, person_index=pidx, source_file=src, image=image, image_ext=ext)
        if not isinstance(rec, QuarantineEntry) and params.genders[i]:
            rec = dataclasses.replace(rec, gender=params.genders[i])
        yield from sink.route(rec)


def _npz_boxes(z, files: set[str], n: int, scale_in_pixels: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """has_smpl (N,), center (N,2) px and scale (N,2) in bbox/200 units of an npz (defaults: all SMPL, zeros)."""
    has_smpl = np.asarray(z["has_smpl"]) if "has_smpl" in files else np.ones(n, bool)
    center = np.asarray(z["center"], np.float64) if "center" in files else np.zeros((n, 2))
    scale = np.asarray(z["scale"], np.float64) if "scale" in files else np.zeros((n, 2))
    if scale.ndim == 1 and scale.shape[0] == n:
        scale = np.repeat(scale[:, None], 2, axis=1)
    if scale_in_pixels:
        scale = scale / 200.0
    return has_smpl, center, scale


def _npz_image(path: Path, ext: str) -> tuple[bytes, str]:
    """An npz person's image file → (its bytes, '') or (b'', why it is unusable)."""
    try:
        image = path.read_bytes()
    except OSError as exc:
        return b"", f"unreadable: {exc.strerror or exc}"
    return image, check_image_bytes(image, ext) or ""


def source_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """A file, a folder (its *.tar and *.npz, sorted) or a list of those -> sorted list of source files.

    A dataset root (a folder with `dataset.json` and a `shards/` folder, as `skelpgt data
    make-synthetic` writes) stands for its shards: its `truth.npz` holds no images. A path that does
    not exist raises FileNotFoundError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and (p / "dataset.json").is_file() and (p / "shards").is_dir():
            p = p / "shards"
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.iterdir()) if f.suffix in (".tar", ".npz") and f.is_file())
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p}: input not found (give .tar/.npz files or folders of them)")
    return out


def read_source(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    quarantine: Quarantine | None = None,
    counts: ReadCounts | None = None,
    **npz_kwargs,
) -> Iterator[PersonRecord]:
    """Source tars/npz files (or folders of them) -> PersonRecords in file order; bad units go to `quarantine`."""
    for f in source_files(paths):
        if f.endswith(".npz"):
            yield from read_npz(f, quarantine, counts, **npz_kwargs)
        else:
            yield from read_hmr2_tar(f, quarantine, counts)
