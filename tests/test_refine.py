"""Refinement rounds on synthetic data with corrupted round-0 labels: better labels, full history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelpgt.datasets import LabelStore, read_manifest, verify_release
from skelpgt.datasets import pseudo_gt
from skelpgt.datasets.refine import refine_round
from skelpgt.datasets.release import finalize_release, staging_dir
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.skelify import Skelify
from skelpgt.fitting.smpl import smpl_forward


@pytest.fixture(scope="module")
def project(tmp_path_factory, models_dir, skel_model):
    """A round-0 release of a small synthetic dataset, then a third of its labels corrupted."""
    from skelpgt.datasets.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("refine")
    data = make_synthetic_dataset(root / "source", 5, seed=3, models_dir=models_dir, image_size=128)
    converter = Converter.from_models_dir(models_dir, ConvertConfig(chunk_size=16))
    workdir = root / "work"
    conversions = [pseudo_gt.convert_source_shard(s, converter, pseudo_gt.conversion_path(workdir, "syn", s)) for s in data.shards]
    ids = pseudo_gt.record_round0(workdir / "labels.h5", conversions)
    stage = staging_dir(workdir, "syn", 0)
    infos = [pseudo_gt.write_release_shard(c, ids, stage, index=i, release="syn") for i, c in enumerate(conversions)]
    finalize_release(workdir, "syn", 0, shard_infos=infos, config={"sources": [str(s) for s in data.shards]}, n_in=sum(c.n_in for c in conversions))
    # Corrupt every third label (both sides): a manual round-0 version becomes current.
    with LabelStore(workdir / "labels.h5", "a") as store:
        current = store.labels_of_round(0)
        bad = np.arange(len(current["label_id"])) % 3 == 0
        g = np.random.default_rng(0)
        noisy = current["poses"][bad] + g.normal(0, 0.25, size=current["poses"][bad].shape).astype(np.float32)
        new = store.append(
            {"sample_key": list(current["sample_key"][bad]), "side": list(current["side"][bad]), "round": 0, "producer": "manual",
             "parent_label_id": current["label_id"][bad], "poses": noisy, "betas": current["betas"][bad], "trans": current["trans"][bad]}
        )  # fmt: skip
        store.set_current(0, new)
    truth = np.load(data.truth, allow_pickle=False)
    return {"workdir": workdir, "truth": truth, "skelify": Skelify(skel_model, KeypointRegressor.from_models_dir(models_dir))}


def _label_error(project, round: int, models_dir, skel_model) -> float:
    """Mean root-relative keypoint error (m) of the round's orig labels against the true people."""
    from skelpgt.fitting.smpl import load_smpl

    truth = project["truth"]
    regressor = project["skelify"].keypoints
    with LabelStore(project["workdir"] / "labels.h5") as store:
        labels = store.skel_labels(round)
    keys = [str(k) for k in truth["key"] if str(k) in labels]
    index = {str(k): i for i, k in enumerate(truth["key"])}
    rows = [index[k] for k in keys]
    smpl = load_smpl(models_dir, "neutral")
    with torch.no_grad():
        verts, _ = smpl_forward(smpl, torch.as_tensor(truth["pose"][rows]), torch.as_tensor(truth["betas"][rows]))
        true_kp = regressor(verts)
        q = torch.as_tensor(np.stack([labels[k][0].poses for k in keys]))
        b = torch.as_tensor(np.stack([labels[k][0].betas for k in keys]))
        kp = regressor(skel_model(q, b).skin_verts)
    rel = lambda x: x - x[:, 39:40]  # noqa: E731
    return float((rel(kp) - rel(true_kp)).norm(dim=-1).mean())


def test_two_rounds_reduce_label_error_and_never_accept_worse(project, models_dir, skel_model):
    workdir, skelify = project["workdir"], project["skelify"]
    with LabelStore(workdir / "labels.h5") as store:
        round0_rows = store.rows_of_round(0)
        round0_current = store.current(0)
    errors = [_label_error(project, 0, models_dir, skel_model)]
    reports = []
    for r in (0, 1):
        reports.append(refine_round(workdir, "syn", r, skelify, batch_size=16))
        errors.append(_label_error(project, r + 1, models_dir, skel_model))
    print("label errors per round (m):", errors, [(r.changed, r.kept, r.skipped) for r in reports])
    assert errors[2] < errors[0] * 0.9, errors
    assert reports[0].changed > 0 and reports[0].kp2d_err_after < reports[0].kp2d_err_before
    with LabelStore(workdir / "labels.h5") as store:
        # Round 0 is untouched by rounds 1 and 2.
        after0 = store.rows_of_round(0)
        for name in ("label_id", "poses"):
            np.testing.assert_array_equal(after0[name], round0_rows[name])
        np.testing.assert_array_equal(store.current(0)["label_id"], round0_current["label_id"])
        # Every accepted candidate scores strictly better than the label it replaced; rejected ones are kept, not current.
        for r in (1, 2):
            rows = store.rows_of_round(r)
            parents = store.get(rows["parent_label_id"])
            people = {p.key: p for p in pseudo_gt.read_source(read_manifest(workdir / "releases" / "syn" / f"round-{r - 1}")["config"]["sources"])}
            from skelpgt.fitting.camera import normalise_keypoints
            from skelpgt.fitting.keypoints import flip_keypoints_normalised

            kp = normalise_keypoints(*(torch.from_numpy(np.stack([getattr(people[str(k)], f) for k in rows["sample_key"]])) for f in ("keypoints_2d", "center", "scale")))
            flip = torch.tensor([s == "flip" for s in rows["side"]])
            kp = torch.where(flip[:, None, None], flip_keypoints_normalised(kp), kp)
            new = skelify.evaluate(kp, torch.as_tensor(rows["poses"]), torch.as_tensor(rows["betas"])).score
            old = skelify.evaluate(kp, torch.as_tensor(parents["poses"]), torch.as_tensor(parents["betas"])).score
            accepted = torch.as_tensor(rows["accepted"])
            assert (new[accepted] < old[accepted] + 1e-6).all()
            current = set(store.current(r)["label_id"].tolist())
            assert not (set(rows["label_id"][~rows["accepted"]].tolist()) & current)
    assert verify_release(workdir / "releases" / "syn", store=workdir / "labels.h5").ok
    assert read_manifest(workdir / "releases" / "syn" / "round-2")["parent_round"] == 1


def test_lineage_of_a_sample_refined_twice_lists_three_versions(project, models_dir, skel_model):
    workdir = project["workdir"]
    if not (workdir / "releases" / "syn" / "round-2").exists():
        test_two_rounds_reduce_label_error_and_never_accept_worse(project, models_dir, skel_model)
    with LabelStore(workdir / "labels.h5") as store:
        key = str(store.rows_of_round(2)["sample_key"][0])
        history = store.history(key, "orig")
    versions = [h for h in history if h["producer"] != "manual"]
    assert [h["round"] for h in versions] == [0, 1, 2], history
    ids = {h["label_id"] for h in history}
    assert versions[1]["parent_label_id"] in ids and versions[2]["parent_label_id"] in ids
    # Round 2 challenged whatever was current after round 1: the round-1 version if it was accepted.
    expected = versions[1]["label_id"] if versions[1]["accepted"] else versions[1]["parent_label_id"]
    assert versions[2]["parent_label_id"] == expected


def test_rerunning_a_round_changes_nothing(project, models_dir, skel_model):
    workdir = project["workdir"]
    if not (workdir / "releases" / "syn" / "round-1").exists():
        refine_round(workdir, "syn", 0, project["skelify"], batch_size=16)
    manifest = (workdir / "releases" / "syn" / "round-1" / "manifest.json").read_bytes()
    with LabelStore(workdir / "labels.h5") as store:
        n_rows = len(store)
    refine_round(workdir, "syn", 0, project["skelify"], batch_size=16)
    assert (workdir / "releases" / "syn" / "round-1" / "manifest.json").read_bytes() == manifest
    with LabelStore(workdir / "labels.h5") as store:
        assert len(store) == n_rows


def test_rounds_and_diff_commands(project, models_dir, skel_model):
    from typer.testing import CliRunner

    from skelpgt.pipelines.cli import app

    workdir = project["workdir"]
    if not (workdir / "releases" / "syn" / "round-1").exists():
        refine_round(workdir, "syn", 0, project["skelify"], batch_size=16)
    runner = CliRunner()
    table = runner.invoke(app, ["rounds", str(workdir), "--release", "syn"])
    assert table.exit_code == 0, table.output
    assert "| 0 |" in table.output and "| 1 | 0 |" in table.output
    diff = runner.invoke(app, ["diff", str(workdir), "0", "1"])
    assert diff.exit_code == 0 and "differ between round 0 and round 1" in diff.output
    with LabelStore(workdir / "labels.h5") as store:
        changed = int(store.rows_of_round(1)["accepted"].sum())
    assert f"{changed} label(s) differ" in diff.output
