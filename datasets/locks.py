"""Advisory file locks (fcntl.flock): released by the kernel when the holder dies, even on SIGKILL."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path


class LockTimeout(TimeoutError):
    """The lock stayed held by someone else for longer than the timeout."""


class FileLock:
    """flock on `path` (created if missing); shared or exclusive; waits up to `timeout` seconds (None = forever)."""

    def __init__(self, path: str | os.PathLike, *, shared: bool = False, timeout: float | None = 60.0, note: str = ""):
        self.path = Path(path)
        self.shared = shared
        self.timeout = timeout
        self.note = note
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        """Take the lock or raise LockTimeout naming the holder's note (pid) when known.

        A shared lock in a folder we may not write (a read-only copy of a work folder) uses the
        lock file read-only if it exists, and no lock if it does not: nobody can write there.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not self.shared or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:
                fd = os.open(self.path, os.O_RDONLY)  # flock works on a read-only descriptor
            except FileNotFoundError:
                return self
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    holder = ""
                    try:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    except OSError:
                        pass
                    os.close(fd)
                    raise LockTimeout(f"{self.path} is locked{f' by {holder}' if holder else ''}; gave up after {self.timeout} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        if not self.shared and self.note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.note.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
