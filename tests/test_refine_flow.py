"""`refine-labels` on Dask: the same labels and manifest bytes as in-process, and a killed run resumes to them."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from skelpgt.datasets import LabelStore, verify_release
from skelpgt.model.predict import load_predictions
from skelpgt.pipelines.usecases import BuildConfig, build_round0, convert_locally
from skelpgt.pipelines.usecases.refine import KILL_ENV, KILL_WORKER_ENV
from skelpgt.fitting.convert import ConvertConfig, Converter

FIELDS = ("label_id", "sample_key", "side", "parent_label_id", "poses", "betas", "kp2d_err", "limit_violation", "accepted", "checkpoint_digest")
ROUND = dict(release="syn", iterations=2, batch_size=4, torch_threads=1)
# A flow run in its own process group, so the kill takes its Dask workers with it.
_FLOW_SCRIPT = """
import sys
from skelpgt.pipelines.refine import refine_labels
refine_labels(workdir=sys.argv[1], dask_address="local:2", release="syn", iterations=2, batch_size=4, torch_threads=1)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, models_dir, prefect_api):
    """Round 0 of a 6-image synthetic dataset in 3 source shards, with a regressor checkpoint trained on it."""
    from skelpgt.datasets.synthetic import make_synthetic_dataset
    from skelpgt.pipelines.train import train_regressor

    root = tmp_path_factory.mktemp("refine-flow")
    data = make_synthetic_dataset(root / "source", 6, seed=5, models_dir=models_dir, image_size=96, shard_size=2)
    workdir = root / "work"
    build_round0(workdir, BuildConfig(tuple(data.shards), "syn"), convert_locally(Converter.from_models_dir(models_dir, ConvertConfig(chunk_size=16))))
    train_regressor(workdir=str(workdir), release="syn", arch="vit-micro", steps=2, batch_size=2)  # 'latest' checkpoint of round 0
    return workdir


def _copy(project, path):
    shutil.copytree(project, path)
    return path


@pytest.fixture(scope="module")
def plain(project, tmp_path_factory):
    """Round 1 made in-process (one task at a time), from the labels and the checkpoint's predictions."""
    from skelpgt.pipelines.refine import refine_labels

    workdir = _copy(project, tmp_path_factory.mktemp("plain") / "work")
    result = refine_labels(workdir=str(workdir), **ROUND)  # checkpoint='latest': train-regressor's last.pt of round 0
    assert result["round"] == 1 and len(result["manifest"]["shards"]) == 3 and result["changed"] + result["kept"] > 0
    digest = hashlib.sha256((workdir / "checkpoints" / "syn" / "round-0" / "last.pt").read_bytes()).hexdigest()
    assert result["checkpoint_digest"] == digest
    (npz,) = (workdir / "predictions" / "syn").glob(f"round-0-{digest[:16]}.npz")
    assert len(list((workdir / "predictions" / "syn").glob("round-0-*.parts/*.npz"))) == 3  # one per release shard
    with LabelStore(workdir / "labels.h5") as store:
        rows = store.rows_of_round(1, ("sample_key", "checkpoint_digest"))
    assert len(rows["sample_key"]) > 0 and set(rows["checkpoint_digest"].astype(str)) == {digest}
    # The predictions are keyed like the labels, so every refined person had a second candidate.
    assert set(rows["sample_key"].astype(str)) <= set(load_predictions(npz))
    assert verify_release(workdir / "releases" / "syn", store=workdir / "labels.h5").ok
    return workdir


def _assert_same_round(a, b, round: int = 1) -> None:
    """Same manifest bytes, label rows (≤ 1e-5; here bit-equal) and current labels in two work folders."""
    manifest = lambda w: (w / "releases" / "syn" / f"round-{round}" / "manifest.json").read_bytes()  # noqa: E731
    assert manifest(a) == manifest(b)
    with LabelStore(a / "labels.h5") as sa, LabelStore(b / "labels.h5") as sb:
        ra, rb = sa.rows_of_round(round, FIELDS), sb.rows_of_round(round, FIELDS)
        for name in FIELDS:
            if ra[name].dtype.kind == "f":
                np.testing.assert_allclose(ra[name], rb[name], atol=1e-5, rtol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)
        np.testing.assert_array_equal(sa.current(round)["label_id"], sb.current(round)["label_id"])
        pairs = list(zip(rb["sample_key"].tolist(), rb["side"].tolist()))
        assert len(pairs) == len(set(pairs)) == len(sb.labels_of_round(round - 1, ("label_id",))["label_id"])  # each side once


def test_refine_on_dask_gives_the_in_process_labels_and_manifest(project, plain, tmp_path, monkeypatch):
    from skelpgt.pipelines.refine import refine_labels

    dask = _copy(project, tmp_path / "dask")
    marker = tmp_path / "worker-killed"
    monkeypatch.setenv(KILL_WORKER_ENV, str(marker))  # the workers inherit it: one of them dies in its first fit
    refine_labels(workdir=str(dask), dask_address="local:2", **ROUND)  # predictions, fits and shards on 2 workers
    assert marker.is_file()  # a worker was lost mid-task; Dask ran its chunk again elsewhere
    _assert_same_round(plain, dask)
    assert len(list((dask / "predictions" / "syn").glob("round-0-*.parts/*.npz"))) == 3  # predicted per shard on the workers
    assert verify_release(dask / "releases" / "syn", store=dask / "labels.h5").ok


def test_a_dask_run_killed_after_its_first_chunk_resumes_to_the_same_result(project, plain, tmp_path, prefect_api):
    from skelpgt.pipelines.refine import refine_labels

    resumed = _copy(project, tmp_path / "resumed")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, KILL_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _FLOW_SCRIPT, str(resumed)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers and nannies of the killed run, if any outlived it
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    with LabelStore(resumed / "labels.h5") as store:
        partial = len(store.rows_of_round(1, ("label_id",))["label_id"])
    assert 0 < partial <= ROUND["batch_size"] and not (resumed / "releases" / "syn" / "round-1").exists()
    refine_labels(workdir=str(resumed), **ROUND)  # resumed with another worker count: in-process
    _assert_same_round(plain, resumed)
    assert verify_release(resumed / "releases" / "syn", store=resumed / "labels.h5").ok
