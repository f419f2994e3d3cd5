"""Prefect flows: build-pseudo-gt end to end, resume after a kill, quarantine, Dask, real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skelpgt.datasets import LabelStore, read_manifest, verify_release
from skelpgt.datasets.testing import make_hmr2_tar
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.pipelines.usecases import BuildConfig, ReshardConfig, build_round0, convert_locally, reshard

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two small HMR2.0-style source shards with SMPL-labelled and unlabelled persons."""
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    make_hmr2_tar(folder / "a.tar", 3, rng, prefix="a", max_persons=2)
    make_hmr2_tar(folder / "b.tar", 2, rng, prefix="b", max_persons=2)
    return folder


def _build(workdir, inputs, **kw):
    from skelpgt.pipelines.build import build_pseudo_gt

    return build_pseudo_gt(inputs=[str(i) for i in inputs], workdir=str(workdir), batch_size=8, **kw)


def test_the_flow_and_the_direct_call_write_the_same_manifest(prefect_api, sources, tmp_path, models_dir):
    """build-pseudo-gt and usecases.build_round0 (tests, benchmarks, demos) are one path: same manifest bytes."""

    flow = _build(tmp_path / "flow", [sources])
    converter = Converter.from_models_dir(models_dir, ConvertConfig(chunk_size=8))
    direct = build_round0(tmp_path / "direct", BuildConfig((str(sources),), "synthetic"), convert_locally(converter)).manifest
    assert direct["config"]["models_dir"] == flow["manifest"]["config"]["models_dir"] != ""
    assert (Path(flow["release"]) / "manifest.json").read_bytes() == (tmp_path / "direct" / "releases" / "synthetic" / "round-0" / "manifest.json").read_bytes()


def test_build_gives_a_verified_release_with_counts_that_add_up(prefect_api, sources, tmp_path, models_dir):
    result = _build(tmp_path / "w", [sources])
    release = Path(result["release"])
    report = verify_release(release, store=tmp_path / "w" / "labels.h5")
    assert report.ok, report.errors
    counts = read_manifest(release)["counts"]
    summary = result["summary"]
    assert counts["in"] == summary["persons_in"] == counts["persons"] + counts["quarantined"]
    assert counts["labelled"] == summary["labelled"] > 0 and counts["unlabelled"] == summary["unlabelled"]
    with LabelStore(tmp_path / "w" / "labels.h5") as store:
        current = store.current(0)
    assert len(current["label_id"]) == 2 * summary["labelled"]  # one orig + one flip per person


def test_corrupt_shard_is_quarantined_and_the_flow_completes(prefect_api, sources, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (sources / "b.tar").read_bytes()
    (bad / "b.tar").write_bytes(raw[: len(raw) // 2])  # truncated
    (bad / "a.tar").write_bytes((sources / "a.tar").read_bytes())
    result = _build(tmp_path / "w", [bad], return_state=True)
    assert result.is_completed()
    out = result.result()
    counts = read_manifest(out["release"])["counts"]
    assert counts["quarantined"] > 0
    assert counts["in"] == counts["persons"] + counts["quarantined"]
    assert verify_release(out["release"]).ok


def test_killed_run_resumes_to_the_same_release(prefect_api, sources, tmp_path):
    clean = _build(tmp_path / "clean", [sources])
    workdir = tmp_path / "resumed"
    script = f"from skelpgt.pipelines.build import build_pseudo_gt; build_pseudo_gt(inputs=[{str(sources)!r}], workdir={str(workdir)!r}, batch_size=8)"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    first = Workdir(workdir).conversion("synthetic", sources / "a.tar")
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # after the first shard, before the release
    proc.wait()
    assert first.exists() and not (workdir / "releases" / "synthetic" / "round-0").exists()
    resumed = _build(workdir, [sources])
    clean_manifest = Path(clean["release"]) / "manifest.json"
    assert (Path(resumed["release"]) / "manifest.json").read_bytes() == clean_manifest.read_bytes()
    with LabelStore(workdir / "labels.h5") as store:
        rows = store.rows_of_round(0, ("sample_key", "side"))
    pairs = list(zip(rows["sample_key"].tolist(), rows["side"].tolist()))
    assert len(pairs) == len(set(pairs)) == 2 * resumed["summary"]["labelled"]


def test_dask_runner_gives_the_same_labels(prefect_api, sources, tmp_path):
    plain = _build(tmp_path / "plain", [sources])
    dask = _build(tmp_path / "dask", [sources], dask_address="local:2")
    assert dask["summary"]["labelled"] == plain["summary"]["labelled"]
    assert dask["manifest"]["counts"] == plain["manifest"]["counts"]
    with LabelStore(tmp_path / "plain" / "labels.h5") as a, LabelStore(tmp_path / "dask" / "labels.h5") as b:
        la, lb = a.labels_of_round(0), b.labels_of_round(0)
    assert list(la["sample_key"]) == list(lb["sample_key"])
    assert np.abs(la["poses"] - lb["poses"]).max() <= 1e-5


def test_release_shards_reshards_the_current_labels(prefect_api, sources, tmp_path):
    from skelpgt.pipelines.release import release_shards

    built = _build(tmp_path / "w", [sources])
    manifest = release_shards(workdir=str(tmp_path / "w"), release="synthetic", round=0, samples_per_shard=2, name="small")
    assert len(manifest["shards"]) == 3  # 5 images, 2 per shard
    assert manifest["counts"] == built["manifest"]["counts"]
    assert manifest["label_digest"] != ""
    assert verify_release(tmp_path / "w" / "releases" / "small", store=tmp_path / "w" / "labels.h5").ok
    # the flow (a task per shard) and the direct call are one path: the same manifest, so the same shard bytes
    flow_bytes = (Workdir(tmp_path / "w").round("small", 0) / "manifest.json").read_bytes()
    direct = reshard(tmp_path / "w", ReshardConfig("synthetic", 0, samples_per_shard=2, name="small"))
    assert (direct.folder / "manifest.json").read_bytes() == flow_bytes


def test_train_regressor_flow_trains_and_evaluates(prefect_api, sources, tmp_path):
    from skelpgt.pipelines.train import train_regressor

    _build(tmp_path / "w", [sources])
    out = train_regressor(workdir=str(tmp_path / "w"), arch="vit-micro", steps=2, batch_size=2)
    assert Path(out["checkpoint"]).is_file()
    assert "mean_pose" in json.dumps(out["metrics"])


def test_refine_labels_flow_makes_round_one(prefect_api, sources, tmp_path):
    from skelpgt.pipelines.refine import refine_labels

    _build(tmp_path / "w", [sources])
    out = refine_labels(workdir=str(tmp_path / "w"), iterations=3, batch_size=8)
    assert out["round"] == 1 and out["manifest"]["parent_round"] == 0
    assert verify_release(tmp_path / "w" / "releases" / "synthetic", store=tmp_path / "w" / "labels.h5").ok


def test_deployment_runs_through_a_real_server_and_worker(tmp_path):
    """README command 1 in miniature: server, pool, deploy, worker, `prefect deployment run`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    cmd = [sys.executable, "-m", "skelpgt.pipelines.demo", "--port", str(port), "--images", "3",
           "--workdir", str(tmp_path / "work"), "--prefect-home", str(tmp_path / "prefect"), "--timeout", "600"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in done.stdout
    assert "skelpgt verify: OK" in done.stdout
    release = tmp_path / "work" / "releases" / "synthetic" / "round-0"
    assert verify_release(release, store=tmp_path / "work" / "labels.h5").ok
    assert read_manifest(release)["counts"]["labelled"] > 0
