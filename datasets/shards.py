"""HSMR-v1-compatible output shards: person dicts, a deterministic tar writer, and a reader.

Each tar sample is `<image key>.data.pyd` (pickled list of per-person dicts, fields in
`schema.md`) followed by `<image key>.<jpg|jpeg|png>` (the source bytes, unchanged). Bytes depend
only on the samples given and their order: members in name order, mtime 0, uid/gid 0, fixed
owner names, fixed pickle protocol, pickles independent of object identity (`pyd.dump_pyd`). A
shard is written as `<name>.tmp` and renamed when complete (after fsync), so a killed writer
never leaves a partial `.tar` under its final name. Writing, hashing and fsync run on background
threads (they release the GIL) while the caller's thread pickles the next samples.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .atomic import fsync_dir
from .hsmr_validity import count_invalid
from .pyd import dump_pyd, load_pyd
from .quarantine import Quarantine, QuarantineEntry
from .records import IMAGE_EXTS, N_BETAS, SKEL_POSE_DIM, PersonRecord, SkelLabel
from .tario import TarDamage, iter_tar, split_member_name

PYD_EXT = "data.pyd"
SHARD_PATTERN = "{prefix}-{index:06d}.tar"
_OWNER = "skelpgt"

# Field order of an output person dict (HSMR v1 list first, then ours).
PERSON_FIELDS = (
    "keypoints_2d", "keypoints_3d", "center", "scale", "personid", "extra_info",
    "orig_poses", "orig_betas", "orig_trans", "flip_poses", "flip_betas", "flip_trans",
    "orig_pve_max", "orig_pve_mean", "flip_pve_max", "flip_pve_mean",
    "orig_kp2d_err", "flip_kp2d_err",
    "orig_label_id", "flip_label_id", "round", "release", "person_index",
)  # fmt: skip
LABEL_ARRAY_SHAPES = {"poses": (SKEL_POSE_DIM,), "betas": (N_BETAS,), "trans": (3,)}


def _side_fields(side: str, label: SkelLabel | None) -> dict:
    """One side's fields; a missing or non-finite label becomes zeros with NaN metrics (HSMR: invalid)."""
    arrays = {}
    valid = label is not None
    if valid:
        for name, shape in LABEL_ARRAY_SHAPES.items():
            a = np.ascontiguousarray(getattr(label, name), dtype=np.float32)
            if a.shape != shape:
                raise ValueError(f"label {label.label_id}: {name} has shape {a.shape}, expected {shape}")
            arrays[name] = a
        # HSMR zeroes NaN poses and may then trust them if pve_max is small: never emit that.
        valid = all(np.isfinite(a).all() for a in arrays.values())
    if not valid:
        arrays = {name: np.zeros(shape, np.float32) for name, shape in LABEL_ARRAY_SHAPES.items()}
    nan = float("nan")
    return {
        f"{side}_poses": arrays["poses"],
        f"{side}_betas": arrays["betas"],
        f"{side}_trans": arrays["trans"],
        f"{side}_pve_max": float(label.pve_max) if valid else nan,
        f"{side}_pve_mean": float(label.pve_mean) if valid else nan,
        f"{side}_kp2d_err": float(label.kp2d_err) if valid else nan,
        f"{side}_label_id": int(label.label_id) if label is not None else -1,
    }


def make_person(rec: PersonRecord, orig: SkelLabel | None, flip: SkelLabel | None, *, round: int, release: str) -> dict:
    """PersonRecord + its orig/flip SKEL labels (None = unlabelled) -> output person dict (every key present)."""
    o = _side_fields("orig", orig)
    f = _side_fields("flip", flip)
    d = {
        "keypoints_2d": rec.keypoints_2d,
        "keypoints_3d": rec.keypoints_3d,
        "center": rec.center,
        "scale": rec.scale,
        "personid": int(rec.personid),
        "extra_info": rec.extra_info,
        "round": int(round),
        "release": str(release),
        # the source index, kept when an earlier person of the image was quarantined: the
        # per-person key (and so the label ids) must not follow the list position
        "person_index": int(rec.person_index),
    }
    d.update(o)
    d.update(f)
    return {k: d[k] for k in PERSON_FIELDS}


@dataclass(frozen=True, eq=False)
class OutSample:
    """One image of an output shard: key, encoded image bytes + extension, person dicts in index order."""

    key: str
    image: bytes
    image_ext: str
    persons: list[dict]


@dataclass(frozen=True)
class ShardInfo:
    """What a finished shard holds: file name, sha256 of its bytes, sizes and a digest of its labels."""

    name: str
    sha256: str
    bytes: int
    samples: int
    persons: int
    labelled: int
    label_digest: str
    hsmr_invalid: dict = field(default_factory=dict)  # labelled sides and HSMR-loader rejections by reason (hsmr_validity)


_DIGEST_ARRAYS = tuple(f"{side}_{name}" for side in ("orig", "flip") for name in ("poses", "betas", "trans"))
_DIGEST_SCALARS = tuple(f"{side}_{name}" for side in ("orig", "flip") for name in ("pve_max", "pve_mean", "kp2d_err"))
_SIX_DOUBLES = struct.Struct("<6d")


def _label_digest_update(h, key: str, persons: list[dict]) -> int:
    """Feed one sample's label content (ids, round, q, beta, trans, metrics per person) into `h`; returns persons labelled."""
    labelled = 0
    parts = []
    for i, p in enumerate(persons):
        parts.append(f"{key}_{person_index_of(p, i)}\x00{p['orig_label_id']}\x00{p['flip_label_id']}\x00{p['round']}\x00".encode())
        parts.extend(np.asarray(p[name]).astype("<f4", copy=False).tobytes() for name in _DIGEST_ARRAYS)
        parts.append(_SIX_DOUBLES.pack(*(float(p[name]) for name in _DIGEST_SCALARS)))
        labelled += int(p["orig_label_id"] >= 0 or p["flip_label_id"] >= 0)
    h.update(b"".join(parts))
    return labelled


def person_index_of(person: dict, position: int) -> int:
    """Person dict + its list position -> its source person index (older shards: the position)."""
    return int(person.get("person_index", position))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = _OWNER
    ti.type = tarfile.REGTYPE
    return ti


_HEADER_TEMPLATE = _tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def tar_header(name: str, size: int) -> bytes:
    """Member name + size -> the exact header bytes tarfile (PAX format) writes for our fixed metadata.

    Plain ASCII names up to 100 bytes (all real keys) fill a precomputed ustar template, several
    times cheaper than TarInfo.tobuf; anything else goes through tobuf itself.
    """
    if len(name) <= 100 and size < 8**11 and name.isascii():
        buf = bytearray(_HEADER_TEMPLATE)
        buf[0:100] = name.encode("ascii").ljust(100, b"\0")
        buf[124:136] = b"%011o\0" % size
        buf[148:156] = b"        "  # checksum is computed with its own field as spaces
        buf[148:155] = b"%06o\0" % sum(buf)
        return bytes(buf)
    return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def check_key(key: str) -> None:
    """Raise ValueError if `key` would not survive WebDataset's key/extension split."""
    k, ext = split_member_name(key + ".x")
    if k != key or not key or key.startswith("/") or "\x00" in key:
        raise ValueError(f"invalid sample key {key!r}: no dots allowed in its last path part")


class ShardWriter:
    """Write OutSamples into `<out_dir>/<prefix>-NNNNNN.tar`, `samples_per_shard` images each; `close()` -> ShardInfos."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        prefix: str = "shard",
        samples_per_shard: int = 1000,
        start_index: int = 0,
        fsync: bool = True,
    ):
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.index = start_index
        self.fsync = fsync
        self.infos: list[ShardInfo] = []
        self._fh = None
        self._hash = None
        self._n_bytes = 0
        self._n_samples = self._n_persons = self._n_labelled = 0
        self._label_h = None
        self._closed = False
        # File writes, hashing and fsync release the GIL: one I/O thread overlaps them with
        # pickling; a single worker keeps the byte order, the semaphore bounds queued data.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-io")
        # fsync + rename of a finished shard on its own thread, so the next shard keeps streaming
        self._sync = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sync")
        self._slots = threading.Semaphore(64)
        self._pending: list[Future] = []
        self._failed: BaseException | None = None
        # Leftovers of a killed writer with this prefix are garbage by construction.
        for stale in self.out_dir.glob(f"{prefix}-*.tar.tmp"):
            stale.unlink()

    @property
    def _name(self) -> str:
        return SHARD_PATTERN.format(prefix=self.prefix, index=self.index)

    def _open(self) -> None:
        tmp = self.out_dir / (self._name + ".tmp")
        self._fh = open(tmp, "wb", buffering=1 << 20)
        self._hash = hashlib.sha256()
        self._n_bytes = 0
        self._n_samples = self._n_persons = self._n_labelled = 0
        self._label_h = hashlib.sha256()
        self._hsmr_invalid: Counter = Counter()

    def _submit(self, fn, *args) -> Future:
        if self._failed is not None:
            raise RuntimeError(f"shard I/O failed earlier: {self._failed}") from self._failed
        self._slots.acquire()
        fut = self._io.submit(fn, *args)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if fut.exception() is not None and self._failed is None:
            self._failed = fut.exception()

    @staticmethod
    def _write_and_hash(fh, h, data: bytes) -> None:
        fh.write(data)
        h.update(data)  # hash while writing: no second pass over the shard

    def _emit(self, data: bytes) -> None:
        self._submit(self._write_and_hash, self._fh, self._hash, data)
        self._n_bytes += len(data)

    def _drain(self) -> None:
        """Wait until every queued write has reached the file (no fsync)."""
        self._submit(lambda: None).result()
        if self._fh is not None:
            self._submit(self._fh.flush).result()

    def _finish(self) -> None:
        assert self._fh is not None
        # end of archive exactly as tarfile writes it: two zero blocks, padded to a 10240-byte record
        end = 2 * tarfile.BLOCKSIZE
        self._emit(b"\0" * (end + (-(self._n_bytes + end)) % tarfile.RECORDSIZE))
        partial = dict(
            name=self._name, bytes=self._n_bytes, samples=self._n_samples, persons=self._n_persons,
            labelled=self._n_labelled, label_digest=self._label_h.hexdigest(), hsmr_invalid=dict(self._hsmr_invalid),
        )  # fmt: skip
        self._pending.append(self._submit(self._commit, self._fh, self._hash, partial))
        self._fh = self._hash = None
        self.index += 1

    def _commit(self, fh, h, partial: dict) -> Future:
        fh.flush()
        return self._sync.submit(self._durable_rename, fh, h, partial)

    def _durable_rename(self, fh, h, partial: dict) -> ShardInfo:
        if self.fsync:
            os.fsync(fh.fileno())
        fh.close()
        name = partial["name"]
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)  # only complete shards get the name
        if self.fsync:
            fsync_dir(self.out_dir)
        return ShardInfo(sha256=h.hexdigest(), **partial)

    def _collect(self) -> None:
        done, self._pending = self._pending, []
        self.infos.extend(f.result().result() for f in done)

    def write(self, sample: OutSample) -> None:
        """Append one image sample; starts a new shard every `samples_per_shard` samples."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        check_key(sample.key)
        if not sample.persons:
            raise ValueError(f"sample {sample.key!r} has no persons")
        if sample.image_ext and sample.image_ext not in IMAGE_EXTS:
            raise ValueError(f"sample {sample.key!r}: unsupported image extension {sample.image_ext!r}")
        if self._fh is None:
            self._open()
        pyd = dump_pyd(sample.persons)
        members = [(f"{sample.key}.{PYD_EXT}", pyd)]
        if sample.image_ext:
            members.append((f"{sample.key}.{sample.image_ext}", sample.image))
        members.sort()
        for name, data in members:
            header = tar_header(name, len(data))
            self._emit(b"".join((header, data, b"\0" * (-len(data) % tarfile.BLOCKSIZE))))
        self._n_samples += 1
        self._n_persons += len(sample.persons)
        self._n_labelled += _label_digest_update(self._label_h, sample.key, sample.persons)
        count_invalid(sample.persons, self._hsmr_invalid)
        if self._n_samples >= self.samples_per_shard:
            self._finish()

    def close(self) -> list[ShardInfo]:
        """Finish the open shard (if it holds any sample) and return every shard written."""
        if not self._closed:
            try:
                if self._fh is not None:
                    self._finish()
                self._collect()
            finally:
                self._closed = True
                self._io.shutdown(wait=True)
                self._sync.shutdown(wait=True)
        return list(self.infos)

    def abort(self) -> None:
        """Drop the shard in progress (its .tmp file); finished shards stay."""
        self._io.shutdown(wait=True)
        self._sync.shutdown(wait=True)
        if self._fh is not None:
            self._fh.close()
            (self.out_dir / (self._name + ".tmp")).unlink(missing_ok=True)
        self._fh = self._hash = None
        self._closed = True
        try:
            self._collect()
        except BaseException:
            pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shards(
    samples: Iterable[OutSample],
    out_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    samples_per_shard: int = 1000,
    start_index: int = 0,
    fsync: bool = True,
) -> list[ShardInfo]:
    """OutSamples (in the order given) -> shards in `out_dir`; returns their ShardInfos (none if no samples)."""
    with ShardWriter(out_dir, prefix=prefix, samples_per_shard=samples_per_shard, start_index=start_index, fsync=fsync) as w:
        for s in samples:
            w.write(s)
    return w.infos


def iter_shard(path: str | os.PathLike, quarantine: Quarantine | None = None) -> Iterator[OutSample]:
    """Our shard -> OutSamples (person dicts as written); damage and malformed samples go to `quarantine`."""
    src = os.fspath(path)
    q = quarantine if quarantine is not None else Quarantine()
    for item in iter_tar(src):
        if isinstance(item, TarDamage):
            q.add(QuarantineEntry(item.key or "*", src, item.member or "tar", item.reason))
            continue
        img_ext = next((e for e in IMAGE_EXTS if e in item.members), "")
        if PYD_EXT not in item.members:
            q.add(QuarantineEntry(item.key, src, "data.pyd", "unpaired: no .data.pyd member"))
            continue
        try:
            persons = load_pyd(item.members[PYD_EXT])
        except Exception as exc:
            q.add(QuarantineEntry(item.key, src, "data.pyd", f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        if not isinstance(persons, list):
            q.add(QuarantineEntry(item.key, src, "data.pyd", f"type: expected list, got {type(persons).__name__}"))
            continue
        yield OutSample(item.key, item.members.get(img_ext, b""), img_ext, persons)


def shard_label_digest(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """Re-read a shard -> (label digest, samples, persons, labelled), as the writer computed them."""
    h = hashlib.sha256()
    n_s = n_p = n_l = 0
    q = Quarantine()
    for s in iter_shard(path, q):
        n_s += 1
        n_p += len(s.persons)
        n_l += _label_digest_update(h, s.key, s.persons)
    if len(q):
        raise ValueError(f"{path}: {q.entries[0].reason}")
    return h.hexdigest(), n_s, n_p, n_l


def shard_invalid_counts(path: str | os.PathLike) -> dict:
    """Re-read one release shard → its counts of labels HSMR's loader would not fully use (`hsmr_validity.count_invalid`)."""
    counts: Counter = Counter()
    for sample in iter_shard(path, Quarantine()):
        count_invalid(sample.persons, counts)
    return dict(counts)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """File -> hex sha256 of its bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
