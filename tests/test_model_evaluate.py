"""Evaluation of a checkpoint: metrics table with the mean-pose baseline row, artifacts."""

import math

import pytest
from skelpgt.model.data import DataConfig
from skelpgt.model.evaluate import COLUMNS, evaluate
from skelpgt.model.testing import make_skel_release
from skelpgt.model.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(models_dir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("ev")
    rel = make_skel_release(wd, models_dir, n_images=8, seed=9, p_invalid=0.25)
    cfg = TrainConfig(data=DataConfig(release=str(rel), split=None, batch_size=4), out_dir=str(wd / "run"),
                      models_dir=str(models_dir), arch="vit-micro", steps=2, lr=1e-4)  # fmt: skip
    r = train(cfg)
    return rel, r["checkpoint"], wd


def test_evaluate_table_and_baseline(trained, models_dir):
    rel, ckpt, wd = trained
    r = evaluate(ckpt, rel, split=None, models_dir=models_dir, batch_size=3, out_dir=wd / "eval")
    assert r["n"] == 8 and 0 < r["n_3d"] < 8
    for row in ("model", "mean_pose"):
        m = r["rows"][row]
        assert {k for k, _ in COLUMNS} <= set(m)
        assert all(math.isfinite(m[k]) for k, _ in COLUMNS), m
        assert m["mpjpe14"] > 0 and m["pa_mpjpe14"] <= m["mpjpe14"] + 1e-6
        assert 0 <= m["pck10"] <= 1 and m["pck05"] <= m["pck10"]
    assert "| mean_pose |" in r["markdown"] and "| model |" in r["markdown"]
    assert (wd / "eval" / "eval.md").exists() and (wd / "eval" / "predictions.png").stat().st_size > 0


def test_predict_writes_per_sample_arrays(trained, models_dir):
    import numpy as np
    from skelpgt.model.predict import predict

    rel, ckpt, wd = trained
    r = predict(ckpt, rel, wd / "pred.npz", models_dir=models_dir, batch_size=5)
    z = np.load(wd / "pred.npz")
    assert r["n"] == 8 and len(set(z["key"])) == 8
    assert z["poses"].shape == (8, 46) and z["betas"].shape == (8, 10) and z["cam"].shape == (8, 3) and z["kp2d"].shape == (8, 44, 2)
    assert np.isfinite(z["poses"]).all() and (z["cam_t"][:, 2] > 0).all()
