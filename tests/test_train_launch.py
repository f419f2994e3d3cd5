"""train-regressor launches torchrun itself (nproc/nnodes), resumes from last.pt, and names a failed rank in one line."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from skelpgt.model.data import DataConfig
from skelpgt.model.testing import make_skel_release
from skelpgt.model.train import TrainConfig, recipe
from skelpgt.pipelines.launch import Launch, torchrun_command
from skelpgt.datasets.workdir import Workdir
from skelpgt.pipelines.train import train_regressor

FLOW = {"release": "toy", "arch": "vit-micro", "batch_size": 2}


@pytest.fixture
def workdir(models_dir, tmp_path):
    make_skel_release(tmp_path / "w", models_dir, n_images=20, seed=5, name="toy")
    return tmp_path / "w"


def _kill_rank_when_it_runs(config: Path, rank: int, stop: threading.Event) -> threading.Thread:
    """A thread that SIGKILLs the torchrun worker of `rank` training `config` as soon as it exists (an OOM-killed rank)."""

    def run() -> None:
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    if str(config).encode() in (proc / "cmdline").read_bytes() and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                        os.kill(int(proc.name), signal.SIGKILL)
                        return
                except (OSError, ValueError):
                    continue
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_two_gloo_ranks_train_resume_and_a_finished_run_is_not_retrained(prefect_api, workdir):
    out_dir = Workdir(workdir).checkpoints("toy", 0)
    first = train_regressor(workdir=str(workdir), steps=2, nproc=2, **FLOW)
    assert (first["world"], first["start_step"], first["step"]) == (2, 0, 2)
    metrics = json.loads((out_dir / "train_metrics.json").read_text())
    assert metrics["world"] == 2 and len(metrics["losses"]) == 2 and Path(first["checkpoint"]).is_file()
    assert "mean_pose" in json.dumps(first["metrics"])
    # the ranks got the flow's config exactly
    sent = TrainConfig.read_json(out_dir / "train_config.json")
    assert (sent.steps, sent.arch, sent.data.batch_size, sent.resume, sent.out_dir) == (2, "vit-micro", 2, True, str(out_dir))

    again = train_regressor(workdir=str(workdir), steps=4, nproc=2, **FLOW)
    assert (again["start_step"], again["step"]) == (2, 4)
    log = (out_dir / "torchrun.log").read_text()
    assert "[rank 0] resumed from" in log and "[rank 1] resumed from" in log and "at step 2" in log
    assert json.loads((out_dir / "train_metrics.json").read_text())["start_step"] == 2

    done = train_regressor(workdir=str(workdir), steps=4, nproc=2, **FLOW)
    assert (done["start_step"], done["step"]) == (4, 4) and done["checkpoint"].endswith("last.pt")
    assert (out_dir / "torchrun.log").read_text() == log  # nothing launched


def test_a_killed_rank_fails_the_flow_with_one_line_naming_it(prefect_api, workdir):
    out_dir = Workdir(workdir).checkpoints("toy", 0)
    stop = threading.Event()
    killer = _kill_rank_when_it_runs(out_dir / "train_config.json", 1, stop)
    try:
        with pytest.raises(RuntimeError) as err:
            train_regressor(workdir=str(workdir), steps=100_000, nproc=2, **FLOW)
    finally:
        stop.set()
        killer.join(5)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("training under torchrun exited with code 1: rank 1 failed with exit code -9; see ")
    assert message.endswith(str(out_dir / "torchrun.log"))


def test_an_exception_in_the_ranks_is_named_in_the_error(prefect_api, workdir, tmp_path):
    missing = tmp_path / "no-such-weights.pth"
    with pytest.raises(RuntimeError) as err:
        train_regressor(workdir=str(workdir), steps=2, nproc=2, backbone_weights=str(missing), **FLOW)
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert message.startswith("training under torchrun exited with code 1: rank ") and "failed with exit code 1 (FileNotFoundError: " in message


def test_in_process_path_resumes_and_skips_a_finished_run(prefect_api, workdir):
    first = train_regressor(workdir=str(workdir), steps=2, **FLOW)
    assert (first["world"], first["start_step"], first["step"]) == (1, 0, 2)
    again = train_regressor(workdir=str(workdir), steps=3, **FLOW)
    assert (again["start_step"], again["step"]) == (2, 3)
    done = train_regressor(workdir=str(workdir), steps=3, **FLOW)
    assert (done["start_step"], done["step"]) == (3, 3)


def test_config_json_round_trip_is_exact(tmp_path):
    mix = (("/data/a", 1.0), ("/data/hsmr/{000000..000009}.tar", 0.2))
    data = DataConfig(release="/data/a", batch_size=3, mix=mix, pelvis_frame=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    cfg = TrainConfig(data=data, out_dir=str(tmp_path), arch="vit-h", steps=7, backbone_weights="/w.pth", **recipe("from-scratch", lr=3e-4))
    assert TrainConfig.read_json(cfg.write_json(tmp_path / "c.json")) == cfg
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a TrainConfig"):
        TrainConfig.read_json(tmp_path / "bad.json")


def test_launch_parameters_are_checked_and_reach_torchrun(tmp_path):
    single = Launch(nproc=2).checked()
    assert single.master_addr == "127.0.0.1" and single.master_port > 0 and single.world == 2
    multi = Launch(nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600).checked()
    cmd = torchrun_command(tmp_path / "c.json", multi)
    for arg in ("--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29600"):
        assert arg in cmd
    assert cmd[-4:] == ["-m", "skelpgt.model.train", "--config", str(tmp_path / "c.json")]
    with pytest.raises(ValueError, match="master_addr and master_port"):
        Launch(nproc=1, nnodes=2, node_rank=0).checked()
    with pytest.raises(ValueError, match="node_rank"):
        Launch(nproc=1, nnodes=2, node_rank=2, master_addr="h", master_port=1).checked()
