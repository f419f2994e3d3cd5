"""Low-level tar iteration shared by all shard readers: members grouped into samples by key.

Grouping follows WebDataset: a sample is a run of consecutive members whose names share the part
before the first dot of the last path component. Damage never raises: a truncated member, a bad
header or a missing end-of-archive marker is reported as a `TarDamage` item in the stream, after
every complete sample before it.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class TarSample:
    """One sample: key and member bytes by extension (e.g. {'jpg': b'..', 'data.pyd': b'..'})."""

    key: str
    members: dict[str, bytes]
    duplicates: tuple[str, ...] = ()  # extensions seen more than once (first copy kept)


@dataclass(frozen=True)
class TarDamage:
    """Damage found while reading: the sample key it hit (or '' if unknown), member name, reason."""

    key: str
    member: str
    reason: str


def split_member_name(name: str) -> tuple[str, str]:
    """Member name -> (sample key, extension), splitting at the first dot of the last path part."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_USTAR_MAGIC = (b"ustar\x0000", b"ustar  \x00")


def _parse_plain_header(buf: bytes) -> tuple[str, int] | None:
    """512-byte header -> (name, size) for a plain ustar regular file, else None (let tarfile handle it)."""
    if buf[257:265] not in _USTAR_MAGIC or buf[156:157] not in (b"0", b"\0"):
        return None
    size_field = buf[124:136]
    if size_field[0] & 0x80:  # base-256 size: rare, leave to tarfile
        return None
    try:
        chksum = int(buf[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if chksum != sum(buf) - sum(buf[148:156]) + 256:
        return None
    name = buf[0:100].split(b"\0", 1)[0]
    prefix = buf[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    try:
        return name.decode("utf-8"), size
    except UnicodeDecodeError:
        return None


def _iter_members(fh, size: int) -> Iterator[tuple[str, str, Any]]:
    """Raw members as ('file', name, data) / ('damage', name, reason) / ('end', '', b'').

    Plain ustar members (what our writer and WebDataset write) are parsed directly, which is
    several times cheaper than tarfile's generic header code; anything else (pax or GNU long
    names, links, sparse files) hands the rest of the archive to tarfile from that offset.
    """
    offset = 0
    last = ""
    while True:
        fh.seek(offset)
        buf = fh.read(_BLOCK)
        if len(buf) < _BLOCK:
            yield ("damage", last, "truncated: archive ends without end-of-archive marker")
            return
        if buf == _ZERO_BLOCK:
            if fh.read(_BLOCK) == _ZERO_BLOCK:
                yield ("end", "", b"")
            else:
                yield ("damage", last, "truncated: archive ends without end-of-archive marker")
            return
        parsed = _parse_plain_header(buf)
        if parsed is None:
            yield from _iter_members_tarfile(fh, size, offset, last)
            return
        name, n = parsed
        data = fh.read(n)
        if len(data) != n:
            yield ("damage", name, f"truncated: member has {len(data)} of {n} bytes")
            return
        yield ("file", name, data)
        last = name
        offset += _BLOCK + n + (-n % _BLOCK)


def _iter_members_tarfile(fh, size: int, offset: int, last: str) -> Iterator[tuple[str, str, Any]]:
    fh.seek(offset)
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        reason = "truncated" if offset else "unreadable"
        yield ("damage", last, f"{reason}: {'bad member header' if offset else 'not a tar archive'} at byte {offset} ({exc})")
        return
    while True:
        try:
            info = tf.next()
        except (tarfile.TarError, OSError, EOFError) as exc:
            # tarfile raises here when the previous member's data runs past the end of file
            yield ("damage", last, f"truncated: member data ends early ({exc})")
            return
        if info is None:
            break
        if not info.isfile():
            continue
        fh.seek(info.offset_data)
        data = fh.read(info.size)
        if len(data) != info.size:
            yield ("damage", info.name, f"truncated: member has {len(data)} of {info.size} bytes")
            return
        last = info.name
        yield ("file", info.name, data)
    # tarfile stops silently at a bad or partial header; tell that apart from a clean end
    end = tf.offset
    fh.seek(end)
    if size - end >= 2 * _BLOCK and fh.read(2 * _BLOCK) == bytes(2 * _BLOCK):
        yield ("end", "", b"")
    else:
        yield ("damage", last, "truncated: archive ends without end-of-archive marker")


def iter_tar(path: str | os.PathLike) -> Iterator[TarSample | TarDamage]:
    """Tar file -> stream of complete samples, then at most one TarDamage if the file is damaged."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        fh = open(path, "rb")
    except OSError as exc:
        yield TarDamage("", "", f"unreadable: {exc.strerror or exc}")
        return
    with fh:
        cur_key: str | None = None
        cur: dict[str, bytes] = {}
        dups: list[str] = []
        for kind, name, data in _iter_members(fh, size):
            if kind == "file":
                key, ext = split_member_name(name)
                if key != cur_key:
                    if cur_key is not None:
                        yield TarSample(cur_key, cur, tuple(dups))
                    cur_key, cur, dups = key, {}, []
                if ext in cur:
                    dups.append(ext)
                else:
                    cur[ext] = data
            elif kind == "end":
                if cur_key is not None:
                    yield TarSample(cur_key, cur, tuple(dups))
                return
            else:
                key = split_member_name(name)[0] if name else cur_key
                if cur_key is not None and key != cur_key:
                    # damage hit a member of the next sample, so the current one is complete
                    yield TarSample(cur_key, cur, tuple(dups))
                # the sample being read when the damage hit may have lost members: do not trust it
                yield TarDamage(key or "", name, data)
                return
