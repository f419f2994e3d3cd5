"""Training: one step lowers the loss, exact resume, 2-process gloo DDP step."""

import json
import os
import subprocess
import sys

import pytest
import torch
from skelpgt.model.data import DataConfig, ReleaseBatches
from skelpgt.model.losses import BodyModel, LossWeights, compute_losses
from skelpgt.model.network import Regressor, mean_pelvis_rotation
from skelpgt.model.testing import make_skel_release
from skelpgt.model.train import TrainConfig, load_checkpoint, train


@pytest.fixture(scope="module")
def release(models_dir, tmp_path_factory):
    return make_skel_release(tmp_path_factory.mktemp("rel"), models_dir, n_images=12, seed=5)


def _config(release, models_dir, out, **kw):
    data = DataConfig(release=str(release), split=None, batch_size=2, seed=2)
    base = {"data": data, "out_dir": str(out), "models_dir": str(models_dir), "arch": "vit-micro", "lr": 1e-4, "log_every": 1}
    base.update(kw)
    return TrainConfig(**base)


def test_one_step_lowers_loss_on_fixed_batch(release, models_dir):
    torch.manual_seed(0)
    body = BodyModel(models_dir)
    model = Regressor("vit-micro", mean_pelvis_rotation(body.skel))
    batch = next(iter(ReleaseBatches(DataConfig(release=str(release), split=None, batch_size=4))))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    w = LossWeights()
    before, terms = compute_losses(model(batch["img"]), batch, body, w)
    assert set(terms) >= {"kp2d", "kp3d", "orient", "body", "betas", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = compute_losses(model(batch["img"]), batch, body, w)
    assert after < before


def test_resume_reproduces_next_five_losses(release, models_dir, tmp_path):
    full = train(_config(release, models_dir, tmp_path / "a", steps=8, ckpt_every=3))
    assert len(full["losses"]) == 8
    ck = load_checkpoint(tmp_path / "a" / "step-000003.pt")
    assert ck["step"] == 3 and ck["data_batches"] == 3 and {"model", "optim", "rng", "config"} <= set(ck)
    resumed = train(_config(release, models_dir, tmp_path / "b", steps=8, resume_from=str(tmp_path / "a" / "step-000003.pt")))
    assert resumed["losses"] == full["losses"][3:8]  # exactly, bit for bit
    # resume=True picks up last.pt of the same folder and has nothing left to do at the end
    again = train(_config(release, models_dir, tmp_path / "a", steps=8, resume=True))
    assert again["losses"] == []


def test_ddp_two_gloo_processes_one_step(release, models_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "skelpgt.model.train", str(release), str(out), "--steps", "1", "--arch", "vit-micro",
        "--batch-size", "2", "--models-dir", str(models_dir),
    ]  # fmt: skip
    r = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "train_metrics.json").read_text())
    assert m["world"] == 2 and m["step"] == 1 and len(m["losses"]) == 1
    assert (out / "last.pt").exists()
