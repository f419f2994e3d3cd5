"""Evaluation on HMR2.0 / MOYO-layout files: readers, perfect predictions score 0, known perturbations score what they should."""

import math

import numpy as np
import pytest
import roma
import torch
from skelpgt.model.eval_files import (
    evaluate_files,
    keypoint_errors,
    read_hmr2_npz,
    read_moyo_npz,
    table1,
)  # fmt: skip
from skelpgt.model.losses import BodyModel
from skelpgt.model.metrics import EVAL_14
from skelpgt.model.testing import make_eval_files


@pytest.fixture(scope="module")
def files(family_dir, tmp_path_factory):
    return make_eval_files(tmp_path_factory.mktemp("evf"), family_dir, n=5, seed=4)


@pytest.fixture(scope="module")
def body(family_dir):
    return BodyModel(family_dir)


def _truth_fn(files, body, transform=None):
    """Predictor returning the true SKEL person (optionally its skin moved by `transform`)."""
    z = np.load(files["truth"])

    def fn(_imgs, idx):
        q, b = torch.as_tensor(z["q"][idx.numpy()], dtype=torch.float32), torch.as_tensor(z["betas"][idx.numpy()], dtype=torch.float32)
        out = {"q": q, "betas": b, "cam": torch.as_tensor(z["cam"][idx.numpy()], dtype=torch.float32)}
        if transform is not None:
            out["verts"] = transform(body.skel(q, b).skin_verts)
        return out

    return fn


def _rot_y(deg):
    return roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(deg), 0.0]))


def test_readers_follow_the_layouts(files):
    f = read_hmr2_npz(files["3dpw"])
    assert f.dataset == "3DPW" and len(f) == 5 and f.kp2d.shape == (5, 44, 3) and f.kp3d.shape == (5, 44, 4)
    assert (f.box_wh[:, 0] == f.box_wh[:, 1]).all()  # scale (N,) px → square box
    c = read_hmr2_npz(files["coco"])
    assert c.dataset == "COCO" and (c.kp3d[..., 3] == 0).all() and (c.box_wh[:, 0] < c.box_wh[:, 1]).all()
    m = read_moyo_npz(files["moyo"])
    assert m.dataset == "MOYO" and m.smpl["body_pose"].shape == (5, 69) and m.box_wh.shape == (5, 2)
    bad = dict(np.load(files["3dpw"]))
    bad["extra_keypoints_2d"] = bad["extra_keypoints_2d"][:, :18]
    np.savez(files["images"].parent / "bad_3dpw.npz", **bad)
    with pytest.raises(ValueError, match="bad_3dpw.npz: key 'extra_keypoints_2d' has shape"):
        read_hmr2_npz(files["images"].parent / "bad_3dpw.npz")


def test_perfect_prediction_scores_zero(files, family_dir, body):
    fs = [read_hmr2_npz(files["3dpw"]), read_hmr2_npz(files["coco"])]
    r = evaluate_files(_truth_fn(files, body), fs, files["images"], family_dir, batch_size=2)
    pw, coco = r["datasets"]["3DPW"], r["datasets"]["COCO"]
    assert pw["n_3d"] == 5 and pw["mpjpe14"] < 1e-2 and pw["pa_mpjpe14"] < 1e-2  # mm, float32 round-off
    assert pw["pck05"] == 1.0 and coco["pck05"] == 1.0 and coco["n_3d"] == 0 and "mpjpe14" not in coco
    md = table1(r)
    assert "| ours | 1.00 / 1.00 | – | – | 0.0 / 0.0 | – | – |" in md and "| HSMR ViT-H (paper) |" in md


def test_scaled_and_rotated_prediction(files, family_dir, body):
    """Skin rotated by 20° about y, scaled by 1.1 and moved: MPJPE = mean |1.1·R·g − g| over the 14 root-relative joints, PA 0."""
    rot, k, d = _rot_y(20.0), 1.1, torch.tensor([0.3, -0.2, 1.0])
    r = evaluate_files(_truth_fn(files, body, lambda v: k * v @ rot.T + d), [read_hmr2_npz(files["3dpw"])], files["images"], family_dir)
    g = np.load(files["3dpw"])["extra_keypoints_3d"][..., :3]  # rows 25..43
    g = g[:, [j - 25 for j in EVAL_14]] - g[:, [39 - 25]]
    expected = np.linalg.norm(k * g @ rot.double().numpy().T - g, axis=-1).mean() * 1000
    m = r["datasets"]["3DPW"]
    assert m["mpjpe14"] == pytest.approx(expected, abs=0.02) and expected > 50
    assert m["pa_mpjpe14"] < 1e-2


def test_keypoint_offset_and_translation():
    gt = torch.randn(3, 44, 4, dtype=torch.float64)
    pred = gt[..., :3].clone() + torch.tensor([5.0, 0.0, -2.0], dtype=torch.float64)  # translation: root-relative → 0
    e = keypoint_errors(pred, gt)
    assert e["mpjpe14"].abs().max() < 1e-9 and e["pa_mpjpe14"].abs().max() < 1e-6
    pred[:, 43] += torch.tensor([0.0, 0.07, 0.0], dtype=torch.float64)  # one of the 14 joints off by 70 mm
    e = keypoint_errors(pred, gt)
    assert torch.allclose(e["mpjpe14"], torch.full((3,), 70.0 / 14, dtype=torch.float64))
    pred[:, 39] += 0.01  # the root moves every root-relative joint but the root itself is not among the 14
    assert (keypoint_errors(pred, gt)["mpjpe14"] > 70.0 / 14).all()


def test_moyo_truth_and_rotation(files, family_dir):
    from skelpgt.model.eval_files import _Moyo

    f = read_moyo_npz(files["moyo"])
    moyo = _Moyo(family_dir)
    gt = moyo.gt_verts(f.smpl, np.arange(len(f)))
    cam = torch.tensor([[0.9, 0.0, 0.0]]).expand(len(f), 3)
    oracle = lambda _i, idx: {"verts": gt[idx], "cam": cam[idx]}
    m = evaluate_files(oracle, [f], files["images"], family_dir)["datasets"]["MOYO"]
    assert max(m["mpjpe24"], m["pa_mpjpe24"], m["mpve"], m["pa_mpve"]) < 1e-2
    rot = _rot_y(-15.0)
    turned = lambda _i, idx: {"verts": gt[idx] @ rot.T + 0.5, "cam": cam[idx]}
    m = evaluate_files(turned, [f], files["images"], family_dir)["datasets"]["MOYO"]
    gj = moyo.joints(gt).double()
    g = gj - gj[:, :1]
    expected = np.linalg.norm((g @ rot.double().T - g).numpy(), axis=-1).mean() * 1000
    assert m["mpjpe24"] == pytest.approx(expected, abs=0.02) and expected > 10
    assert m["pa_mpjpe24"] < 1e-2 and m["pa_mpve"] < 1e-2 and m["mpve"] > m["pa_mpve"]


def test_cli_evaluate_checkpoint(files, family_dir, tmp_path):
    import json

    from skelpgt.model.network import Regressor, mean_pelvis_rotation
    from skelpgt.pipelines.cli import app
    from typer.testing import CliRunner

    torch.manual_seed(0)
    model = Regressor("vit-micro", mean_pelvis_rotation(BodyModel(family_dir).skel))  # untrained: predicts ≈ the mean pose
    torch.save({"model": model.state_dict(), "net_config": model.config.to_dict(), "step": 0}, tmp_path / "ck.pt")
    args = ["evaluate", str(tmp_path / "ck.pt"), "--hmr2-npz", str(files["3dpw"]), "--hmr2-npz", str(files["coco"]),
            "--moyo-npz", str(files["moyo"]), "--images", str(files["images"]), "--models-dir", str(family_dir), "--out", str(tmp_path / "ev")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| method | COCO | LSP-Ext | PoseTrack | 3DPW | H36M | MOYO |" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("| ours"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[1] == cells[2] == cells[4] == "–" and all(c != "–" for c in (cells[0], cells[3], cells[5]))
    assert "MPVPE / PA-MPVPE" in res.output
    d = json.loads((tmp_path / "ev" / "eval_files.json").read_text())["datasets"]
    # an upright mean pose is within a few hundred mm of the upright people (an image/camera frame mix-up gives ~1 m)
    assert 50 < d["3DPW"]["mpjpe14"] < 400 and 50 < d["MOYO"]["mpjpe24"] < 400 and d["COCO"]["pck10"] > 0.3
