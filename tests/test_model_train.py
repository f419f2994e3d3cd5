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
from skelpgt.model.train import (
    TrainConfig,
    learning_rate,
    load_checkpoint,
    recipe,
    train,
)


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


@pytest.mark.parametrize("recipe_name", [None, "from-scratch"])
def test_resume_reproduces_next_five_losses(release, models_dir, tmp_path, recipe_name):
    kw = recipe(recipe_name, lr=1e-4, warmup_steps=2) if recipe_name else {}
    full = train(_config(release, models_dir, tmp_path / "a", steps=8, ckpt_every=3, **kw))
    assert len(full["losses"]) == 8
    if recipe_name:  # the schedule and the token-keypoint term are part of what resumes
        assert {"tokens"} <= set(full["terms"][0])
    ck = load_checkpoint(tmp_path / "a" / "step-000003.pt")
    assert ck["step"] == 3 and ck["data_batches"] == 3 and {"model", "optim", "rng", "config"} <= set(ck)
    resumed = train(_config(release, models_dir, tmp_path / "b", steps=8, resume_from=str(tmp_path / "a" / "step-000003.pt"), **kw))
    assert resumed["losses"] == full["losses"][3:8]  # exactly, bit for bit
    # resume=True picks up last.pt of the same folder and has nothing left to do at the end
    again = train(_config(release, models_dir, tmp_path / "a", steps=8, resume=True, **kw))
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


def test_learning_rate_schedule(tmp_path):
    cfg = TrainConfig(data=DataConfig(), out_dir=str(tmp_path), steps=100, **recipe("from-scratch", lr=1.0, warmup_steps=10))
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3  # cosine decay to ~0
    assert learning_rate(TrainConfig(data=DataConfig(), out_dir=str(tmp_path), **recipe("hsmr")), 500) == 1e-5
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("nope")
