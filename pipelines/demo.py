"""`make demo`: the main job on the synthetic default through a real Prefect server and worker.

Starts (or reuses) a local Prefect server with its SQLite database under `.prefect/`, creates the
`skelpgt` process work pool, deploys prefect.yaml, starts a worker, runs
`prefect deployment run build-pseudo-gt/default`, waits, prints the release and its fit-quality
table, verifies it, and stops what it started (`--keep-server` leaves server and worker up).
Safe to re-run: the pool and deployments are reused, and finished shards are not converted again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from skelpgt.datasets import iter_shard, read_manifest, resolve_round, verify_release
from skelpgt.datasets.workdir import Workdir

PROJECT = Path(__file__).resolve().parents[1]
POOL = "skelpgt"


def prefect_env(port: int, home: Path) -> dict[str, str]:
    """Environment of every Prefect process of the demo: local state, local API, no telemetry."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        SKELPGT_PROJECT_DIR=str(PROJECT),
    )
    return env


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A background process in its own session (so SIGINT reaches it), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None, name: str) -> None:
    """SIGINT, then SIGTERM, then SIGKILL, a few seconds apart."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=8)
            print(f"stopped {name}")
            return
        except subprocess.TimeoutExpired:
            continue


def prefect(args: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("prefect"))
    return subprocess.run([exe, *args], env=env, cwd=PROJECT, check=check, text=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run build-pseudo-gt/default on the synthetic default via a local Prefect server.")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--images", type=int, default=48, help="synthetic images to generate and label")
    parser.add_argument("--keep-server", action="store_true", help="leave the server and worker running")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--workdir", default="work/demo", help="flow workdir (relative to the project)")
    parser.add_argument("--prefect-home", default=str(PROJECT / ".prefect"), help="server database and logs")
    args = parser.parse_args()
    home = Path(args.prefect_home).resolve()
    env = prefect_env(args.port, home)
    logs = home / "logs"
    server = worker = None
    try:
        if healthy(args.port):
            print(f"using the Prefect server already running on port {args.port}")
        else:
            exe = str(Path(sys.executable).with_name("prefect"))
            server = start([exe, "server", "start", "--host", "127.0.0.1", "--port", str(args.port)], env, logs / "server.log")
            deadline = time.time() + 120
            while not healthy(args.port):
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Prefect server did not start; see {logs / 'server.log'}")
                time.sleep(0.5)
            print(f"Prefect server up: http://127.0.0.1:{args.port}")
        if prefect(["work-pool", "inspect", POOL], env, check=False).returncode != 0:
            prefect(["work-pool", "create", POOL, "--type", "process"], env)
        deployed = prefect(["--no-prompt", "deploy", "--all"], env, check=False)
        if deployed.returncode != 0:
            raise RuntimeError(f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}")
        worker = start([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL, "--name", "demo-worker"], env, logs / "worker.log")
        params = json.dumps({"synthetic_images": args.images, "workdir": args.workdir})
        print("running: prefect deployment run build-pseudo-gt/default --watch")
        run = subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "deployment", "run", "build-pseudo-gt/default", "--params", params, "--watch", "--watch-timeout", str(args.timeout)],
            env=env, cwd=PROJECT, text=True,
        )  # fmt: skip
        if run.returncode != 0:
            print(f"the flow run failed; worker log: {logs / 'worker.log'}", file=sys.stderr)
            return run.returncode
        return report(Workdir(PROJECT / args.workdir).release("synthetic"))
    finally:
        if not args.keep_server:
            stop(worker, "worker")
            stop(server, "server")
        else:
            print(f"server and worker left running: http://127.0.0.1:{args.port} (PREFECT_HOME={home})")


def report(release: Path) -> int:
    """Print the release, its counts and fit quality, and verify it."""
    folder = resolve_round(release)
    manifest = read_manifest(folder)
    counts = manifest["counts"]
    print(f"\nrelease: {folder}")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(quality_table(folder))
    verdict = verify_release(folder, store=Workdir(release.parents[1]).labels)
    print(f"skelpgt verify: {'OK' if verdict.ok else 'FAILED'} {'; '.join(verdict.errors)}")
    return 0 if verdict.ok else 1


def quality_table(folder: Path) -> str:
    """Fit-quality percentiles (mm) of a release round, both sides."""
    values: dict[str, list[float]] = {f"{s}_{m}": [] for s in ("orig", "flip") for m in ("pve_mean", "pve_max")}
    for shard in sorted(folder.glob("*.tar")):
        for sample in iter_shard(shard):
            for person in sample.persons:
                for name, vals in values.items():
                    if np.isfinite(person[name]):
                        vals.append(person[name] * 1000)
    lines = ["| fit quality, mm | p50 | p90 | max |", "|---|---|---|---|"]
    for name, vals in values.items():
        if vals:
            a = np.asarray(vals)
            lines.append(f"| {name} | {np.percentile(a, 50):.1f} | {np.percentile(a, 90):.1f} | {a.max():.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
