"""Shard and label-store throughput against in-run baselines.

    python benchmarks/shards.py [--images 2000] [--rows 1000000] [--batch 10000]

Shards: the same samples written and read by our writer/readers and by plain `tarfile`
(+ pickle, which any reader of these shards needs). Targets: ours >= 0.8x plain on both.
Label store: append throughput for `--rows` rows (target >= 100k rows/s) and the time of one
sample's history lookup (target < 10 ms), cold (fresh process handle) and warm.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from skelpgt.datasets import LabelStore, OutSample, Quarantine, iter_shard, make_person, read_hmr2_tar, write_shards
from skelpgt.datasets.records import PersonRecord
from skelpgt.datasets.testing import hmr2_person, random_label, tiny_jpeg


def make_samples(n_images: int, seed: int = 0) -> list[OutSample]:
    """n_images photo-sized JPEGs with 1-3 labelled persons each, as OutSamples."""
    rng = np.random.default_rng(seed)
    # a few distinct images reused: encoding JPEGs is not what we measure
    pool = [tiny_jpeg(rng, 240, 320, quality=85) for _ in range(16)]
    out, lid = [], 0
    for i in range(n_images):
        key = f"bench-train/{i:040x}"
        persons = []
        for j in range(int(rng.integers(1, 4))):
            d = hmr2_person(rng)
            rec = PersonRecord(
                key=f"{key}_{j}", image_key=key, person_index=j, source_file="x", image=b"", image_ext="jpg",
                keypoints_2d=d["keypoints_2d"], keypoints_3d=d["keypoints_3d"], center=d["center"], scale=d["scale"],
                body_pose=d["body_pose"], betas=d["betas"], trans=np.zeros(3, np.float32), has_smpl=True, has_betas=True,
                extra_info=d["extra_info"], personid=j,
            )  # fmt: skip
            persons.append(make_person(rec, random_label(rng, lid), random_label(rng, lid + 1), round=0, release="bench"))
            lid += 2
        out.append(OutSample(key, pool[i % len(pool)], "jpg", persons))
    return out


def plain_write(samples: list[OutSample], out: Path, per_shard: int) -> None:
    """Baseline: tarfile + pickle.dumps, same members and shard size, no determinism/atomicity/hashing."""
    out.mkdir(parents=True, exist_ok=True)
    for s0 in range(0, len(samples), per_shard):
        with tarfile.open(out / f"plain-{s0 // per_shard:06d}.tar", "w") as tf:
            for s in samples[s0 : s0 + per_shard]:
                for name, data in ((f"{s.key}.data.pyd", pickle.dumps(s.persons, protocol=4)), (f"{s.key}.jpg", s.image)):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))


def plain_read(paths: list[Path]) -> int:
    """Baseline: tarfile iteration, member bytes, pickle.loads of each pyd; returns samples seen."""
    n = 0
    for p in paths:
        with tarfile.open(p, "r") as tf:
            for m in tf:
                data = tf.extractfile(m).read()
                if m.name.endswith(".data.pyd"):
                    pickle.loads(data)
                    n += 1
    return n


def best_of(fn, repeat: int) -> float:
    """Minimum wall time of `repeat` calls (s)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_shards(n_images: int, per_shard: int, repeat: int, tmp: Path) -> None:
    samples = make_samples(n_images)
    n_persons = sum(len(s.persons) for s in samples)
    mb = sum(len(s.image) for s in samples) / 1e6

    def ours_write(fsync):
        def f():
            shutil.rmtree(tmp / "ours", ignore_errors=True)
            write_shards(samples, tmp / "ours", prefix="ours", samples_per_shard=per_shard, fsync=fsync)

        return f

    def plain_w():
        shutil.rmtree(tmp / "plain", ignore_errors=True)
        plain_write(samples, tmp / "plain", per_shard)

    # interleave so that cache/thermal drift hits both sides alike
    t_plain_w = best_of(plain_w, repeat)
    t_ours_w = best_of(ours_write(False), repeat)
    t_ours_w_fsync = best_of(ours_write(True), repeat)
    t_plain_w = min(t_plain_w, best_of(plain_w, repeat))

    ours_paths = sorted((tmp / "ours").glob("*.tar"))
    plain_paths = sorted((tmp / "plain").glob("*.tar"))

    def ours_read_shard():
        n = sum(1 for p in ours_paths for _ in iter_shard(p))
        assert n == n_images

    def ours_read_validated():
        q = Quarantine()
        n = sum(1 for p in ours_paths for _ in read_hmr2_tar(p, q))
        assert n == n_persons and not len(q)

    def plain_r():
        assert plain_read(plain_paths) == n_images

    def wds_read():
        import webdataset as wds

        n = sum(1 for _ in wds.WebDataset([str(p) for p in ours_paths], shardshuffle=False).decode(only=["pyd"]))
        assert n == n_images

    t_plain_r = best_of(plain_r, repeat)
    t_ours_r = best_of(ours_read_shard, repeat)
    t_ours_rv = best_of(ours_read_validated, repeat)
    t_wds_r = best_of(wds_read, repeat)
    t_plain_r = min(t_plain_r, best_of(plain_r, repeat))

    print(f"## Shards: {n_images} images, {n_persons} persons, {mb:.1f} MB of JPEG, {per_shard} images/shard, best of {repeat}")
    print()
    print("| operation | ours (samples/s) | plain tarfile (samples/s) | ratio ours/plain | target |")
    print("|---|---|---|---|---|")
    rows = [
        ("write (ShardWriter, no fsync)", t_ours_w, t_plain_w),
        ("write (ShardWriter, fsync per shard)", t_ours_w_fsync, t_plain_w),
        ("read (iter_shard: safe unpickle)", t_ours_r, t_plain_r),
        ("read (read_hmr2_tar: + per-person validation)", t_ours_rv, t_plain_r),
        ("read (plain webdataset, pyd decode, for reference)", t_wds_r, t_plain_r),
    ]
    for name, ours, plain in rows:
        print(f"| {name} | {n_images / ours:,.0f} | {n_images / plain:,.0f} | {plain / ours:.2f}x | >= 0.8x |")
    print()


def bench_store(n_rows: int, batch: int, tmp: Path, durable: bool) -> None:
    rng = np.random.default_rng(1)
    # realistic keys: 2 persons per image, orig+flip per person -> n_rows/4 images
    n_img = max(1, n_rows // 4)
    img = np.array([f"aic-train/{h:040x}" for h in rng.integers(0, 2**62, n_img)], dtype=object)
    person = np.repeat(np.arange(n_img), 4)[:n_rows]
    pidx = np.tile([0, 0, 1, 1], n_img)[:n_rows]
    keys = np.array([f"{img[i]}_{p}" for i, p in zip(person, pidx)], dtype=object)
    sides = np.tile(np.array(["orig", "flip"]), n_rows // 2 + 1)[:n_rows]
    poses = rng.normal(0, 0.3, (batch, 46)).astype(np.float32)
    betas = rng.normal(0, 1, (batch, 10)).astype(np.float32)
    trans = rng.normal(0, 1, (batch, 3)).astype(np.float32)
    metric = rng.uniform(0, 0.1, batch).astype(np.float32)
    path = tmp / f"labels-{int(durable)}.h5"
    t = time.perf_counter()
    with LabelStore(path, "a", durable=durable) as st:
        for s in range(0, n_rows, batch):
            e = min(n_rows, s + batch)
            m = e - s
            st.append({
                "sample_key": keys[s:e], "side": sides[s:e], "round": 0, "producer": "convert",
                "poses": poses[:m], "betas": betas[:m], "trans": trans[:m], "pve_mean": metric[:m], "pve_max": metric[:m],
                "kp2d_err": metric[:m], "limit_violation": metric[:m], "config_digest": "0" * 64, "code_version": "0.1.0",
            })  # fmt: skip
        t_append = time.perf_counter() - t
        t0 = time.perf_counter()
    t_close = time.perf_counter() - t0
    size = os.path.getsize(path) / 1e6
    print(f"## Label store: {n_rows:,} rows, batches of {batch:,}, durable={durable} (fsync per batch)")
    print()
    print(f"- append: {n_rows / t_append:,.0f} rows/s ({t_append:.2f} s; target >= 100,000 rows/s); close (final index sort): {t_close:.2f} s; file {size:.0f} MB")
    probe = [str(k) for k in keys[rng.integers(0, n_rows, 200)]]
    cold = []
    r = LabelStore(path)
    r.history(probe[-1])  # first use of the code paths (imports, dtype converters), not a file cost
    for k in probe[:50]:
        r._close_reader()  # force a fresh HDF5 open each time: what a CLI call pays
        t = time.perf_counter()
        h = r.history(k)
        cold.append(time.perf_counter() - t)
        assert len(h) == 2, (k, len(h))
    warm = []
    for k in probe:
        t = time.perf_counter()
        r.history(k)
        warm.append(time.perf_counter() - t)
    r.close()
    q = lambda xs, f: sorted(xs)[min(len(xs) - 1, int(f * len(xs)))] * 1e3  # noqa: E731
    print(f"- history lookup (2 versions per key, target < 10 ms): warm median {statistics.median(warm) * 1e3:.2f} ms, p95 {q(warm, 0.95):.2f} ms; "
          f"with a fresh file open median {statistics.median(cold) * 1e3:.2f} ms, p95 {q(cold, 0.95):.2f} ms")  # fmt: skip
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="skelpgt-bench-"))
    try:
        print(f"# benchmarks/shards.py  (cpu count {os.cpu_count()}, scratch {tmp})\n")
        bench_shards(args.images, args.per_shard, args.repeat, tmp)
        bench_store(args.rows, args.batch, tmp, durable=True)
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
