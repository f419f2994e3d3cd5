"""Inputs users have: SMPL-H / SMPL-X / AMASS npz, their gender and frame rate, through `skelpgt convert`
and build-pseudo-gt; extreme shapes read; HSMR-validity counts in the manifest and the flow artifact."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import roma
import torch
from typer.testing import CliRunner

from skelpgt.datasets import hsmr_validity
from skelpgt.datasets.quarantine import Quarantine
from skelpgt.datasets.readers import ReadCounts, read_npz
from skelpgt.datasets.smplparams import canonical_axis_angle, read_smpl_params
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.motion import synthetic_motion
from skelpgt.fitting.sequence import SequenceConfig, sequence_digest
from skelpgt.pipelines.cli import app
from skelpgt.pipelines.usecases import BuildConfig, build_round0, convert_locally
from skelpgt.pipelines.usecases.build import convert_source_shard

N = 4
GENDER = "female"


def _body(n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMPL pose (n,72) with zero hand joints, a root of norm > π on one row, betas (16,), trans."""
    pose, trans = synthetic_motion(n, seed=2)
    pose = pose.numpy().astype(np.float64)
    pose[:, 66:] = 0.0
    root = pose[1, :3]
    pose[1, :3] = -root / np.linalg.norm(root) * (2 * math.pi - np.linalg.norm(root))  # same rotation, norm > π
    betas = np.linspace(-1.5, 1.5, 16)
    return pose, betas, trans.numpy().astype(np.float64)


def _write_layouts(folder, gender: str = GENDER) -> dict:
    """The same people as SMPL-H (156), SMPL-X (165) and AMASS SMPL-X (root_orient + pose_body) npz files."""
    pose, betas, trans = _body()
    rng = np.random.default_rng(0)
    hands = rng.normal(0, 0.3, (N, 90))
    face = rng.normal(0, 0.2, (N, 9))  # jaw + two eyes: SMPL-X only
    files = {
        "smplh": dict(poses=np.concatenate((pose[:, :66], hands), 1), betas=betas, trans=trans, gender=np.array(gender), mocap_framerate=np.array(120.0)),
        "smplx": dict(poses=np.concatenate((pose[:, :66], face, hands), 1), betas=betas[:10], trans=trans, gender=np.array(gender.encode())),
        "amass": dict(root_orient=pose[:, :3], pose_body=pose[:, 3:66], pose_hand=hands, pose_jaw=face[:, :3], trans=trans, betas=betas, gender=np.array(gender), mocap_frame_rate=np.array(60.0)),
    }
    paths = {}
    for name, arrays in files.items():
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], **arrays)
    return paths


def test_layouts_read_as_the_same_smpl_body(tmp_path):
    pose, betas, trans = _body()
    for name, path in _write_layouts(tmp_path).items():
        with np.load(path) as z:
            p = read_smpl_params(z)
        assert p.genders == [GENDER] * N, name
        np.testing.assert_allclose(p.betas, np.broadcast_to(betas[:10], (N, 10)), atol=1e-6)
        np.testing.assert_allclose(p.trans, trans, atol=1e-6)
        assert not p.pose[:, 66:].any()
        assert np.linalg.norm(p.pose.reshape(N, 24, 3), axis=-1).max() <= math.pi + 1e-6  # norm > π rewritten
        same = roma.rotmat_geodesic_distance(roma.rotvec_to_rotmat(torch.from_numpy(p.pose).double().view(N, 24, 3)), roma.rotvec_to_rotmat(torch.from_numpy(pose).view(N, 24, 3)))
        assert float(same.max()) < 1e-5, name
    with np.load(tmp_path / "smplh.npz") as z:
        assert read_smpl_params(z).framerate == 120.0
    with np.load(tmp_path / "amass.npz") as z:
        assert read_smpl_params(z).framerate == 60.0 and read_smpl_params(z).layout == "amass"


def test_canonical_axis_angle_keeps_the_rotation():
    aa = np.array([[0.0, 0.0, 1.5 * math.pi], [3.5 * math.pi, 0.0, 0.0], [0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    out = canonical_axis_angle(aa)
    assert np.linalg.norm(out, axis=1).max() <= math.pi + 1e-9
    np.testing.assert_allclose(roma.rotvec_to_rotmat(torch.from_numpy(out)), roma.rotvec_to_rotmat(torch.from_numpy(aa)), atol=1e-9)
    np.testing.assert_array_equal(out[2:], aa[2:])


def _cli(args) -> None:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output


def test_cli_converts_every_layout_with_the_files_gender(tmp_path, models_dir):
    paths = _write_layouts(tmp_path)
    outs = {}
    for name, path in paths.items():
        _cli([path, tmp_path / f"{name}-out.npz", "--models-dir", models_dir])
        outs[name] = dict(np.load(tmp_path / f"{name}-out.npz"))
    _cli([paths["amass"], tmp_path / "neutral-out.npz", "--models-dir", models_dir, "--smpl-gender", "neutral"])
    neutral = np.load(tmp_path / "neutral-out.npz")
    female_digest = ConvertConfig(smpl_gender=GENDER).digest()
    for name, out in outs.items():
        assert out["converged"].all(), name
        assert list(out["smpl_gender"]) == [GENDER] * N and str(out["config_digest"]) == female_digest
        np.testing.assert_allclose(out["poses"], outs["amass"]["poses"], atol=2e-4)  # one body, three layouts
        # the female SMPL mesh is not the neutral one: the file's gender changed the fit
        assert np.abs(out["betas"] - neutral["betas"]).max() > 0.05, name
    assert str(neutral["config_digest"]) == ConvertConfig(smpl_gender="neutral").digest()
    assert float(outs["smplh"]["mocap_framerate"]) == 120.0 and float(outs["amass"]["mocap_framerate"]) == 60.0
    assert "mocap_framerate" not in outs["smplx"]


def test_cli_sequence_on_an_amass_file(tmp_path, models_dir):
    pose, trans = synthetic_motion(16, seed=1, forward_lean_deg=10.0)
    p = pose.numpy()
    np.savez(tmp_path / "seq.npz", root_orient=p[:, :3], pose_body=p[:, 3:66], trans=trans.numpy(), betas=np.zeros(16), gender=np.array("male"), mocap_framerate=np.array(60.0))
    _cli([tmp_path / "seq.npz", tmp_path / "seq-out.npz", "--models-dir", models_dir, "--sequence", "--shared-betas", "--flip"])
    out = np.load(tmp_path / "seq-out.npz")
    from skelpgt.fitting.motion import smpl_rotation_steps

    bound = 2 * float(smpl_rotation_steps(pose).max().rad2deg()) + 5.0
    for prefix in ("", "flip_"):
        assert out[prefix + "converged"].all()
        assert np.degrees(np.abs(np.diff(out[prefix + "poses"], axis=0))).max() <= bound
        assert np.abs(out[prefix + "betas"] - out[prefix + "betas"][:1]).max() == 0.0
    assert float(out["mocap_framerate"]) == 60.0 and set(out["smpl_gender"]) == {"male"}


def test_build_pseudo_gt_converts_with_each_persons_gender(tmp_path, models_dir):
    """Reader + convert_source_shard: the file's gender picks the SMPL body; labels carry that config's digest."""
    paths = _write_layouts(tmp_path / "in" if (tmp_path / "in").mkdir() is None else tmp_path)
    converter = Converter.from_models_dir(models_dir, ConvertConfig())  # neutral by default
    female = Converter.from_models_dir(models_dir, ConvertConfig(smpl_gender=GENDER))
    pose, betas, trans = _body()
    want = female.convert(torch.from_numpy(pose).float(), torch.from_numpy(betas[:10]).float(), torch.from_numpy(trans).float())
    neutral = converter.convert(torch.from_numpy(pose).float(), torch.from_numpy(betas[:10]).float(), torch.from_numpy(trans).float())
    for name, path in paths.items():
        conv = convert_source_shard(path, converter, tmp_path / f"{name}.labels.npz")
        assert conv.n_labelled == N and not conv.quarantine, name
        lab = conv.labels["orig"]
        # files with a mocap frame rate are one person's frames: converted as a sequence
        mocap = name != "smplx"
        digest = sequence_digest(female.config.digest(), SequenceConfig()) if mocap else female.config.digest()
        assert set(lab["config_digest"].tolist()) == {digest}, name
        same = roma.rotmat_geodesic_distance(female.skel.pose_rotations(torch.from_numpy(lab["poses"]).double()), female.skel.pose_rotations(want.poses.double()))
        assert float(same.max()) < (0.05 if mocap else 1e-3), name  # the female fit's rotations (continuity may move a few)
        assert np.abs(lab["pve_mean"] - want.pve_mean.numpy()).max() < 5e-4
        assert np.abs(lab["betas"] - neutral.betas.numpy()).max() > 0.05
    records = list(read_npz(paths["amass"]))
    assert {r.gender for r in records} == {GENDER} and records[0].extra_info == {"mocap_framerate": 60.0, "smpl_gender": GENDER}


def test_round0_release_counts_labels_hsmr_would_drop(tmp_path, models_dir):
    pose, betas, trans = _body()
    betas = betas.copy()
    betas[0] = 10.0  # an extreme but real shape (AMASS subjects reach |β| ≈ 10): read, not refused
    np.savez(tmp_path / "amass.npz", root_orient=pose[:, :3], pose_body=pose[:, 3:66], trans=trans, betas=betas, gender=np.array("male"))
    q, counts = Quarantine(), ReadCounts()
    records = list(read_npz(tmp_path / "amass.npz", q, counts))
    assert len(records) == N and not len(q) and records[0].betas[0] == 10.0
    converter = Converter.from_models_dir(models_dir, ConvertConfig())
    manifest = build_round0(tmp_path / "work", BuildConfig((str(tmp_path / "amass.npz"),), "amass"), convert_locally(converter)).manifest
    entry = manifest["hsmr_invalid"]
    labelled = manifest["counts"]["labelled"]
    assert entry["labels"] == 2 * labelled and entry["invalid"] == sum(entry["by_reason"].values())
    assert set(entry["by_reason"]) == set(hsmr_validity.REASONS)

    from skelpgt.pipelines.build import _summary_markdown

    summary = {"persons_in": N, "labelled": labelled, "unlabelled": 0, "quarantined": 0, "shards": 1, "fits_per_s": 1.0,
               "pve_mean_mm": {50: 1.0, 90: 1.0, 99: 1.0}, "pve_max_mm": {50: 1.0, 90: 1.0, 99: 1.0}}  # fmt: skip
    text = _summary_markdown(tmp_path, summary, manifest)
    assert f"HSMR's loader would treat {entry['invalid']} of {entry['labels']} labels" in text


def test_hsmr_invalid_counts_each_labelled_side_once():
    def person(orig_id, orig_pve, orig_beta, flip_id=-1, flip_pve=float("nan"), flip_beta=0.0):
        return {"orig_label_id": orig_id, "orig_pve_max": orig_pve, "orig_betas": np.full(10, orig_beta),
                "flip_label_id": flip_id, "flip_pve_max": flip_pve, "flip_betas": np.full(10, flip_beta)}  # fmt: skip

    persons = [
        person(0, float("nan"), 0.0),  # failed fit
        person(1, 0.07, 5.0, 2, 0.01, 3.5),  # orig: pve first; flip: β only
        person(3, 0.059, 3.0, 4, 0.06, 0.0),  # orig valid (|β| = 3 is kept); flip at the threshold: dropped
        person(-1, float("nan"), 0.0),  # unlabelled: not a label
    ]
    counts = Counter()
    hsmr_validity.count_invalid(persons, counts)
    s = hsmr_validity.summary([counts])
    assert s["labels"] == 5 and s["invalid"] == 4
    assert s["by_reason"] == {"pve_max_nan": 1, "pve_max_ge_0.06m": 2, "abs_beta_gt_3": 1}


@pytest.mark.parametrize("bad", [{"gender": np.array("robot")}, {"pose_body": np.zeros((N, 50))}])
def test_bad_fields_are_named(tmp_path, bad):
    pose, betas, trans = _body()
    arrays = dict(root_orient=pose[:, :3], pose_body=pose[:, 3:66], trans=trans, betas=betas, gender=np.array("male"))
    arrays.update(bad)
    np.savez(tmp_path / "bad.npz", **arrays)
    q = Quarantine()
    assert list(read_npz(tmp_path / "bad.npz", q)) == [] and len(q) == 1
    assert q.entries[0].field == next(iter(bad))
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "bad.npz"), str(tmp_path / "out.npz")])
    assert result.exit_code != 0 and next(iter(bad)) in result.output
