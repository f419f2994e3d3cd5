"""Scale rehearsal: `build-pseudo-gt` and one `refine-labels` round on Dask `local:2` for N people.

Writes N synthetic people into HMR2.0-style source tars (tiny JPEGs, ~1000 people per shard,
1–4 per image, 5 % without SMPL, 0.2 % with a NaN pose that the reader quarantines), then runs
the real flows against a local Prefect server on a fresh work folder and prints one table row per
step: wall time, CPU seconds and peak RSS of the flow process (Prefect flow + Dask scheduler, same
process), the Dask workers and the server (psutil, sampled in a thread every 0.2 s over the whole
process tree), and the sizes on disk. Results: benchmarks/SCALE.md.

Cheap labels (issue 14 allows it): SMPL→SKEL fitting (≈ 87 ms CPU per person side) would dominate, so the
per-shard conversion files that `build-pseudo-gt`'s convert-shard tasks reuse are pre-written
(`Workdir.conversion` / `save_conversion`, same source digest, config digest and code
version, so the tasks skip them): each person's round-0 label is the SKEL pose the generator drew
(within the joint limits) and its 2D keypoints are that label's keypoints projected with a pinhole
camera plus noise. Everything else — reading and validating the sources, the Dask tasks, the label
store, release shards, manifest, quarantine, refine bookkeeping — is the flows' own. SKELify runs
for real in the refine round, with `--refine-iterations` (default 1) instead of 10. `costs` measures
what was skipped: the converter's and SKELify's per-person cost (CPU time, FLOPs) on one core, and
Prefect's per-person cost of scanning a task argument that holds every person's label ids.

Usage: python benchmarks/scale.py run --people 10000 --out /tmp/scale-10k [--no-refine] [--camera fit-focal] [--refine-batch 1024]
                                     [--refine-minutes M]
       python benchmarks/scale.py costs --n 300
A commit to the checkout during a run changes `code_version()` and with it every conversion
file's validity; run from an unchanging checkout (or a `git archive` copy on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SHARD_PEOPLE = 1000
IMAGE_SIZE = 32  # px: images only need to be real, decodable JPEGs
FOCAL = 1.2 * IMAGE_SIZE  # px, as the synthetic dataset's camera
P_UNLABELLED, P_BAD = 0.05, 0.002
KP_NOISE = 0.01  # 2D keypoint noise, in units of the person's box side
RELEASE = "scale"


# -- the people ------------------------------------------------------------------------------


@dataclass
class ShardLabels:
    """Cheap round-0 labels of one source shard, by person key: per side, field → (P, …) float32."""

    keys: list[str]
    sides: dict[str, dict[str, np.ndarray]]


def _people(skelify, seed: int, shard: int, n: int) -> dict[str, np.ndarray]:
    """n people of shard `shard`: SKEL label (q, β), SMPL pose/β, pixel keypoints, box; deterministic in (seed, shard)."""
    from skelpgt.datasets.poses import sample_skel_poses, sample_smpl_poses

    rng = np.random.default_rng([seed, shard])
    q = sample_skel_poses(n, seed=int(rng.integers(2**31)))
    # upright, facing the camera (y down, SKEL y up) with a random yaw: pelvis tilt, list, rotation
    q[:, :3] = torch.from_numpy(np.stack([rng.normal(0, 0.1, n), np.pi + rng.normal(0, 0.1, n), rng.uniform(-np.pi, np.pi, n)], 1)).float()
    betas = torch.from_numpy(rng.normal(0, 0.8, (n, 10))).float()
    rel = skelify.relative_keypoints(q, betas).double().numpy()  # (n,44,3) m from the pelvis, camera frame
    z = rng.uniform(2.4, 7.5, n)
    centre = (IMAGE_SIZE - 1) / 2
    pelvis = np.stack([(rng.uniform(0.3, 0.7, n) * IMAGE_SIZE - centre) * z / FOCAL, rng.uniform(-0.1, 0.2, n) * z, z], 1)
    kp3 = rel + pelvis[:, None]
    uv = FOCAL * kp3[..., :2] / kp3[..., 2:] + centre
    lo, hi = uv.min(1), uv.max(1)
    side = (hi - lo).max(1) * 1.2
    noise = rng.normal(0, KP_NOISE, uv.shape) * side[:, None, None]
    conf = (rng.random(uv.shape[:2]) >= 0.03).astype(np.float32)
    smpl = sample_smpl_poses(n, seed=int(rng.integers(2**31))).numpy()
    smpl[:, :3] = np.array([np.pi, 0.0, 0.0]) + rng.normal(0, 0.1, (n, 3))  # upright in the camera frame
    err = (np.linalg.norm(noise, axis=-1) * conf).sum(1) / np.maximum(conf.sum(1), 1) / side
    return {
        "q": q.numpy(), "betas": betas.numpy(), "smpl_pose": smpl.astype(np.float32), "smpl_betas": rng.normal(0, 0.8, (n, 10)).astype(np.float32),
        "kp2d": np.concatenate([uv + noise, conf[..., None]], -1).astype(np.float32),
        "kp3d": np.concatenate([kp3, np.ones(kp3.shape[:2] + (1,))], -1).astype(np.float32),
        "center": ((lo + hi) / 2).astype(np.float32), "scale": ((hi - lo) * 1.2 / 200).astype(np.float32),
        "labelled": rng.random(n) >= P_UNLABELLED, "bad": rng.random(n) < P_BAD, "kp2d_err": err.astype(np.float32),
        "pve_mean": rng.uniform(0.004, 0.012, (2, n)).astype(np.float32), "trans": rng.normal(0, 0.05, (n, 3)).astype(np.float32),
    }  # fmt: skip


def write_source_shard(path: Path, skelify, seed: int, shard: int, n: int) -> ShardLabels:
    """One HMR2.0-style tar of n people (1–4 per image) at `path` (atomic); their cheap labels by person key."""
    from skelpgt.datasets.records import person_key
    from skelpgt.datasets.testing import hmr2_members, tiny_jpeg, write_tar
    from skelpgt.fitting.mirror import mirror_pose, mirror_translation

    p = _people(skelify, seed, shard, n)
    rng = np.random.default_rng([seed, shard, 1])
    counts = rng.integers(1, 5, n)  # persons per image; more than needed, cut at n people
    counts = counts[: int(np.searchsorted(np.cumsum(counts), n)) + 1]
    counts[-1] -= counts.sum() - n
    members, keys, row = [], [], 0
    for i, k in enumerate(counts.tolist()):
        image_key = f"scale/{seed}-{shard:05d}-{i:05d}"
        persons = []
        for j in range(row, row + k):
            has = bool(p["labelled"][j])
            pose = p["smpl_pose"][j] if has else np.zeros(72, np.float32)
            if has and p["bad"][j]:
                pose = pose.copy()
                pose[5] = np.nan  # quarantined by the reader, field body_pose
            persons.append({
                "keypoints_2d": p["kp2d"][j], "keypoints_3d": p["kp3d"][j], "center": p["center"][j], "scale": p["scale"][j],
                "body_pose": pose, "betas": p["smpl_betas"][j] if has else np.zeros(10, np.float32),
                "has_body_pose": np.float32(has), "has_betas": np.float32(has), "extra_info": {}, "personid": j - row,
            })  # fmt: skip
            keys.append(person_key(image_key, j - row))
        members += hmr2_members(image_key, tiny_jpeg(rng, IMAGE_SIZE, IMAGE_SIZE), persons)
        row += k
    tmp = path.with_name(path.name + ".tmp")
    write_tar(tmp, members)
    os.replace(tmp, path)
    q, trans = torch.from_numpy(p["q"]), torch.from_numpy(p["trans"])
    pve = p["pve_mean"]
    sides = {
        "orig": {"poses": p["q"], "trans": p["trans"], "pve_mean": pve[0]},
        "flip": {"poses": mirror_pose(q).numpy(), "trans": mirror_translation(trans).numpy(), "pve_mean": pve[1]},
    }
    for s in sides.values():
        s.update(betas=p["betas"], kp2d_err=p["kp2d_err"], pve_max=s["pve_mean"] * 3.0, limit_violation=np.zeros(n, np.float32))
    return ShardLabels(keys, sides)


def prewrite_conversion(source: Path, labels: ShardLabels, config, out: Path) -> None:
    """The conversion file `convert_source_shard` would write for `source`, with the cheap labels instead of fits.

    Reads the source with the flow's reader (same records, counts and quarantine entries as the
    real task) and keeps the digests the task checks, so the flow's convert-shard task reuses it.
    """
    from skelpgt.datasets.conversion import ShardConversion, save_conversion
    from skelpgt.datasets.provenance import code_version
    from skelpgt.datasets.quarantine import Quarantine
    from skelpgt.datasets.readers import ReadCounts, read_source
    from skelpgt.datasets.shards import sha256_file

    start = time.perf_counter()
    quarantine, counts = Quarantine(), ReadCounts()
    records = list(read_source(source, quarantine, counts))
    keys = [r.key for r in records if r.has_smpl]
    row = {k: i for i, k in enumerate(labels.keys)}
    take = np.array([row[k] for k in keys], dtype=np.int64)
    conv = ShardConversion(
        source=str(source), source_sha256=sha256_file(source), config_digest=config.digest(), code_version=code_version(),
        keys=keys, labels={s: {f: v[take] for f, v in fields.items()} for s, fields in labels.sides.items()},
        quarantine=list(quarantine), n_in=counts.n_in, n_unlabelled=len(records) - len(keys),
        seconds=time.perf_counter() - start, person_keys=[r.key for r in records],
    )  # fmt: skip
    save_conversion(conv, out)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Peaks:
    """One phase: peak RSS (bytes) of the flow process (+ Dask scheduler), the largest worker, all workers together and
    the Prefect server; CPU seconds (user + system) used by each role in the phase."""

    flow: int = 0
    worker: int = 0
    workers: int = 0
    server: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


def _role(proc, server_pid: int | None) -> str:
    """'server' (the Prefect server or one of its children), 'worker' (a Dask worker: a multiprocessing spawn child) or 'other'."""
    try:
        if server_pid is not None and (proc.pid == server_pid or any(p.pid == server_pid for p in proc.parents())):
            return "server"
        cmd = " ".join(proc.cmdline())
    except Exception:  # exited between listing and reading
        return "other"
    return "worker" if "spawn_main" in cmd and "resource_tracker" not in cmd else "other"


@dataclass
class TreeSampler:
    """Samples the RSS of this process and its descendants every `interval` s in a thread, per named phase."""

    server_pid: int | None = None
    interval: float = 0.2
    phase: str = "setup"
    peaks: dict[str, Peaks] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._roles: dict[int, str] = {}
        self._cpu: dict[str, dict[int, list]] = {}
        self._phase_start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One sample of the tree into the current phase's peaks and CPU seconds."""
        peak = self.peaks.setdefault(self.phase, Peaks())
        cpu = self._cpu.setdefault(self.phase, {})  # pid -> [role, cpu at phase start (0 if born in it), latest cpu]
        workers = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                rss, times, born = proc.memory_info().rss, proc.cpu_times(), proc.create_time()
            except Exception:  # exited
                continue
            role = "flow" if proc.pid == self._me.pid else self._roles.setdefault(proc.pid, _role(proc, self.server_pid))
            used = times.user + times.system
            cpu.setdefault(proc.pid, [role, used if born < self._phase_start else 0.0, used])[2] = used
            if role == "worker":
                workers += rss
                peak.worker = max(peak.worker, rss)
            elif role == "server":
                peak.server = max(peak.server, rss)
            elif role == "flow":
                peak.flow = max(peak.flow, rss)
        peak.workers = max(peak.workers, workers)
        peak.cpu = {}
        for role, first, last in cpu.values():
            peak.cpu[role] = peak.cpu.get(role, 0.0) + last - first

    def start_phase(self, name: str) -> float:
        """Switch to phase `name`; returns its start time (perf_counter)."""
        self.sample()
        self.phase, self._phase_start = name, time.time()
        self.sample()
        return time.perf_counter()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        self._thread.join()
        self.sample()


def task_spans(since) -> dict[str, dict]:
    """Task runs that started after `since` (datetime), by task name: count, summed run time, first start → last end (s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    runs, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since)), limit=200, offset=offset)
            runs += page
            offset += len(page)
            if len(page) < 200:
                break
    out: dict[str, dict] = {}
    for run in runs:
        if run.start_time is None or run.end_time is None:
            continue
        name = run.name.rsplit("-", 1)[0]
        entry = out.setdefault(name, {"count": 0, "sum_s": 0.0, "first": run.start_time, "last": run.end_time})
        entry["count"] += 1
        entry["sum_s"] += run.total_run_time.total_seconds()
        entry["first"], entry["last"] = min(entry["first"], run.start_time), max(entry["last"], run.end_time)
    return {k: {"count": v["count"], "sum_s": v["sum_s"], "span_s": (v["last"] - v["first"]).total_seconds()} for k, v in out.items()}


def candidate_files(workdir: Path, started: float) -> dict:
    """refine-labels' per-chunk candidate files so far: count, person sides, seconds from `started` (epoch) to the first and last."""
    files = sorted((workdir / "refine").rglob("*.npz"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {"files": 0, "sides": 0}
    sides = 0
    for path in files:
        with np.load(path) as z:
            sides += len(z["accepted"])
    return {"files": len(files), "sides": sides, "first_s": files[0].stat().st_mtime - started, "last_s": files[-1].stat().st_mtime - started}


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if absent)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# -- the rehearsal ---------------------------------------------------------------------------


def prefect_server(out: Path):
    """A Prefect server of this run (own home and SQLite database, telemetry off), as `make demo` starts one; its process.

    The flows run in this process against it and the Dask workers report their task runs to it
    (without an API URL, every worker process would start a temporary server of its own).
    """
    import sys

    from skelpgt.pipelines.demo import healthy, prefect_env, start
    from skelpgt.pipelines.launch import free_port

    port = free_port()
    env = prefect_env(port, out / "prefect")
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ.update(env)
    server = start([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, out / "prefect" / "server.log")
    deadline = time.time() + 120
    while not healthy(port):
        if server.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"Prefect server did not start; see {out / 'prefect' / 'server.log'}")
        time.sleep(0.5)
    return server


def rehearse(args) -> dict:
    """Sources → cheap conversions → build-pseudo-gt (local:2) → verify → refine-labels (local:2); the measured rows."""
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; give a new --out folder")
    from skelpgt.pipelines.demo import stop

    workdir, source = out / "work", out / "source"
    source.mkdir(parents=True)
    server = prefect_server(out)
    try:
        return _rehearse(args, out, workdir, source, TreeSampler(server_pid=server.pid))
    finally:
        stop(server, "prefect server")


def _rehearse(args, out: Path, workdir: Path, source: Path, sampler: TreeSampler) -> dict:
    """The steps of `rehearse`, each measured as one sampler phase; writes `<out>/scale.json` and prints the table."""
    from datetime import datetime, timezone

    from skelpgt.datasets import verify_release
    from skelpgt.datasets.workdir import Workdir
    from skelpgt.fitting.convert import ConvertConfig
    from skelpgt.fitting.keypoints import KeypointRegressor
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.fitting.skel import SKEL
    from skelpgt.fitting.skelify import Skelify
    from skelpgt.pipelines.build import build_pseudo_gt
    from skelpgt.pipelines.refine import refine_labels

    torch.set_num_threads(1)
    models = str(ensure_models_dir(args.models_dir))
    rows: dict[str, dict] = {}

    def step(name: str, fn, minutes: float | None = None):
        """Run one measured step; with `minutes`, interrupt it (SIGINT) after that long and mark its row interrupted."""
        t0 = sampler.start_phase(name)
        rows[name] = {"started": time.time()}
        timer = threading.Timer(60 * minutes, signal.raise_signal, (signal.SIGINT,)) if minutes else None
        try:
            if timer:
                timer.start()
            result = fn()
        except KeyboardInterrupt:
            result, rows[name]["interrupted"] = None, True
        finally:
            if timer:
                timer.cancel()
        rows[name]["wall_s"] = time.perf_counter() - t0
        sampler.start_phase("between steps")
        print(f"{name}: {rows[name]['wall_s']:.1f} s{' (interrupted)' if result is None else ''}", flush=True)
        return result

    # the flow's convert-shard config (build_pseudo_gt's defaults, batch_size 256)
    config = ConvertConfig(method="fast", chunk_size=256, smpl_gender="neutral", skel_gender="male")
    skelify = Skelify(SKEL.from_file(models), KeypointRegressor.from_models_dir(models))
    n_shards = math.ceil(args.people / SHARD_PEOPLE)
    sizes = [SHARD_PEOPLE] * (n_shards - 1) + [args.people - SHARD_PEOPLE * (n_shards - 1)]
    paths = [source / f"scale-{i:05d}.tar" for i in range(n_shards)]

    def make_sources():
        return [write_source_shard(p, skelify, args.seed, i, n) for i, (p, n) in enumerate(zip(paths, sizes))]

    labels = step("sources", make_sources)
    step("cheap-conversions", lambda: [prewrite_conversion(p, lab, config, Workdir(workdir).conversion(RELEASE, p)) for p, lab in zip(paths, labels)])
    del labels
    written = {p: p.stat().st_mtime_ns for p in (workdir / "work").rglob("*.labels.npz")}
    since = datetime.now(timezone.utc)
    build = step("build-pseudo-gt", lambda: build_pseudo_gt(
        inputs=[str(source)], workdir=str(workdir), release=RELEASE, models_dir=models, batch_size=256, torch_threads=1, dask_address=args.dask,
    ))  # fmt: skip
    rows["build-pseudo-gt"]["tasks"] = task_spans(since)
    redone = [p.name for p, t in written.items() if p.stat().st_mtime_ns != t]
    if redone:  # the convert-shard tasks fitted instead of reusing: another code version or config
        raise SystemExit(f"build-pseudo-gt converted {len(redone)} shards again instead of reusing the cheap labels, e.g. {redone[0]}")
    summary = build["summary"]
    release = Path(build["release"])
    sizes_now = {"labels_h5": Workdir(workdir).labels.stat().st_size, "release_round0": tree_bytes(release), "sources": tree_bytes(source),
                 "conversions": tree_bytes(workdir / "work")}  # fmt: skip
    report = step("verify-round-0", lambda: verify_release(release, store=Workdir(workdir).labels))
    if not report.ok:
        raise SystemExit(f"verify failed: {report.errors[:5]}")
    result = {"people": args.people, "shards": n_shards, "summary": summary, "manifest_counts": build["manifest"]["counts"], "sizes": sizes_now}
    result["settings"] = {k: getattr(args, k) for k in ("dask", "refine_iterations", "camera", "refine_batch", "seed")}
    if args.refine:
        since = datetime.now(timezone.utc)
        refined = step("refine-labels", lambda: refine_labels(
            workdir=str(workdir), release=RELEASE, checkpoint=None, models_dir=models, iterations=args.refine_iterations,
            camera=args.camera, dask_address=args.dask, torch_threads=1, batch_size=args.refine_batch,
        ), minutes=args.refine_minutes)  # fmt: skip
        rows["refine-labels"]["tasks"] = task_spans(since)
        rows["refine-labels"]["candidates"] = candidate_files(workdir, rows["refine-labels"]["started"])
        if refined is None:  # interrupted: what it did until then is in the row
            return _finish(result, rows, sampler, out)
        result["refine"] = {k: refined[k] for k in ("round", "changed", "kept", "skipped")}
        result["sizes"]["labels_h5_after_refine"] = Workdir(workdir).labels.stat().st_size
        result["sizes"]["release_round1"] = tree_bytes(release.parent / "round-1")
        result["sizes"]["refine_candidates"] = tree_bytes(workdir / "refine")
        report = step("verify-round-1", lambda: verify_release(release.parent / "round-1", store=Workdir(workdir).labels))
        if not report.ok:
            raise SystemExit(f"verify round 1 failed: {report.errors[:5]}")
    return _finish(result, rows, sampler, out)


def _finish(result: dict, rows: dict, sampler: TreeSampler, out: Path) -> dict:
    """Peaks into the rows, `<out>/scale.json` written, the table printed."""
    from skelpgt.datasets.atomic import atomic_write_bytes

    sampler.stop()
    for name, row in rows.items():
        peak = sampler.peaks.get(name, Peaks())
        row.update(flow_rss=peak.flow, worker_rss=peak.worker, workers_rss=peak.workers, server_rss=peak.server, cpu_s=peak.cpu)
    result["steps"] = rows
    atomic_write_bytes(out / "scale.json", json.dumps(result, indent=1, default=str).encode())
    print_table(result)
    return result


def print_table(result: dict) -> None:
    """The measured rows as a markdown table."""
    mb = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    cpu = lambda c: " / ".join(f"{c.get(r, 0.0):.1f}" for r in ("flow", "worker", "server"))  # noqa: E731
    n = result["people"]
    print(f"\n{n:,} people, {result['shards']} source shards; counts {result['manifest_counts']}")
    print("| people | step | wall s | wall ms/person | CPU s flow / workers / server | flow+scheduler peak RSS MB | largest worker MB | all workers MB | Prefect server MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in result["steps"].items():
        print(f"| {n:,} | {name} | {row['wall_s']:.1f} | {1000 * row['wall_s'] / n:.2f} | {cpu(row['cpu_s'])} | {mb(row['flow_rss'])} | {mb(row['worker_rss'])} | {mb(row['workers_rss'])} | {mb(row['server_rss'])} |")
        if "candidates" in row:
            print(f"|  | ↳ candidate files {row['candidates']} |  |  |  |  |  |  |  |")
        for task, t in row.get("tasks", {}).items():
            print(f"|  | ↳ {task} ×{t['count']} | span {t['span_s']:.1f} | sum {1000 * t['sum_s'] / n:.2f} |  |  |  |  |  |")
    print("\n| people | " + " | ".join(result["sizes"]) + " |")
    print("|---|" + "---|" * len(result["sizes"]))
    print(f"| {n:,} | " + " | ".join(f"{mb(v)} MB ({v / n / 1024:.2f} KiB/person)" for v in result["sizes"].values()) + " |")
    if "refine" in result:
        print(f"refine: {result['refine']}")


# -- per-person costs of what the rehearsal skipped ------------------------------------------


def costs(args) -> None:
    """Per-person time on one core of the real converter (orig + flip) and of SKELify at 10 and --refine-iterations iterations."""
    from skelpgt.fitting.convert import ConvertConfig, Converter
    from skelpgt.fitting.keypoints import KeypointRegressor
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.fitting.skel import SKEL
    from skelpgt.fitting.skelify import Skelify, SkelifyConfig
    from skelpgt.fitting.camera import normalise_keypoints

    torch.set_num_threads(args.threads)
    models = ensure_models_dir(args.models_dir)
    skel, reg = SKEL.from_file(models), KeypointRegressor.from_models_dir(models)
    p = _people(Skelify(skel, reg), args.seed, 0, args.n)
    pose, betas = torch.from_numpy(p["smpl_pose"]), torch.from_numpy(p["smpl_betas"])
    kp = normalise_keypoints(torch.from_numpy(p["kp2d"]), torch.from_numpy(p["center"]), torch.from_numpy(p["scale"]))
    converter = Converter.from_models_dir(models, ConvertConfig(chunk_size=256))
    converter.convert(pose[:8], betas[:8])  # warm-up
    print(f"threads={args.threads}, {args.n} people; wall ms and CPU ms (this process, user + system: what a shared machine does not inflate)")
    with _timer() as t:
        converter.convert_with_flip(pose, betas, torch.zeros(args.n, 3), keypoints_2d=kp)
    flops = _gflop(lambda: converter.convert(pose[:64], betas[:64])) / 64
    print(f"converter (fast), per side: wall {1000 * t['wall'] / args.n / 2:.1f} ms, CPU {1000 * t['cpu'] / args.n / 2:.1f} ms, {flops:.3f} GFLOP (matrix products)")
    q, b = torch.from_numpy(p["q"]), torch.from_numpy(p["betas"])
    for iterations in sorted({SkelifyConfig().iterations, args.refine_iterations}):
        sk = Skelify(skel, reg, SkelifyConfig(iterations=iterations))
        sk.fit(kp[:8], q[:8], b[:8])  # warm-up
        with _timer() as t:
            for i in range(0, args.n, 64):  # refine-labels' default chunk
                sk.fit(kp[i : i + 64], q[i : i + 64], b[i : i + 64])
        flops = _gflop(lambda: sk.fit(kp[:64], q[:64], b[:64])) / 64
        print(f"skelify iterations={iterations}, per side: wall {1000 * t['wall'] / args.n:.1f} ms, CPU {1000 * t['cpu'] / args.n:.1f} ms, {flops:.3f} GFLOP")
    print(f"Prefect's scan of a task argument of label ids: {prefect_scan_us():.1f} µs CPU per person")


def prefect_scan_us(entries: int = 100_000) -> float:
    """µs per entry Prefect spends scanning a task argument for futures, on a {person key: {side: label id}} dict.

    `build-pseudo-gt` hands every write-release-shard task the ids of all persons, so the flow pays
    this once per shard for every person: shards × persons in all.
    """
    from prefect.utilities.engine import collect_task_run_inputs_sync

    ids = {f"scale/0-{i:06d}_0": {"orig": 2 * i, "flip": 2 * i + 1} for i in range(entries)}
    with _timer() as t:
        collect_task_run_inputs_sync(ids)
    return 1e6 * t["cpu"] / entries


def _gflop(fn) -> float:
    """GFLOP of the matrix products (mm, bmm, …) `fn` runs, counted by torch's FlopCounterMode; elementwise work is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


@contextmanager
def _timer():
    """{'wall', 'cpu'} seconds of the block (CPU: this process's user + system time)."""
    out, w0, c0 = {}, time.perf_counter(), time.process_time()
    yield out
    out["wall"], out["cpu"] = time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the rehearsal")
    run.add_argument("--people", type=int, default=10000)
    run.add_argument("--out", required=True, help="new work folder (keep it out of the repository, e.g. /tmp/scale-10k)")
    run.add_argument("--dask", default="local:2", help="dask_address of both flows")
    run.add_argument("--no-refine", dest="refine", action="store_false")
    run.add_argument("--camera", default="fit-focal")
    run.add_argument("--refine-minutes", type=float, default=None, help="interrupt refine-labels after this long (its row then shows how far it got)")
    run.add_argument("--refine-batch", type=int, default=1024, help="refine-labels batch_size: persons per SKELify task (the flow's default 64 makes ~2 tasks per 100 people)")
    cost = sub.add_parser("costs", help="per-person cost of the real converter and SKELify")
    cost.add_argument("--n", type=int, default=300)
    cost.add_argument("--threads", type=int, default=1)
    for p in (run, cost):
        p.add_argument("--refine-iterations", type=int, default=1)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--models-dir", default=None)
    args = parser.parse_args()
    rehearse(args) if args.command == "run" else costs(args)


if __name__ == "__main__":
    main()
