"""SMPL loading without chumpy, the models directory check and the `skelpgt models` CLI."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelpgt.fitting.models import check_models_dir
from skelpgt.fitting.pickles import ModelFileError, load_model_pickle
from skelpgt.fitting.smpl import load_smpl, read_smpl_arrays, smpl_forward
from skelpgt.pipelines.cli import app


def _pickle_with_fake_chumpy(arrays: dict, path) -> None:
    """Write `arrays` as the official SMPL pickles do: big arrays wrapped in chumpy.ch.Ch objects."""
    chumpy = types.ModuleType("chumpy")
    ch_module = types.ModuleType("chumpy.ch")

    class Ch:  # what chumpy pickles: the class reference plus a state dict holding 'x'
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_module.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch_module
    try:
        wrapped = {k: Ch(v) if k in ("v_template", "shapedirs", "posedirs", "weights") else v for k, v in arrays.items()}
        with open(path, "wb") as f:
            pickle.dump(wrapped, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_smpl_loads_from_chumpy_pickle_without_chumpy(family_dir, tmp_path):
    models_dir = family_dir
    assert importlib.util.find_spec("chumpy") is None
    arrays = load_model_pickle(models_dir / "smpl" / "SMPL_MALE.pkl")
    (tmp_path / "smpl").mkdir()
    _pickle_with_fake_chumpy(arrays, tmp_path / "smpl" / "SMPL_MALE.pkl")
    assert b"chumpy.ch" in (tmp_path / "smpl" / "SMPL_MALE.pkl").read_bytes()
    model = load_smpl(tmp_path, gender="male", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "smpl").glob("SMPL_MALE-*.npz")), "plain npz cache not written"
    reference = load_smpl(models_dir, gender="male", cache_dir=tmp_path / "cache2")
    pose = torch.randn(2, 72) * 0.3
    betas = torch.randn(2, 10)
    v, j = smpl_forward(model, pose, betas)
    v_ref, j_ref = smpl_forward(reference, pose, betas)
    assert v.shape == (2, 6890, 3) and j.shape == (2, 24, 3)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(model.v_template, torch.as_tensor(arrays["v_template"], dtype=torch.float32))


def test_smpl_reads_smplx_npz(models_dir, tmp_path):
    arrays = read_smpl_arrays(models_dir / "smpl" / "SMPL_NEUTRAL.pkl")
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **arrays)
    model = load_smpl(tmp_path / "SMPL_NEUTRAL.npz")
    v, _ = smpl_forward(model, torch.zeros(1, 72), torch.zeros(1, 10))
    torch.testing.assert_close(v[0], torch.as_tensor(arrays["v_template"], dtype=torch.float32))


def test_smpl_and_skel_share_the_skin_but_not_the_joints(family_dir):
    from skelpgt.fitting.skel import SKEL

    smpl, skel_model = load_smpl(family_dir, gender="male"), SKEL.from_file(family_dir, gender="male")
    torch.testing.assert_close(smpl.v_template, skel_model.v_template)
    _, smpl_joints = smpl_forward(smpl, torch.zeros(1, 72), torch.zeros(1, 10))
    assert (smpl_joints[0] - skel_model.J_template).norm(dim=-1).mean() > 0.01


def test_bad_smpl_file_names_file_and_field(models_dir, tmp_path):
    arrays = read_smpl_arrays(models_dir / "smpl" / "SMPL_MALE.pkl")
    del arrays["posedirs"]
    with open(tmp_path / "SMPL_MALE.pkl", "wb") as f:
        pickle.dump(arrays, f)
    with pytest.raises(ModelFileError, match=r"SMPL_MALE\.pkl: SMPL file lacks keys \['posedirs'\]"):
        load_smpl(tmp_path, gender="male")


def test_synthetic_body_has_human_proportions(family_dir):
    from skelpgt.fitting.skel import SKEL

    skel_model = SKEL.from_file(family_dir, gender="male")
    v = skel_model.v_template
    height = v[:, 1].max() - v[:, 1].min()
    span = v[:, 0].max() - v[:, 0].min()
    assert 1.55 < height < 1.85 and 1.4 < span < 1.9  # T-pose arm span ≈ height
    landmarks = {332: "nose", 3387: "left heel", 6787: "right heel", 2445: "left middle finger"}
    assert v[332, 2] > v[:, 2][v[:, 1] > 0.3].quantile(0.95), landmarks[332]
    assert v[3387, 1] < -1.1 and v[3387, 0] > 0 and v[6787, 0] < 0
    assert v[2445, 0] > 0.75
    # β0 changes height, β1 changes girth
    b = torch.zeros(2, 10)
    b[0, 0], b[1, 1] = 2.0, 2.0
    shaped, _ = skel_model.shape(b)
    assert (shaped[0, :, 1].max() - shaped[0, :, 1].min()) > height + 0.1
    waist = (v[:, 1] - (-0.1)).abs() < 0.02
    assert shaped[1, waist, 0].abs().max() > v[waist, 0].abs().max() + 0.01


def test_both_families_pass_the_check(family_dir):
    assert check_models_dir(family_dir) == []
    assert CliRunner().invoke(app, ["models", "check", str(family_dir)]).exit_code == 0


def test_family_b_is_built_independently_of_family_a(models_dir, models_dir_b):
    """B's skin, SMPL regressor and SKEL skinning differ from A's; B's SKEL skin is not SMPL's re-labelled."""
    from skelpgt.fitting.synthetic import _SKEL_BONE_OF_SMPL_JOINT

    a_smpl, b_smpl = (read_smpl_arrays(d / "smpl" / "SMPL_MALE.pkl") for d in (models_dir, models_dir_b))
    assert np.abs(a_smpl["v_template"] - b_smpl["v_template"]).max() > 0.03
    moved = {}
    for name, d in (("A", models_dir), ("B", models_dir_b)):
        smpl_w = read_smpl_arrays(d / "smpl" / "SMPL_MALE.pkl")["weights"]
        skel_w = load_model_pickle(d / "skel" / "skel_male.pkl")["skin_weights"].toarray()
        relabelled = np.zeros_like(skel_w)
        np.add.at(relabelled.T, list(_SKEL_BONE_OF_SMPL_JOINT), smpl_w.T)
        # Merge the bones SMPL has no joint for into their parents before comparing.
        for child, parent in ((4, 3), (9, 8), (17, 16), (22, 21)):
            for w in (relabelled, skel_w):
                w[:, parent] += w[:, child]
                w[:, child] = 0.0
        moved[name] = np.abs(relabelled - skel_w).sum(1).mean()
    assert moved["A"] < 0.02 and moved["B"] > 0.2, moved
    joints = [read_smpl_arrays(d / "smpl" / "SMPL_MALE.pkl")["J_regressor"] for d in (models_dir, models_dir_b)]
    support = [set(np.flatnonzero(np.asarray(j.todense() if hasattr(j, "todense") else j)[4])) for j in joints]
    assert len(support[0] & support[1]) < 0.5 * len(support[1])  # left knee: other vertices


def test_check_models_dir_and_cli(models_dir, tmp_path):
    assert check_models_dir(models_dir) == []
    broken = tmp_path / "models"
    shutil.copytree(models_dir, broken)
    (broken / "hsmr" / "SMPL_to_J19.pkl").unlink()
    with open(broken / "skel" / "skel_female.pkl", "wb") as f:
        pickle.dump({"weights": np.zeros(3)}, f)
    problems = check_models_dir(broken)
    assert any("SMPL_to_J19.pkl: missing" in p for p in problems)
    assert any("skel_female.pkl" in p and "pre-1.1.1" in p for p in problems)
    assert len(problems) == 2

    runner = CliRunner()
    ok = runner.invoke(app, ["models", "check", str(models_dir)])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["models", "check", str(broken)])
    assert bad.exit_code == 1
    assert "SMPL_to_J19.pkl: missing" in bad.output


def test_synthetic_models_are_deterministic(tmp_path):
    from skelpgt.fitting.synthetic import make_synthetic_models

    result = CliRunner().invoke(app, ["models", "make-synthetic", str(tmp_path / "a"), "--tiny"])
    assert result.exit_code == 0, result.output
    make_synthetic_models(tmp_path / "b", tiny=True)
    for rel in ("smpl/SMPL_NEUTRAL.pkl", "skel/skel_male.pkl", "hsmr/SMPL_to_J19.pkl"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_family_b_from_the_cli_is_deterministic(tmp_path, models_dir_b):
    result = CliRunner().invoke(app, ["models", "make-synthetic", str(tmp_path / "b"), "--tiny", "--family", "B"])
    assert result.exit_code == 0, result.output
    for rel in ("smpl/SMPL_NEUTRAL.pkl", "skel/skel_male.pkl", "hsmr/J_regressor_SKEL_mix_MALE.pkl"):
        assert (tmp_path / "b" / rel).read_bytes() == (models_dir_b / rel).read_bytes(), rel
    bad = CliRunner().invoke(app, ["models", "make-synthetic", str(tmp_path / "c"), "--family", "C"])
    assert bad.exit_code != 0 and not (tmp_path / "c" / "smpl").exists()
