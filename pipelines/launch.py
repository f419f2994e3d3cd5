"""Launch `skelpgt.model.train` under torchrun from a flow: command line, free port, streamed log, one-line failure.

The TrainConfig travels as JSON (`TrainConfig.write_json` → `python -m skelpgt.model.train --config`), so
every option reaches the ranks unchanged. Static rendezvous: one node picks a free local port; several
nodes run the same flow with their own `node_rank` and a shared `master_addr:master_port` (node 0's).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    """Where the ranks of one training run come from: `nproc` per node × `nnodes`, this node's `node_rank`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes

    def checked(self) -> Launch:
        """This launch with the single-node defaults filled in (master 127.0.0.1, a free port); ValueError naming the bad field."""
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError(f"nproc and nnodes must be >= 1 (got nproc={self.nproc}, nnodes={self.nnodes})")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes={self.nnodes}) (got {self.node_rank})")
        if self.nnodes > 1 and (not self.master_addr or not self.master_port):
            raise ValueError("nnodes > 1 needs master_addr and master_port: node 0's address and a port, the same on every node")
        if self.nnodes == 1:
            return Launch(self.nproc, 1, 0, self.master_addr or "127.0.0.1", self.master_port or free_port())
        return self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_command(config: Path, launch: Launch) -> list[str]:
    """`python -m torch.distributed.run ... -m skelpgt.model.train --config CONFIG` for a checked `launch`."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc}", f"--nnodes={launch.nnodes}",
        f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}", f"--master-port={launch.master_port}",
        "--max-restarts=0", "-m", "skelpgt.model.train", "--config", str(config),
    ]  # fmt: skip


def run_logged(cmd: list[str], log: Path, emit: Callable[[str], None]) -> int:
    """Run `cmd`, appending its stdout+stderr to `log` and passing each line to `emit`; returns the exit code.

    If the caller is interrupted (flow cancelled, KeyboardInterrupt) the command is terminated, not orphaned."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"==== launch {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, errors="replace")
        try:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                emit(line.rstrip("\n"))
            return proc.wait()
        finally:
            if proc.poll() is None:  # torchrun forwards SIGTERM to its ranks
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def failure_line(rc: int, log: Path) -> str:
    """One line for a failed torchrun: exit code, the root-cause rank and its exit code (from torchrun's summary), the log."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    text = text[text.rfind("==== launch ") :]  # this launch only: the log is appended to by every launch
    tail = text[text.rfind("Root Cause") :] if "Root Cause" in text else ""
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", tail, re.M)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", tail, re.M)
    who = f": rank {rank.group(1)} failed with exit code {code.group(1)}" if rank and code else ""
    # a rank's own exception (printed before torchrun's summary), not torchrun's ChildFailedError
    errors = [m.group(1) for m in re.finditer(r"^(?:\[rank\d+\]: )?(\w+(?:Error|Exception): .+)$", text, re.M) if not m.group(1).startswith("ChildFailedError")]
    why = f" ({errors[-1][:300]})" if errors else ""
    return f"training under torchrun exited with code {rc}{who}{why}; see {log}"
