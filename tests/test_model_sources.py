"""Training sources beyond our releases: HSMR-v1 tar sets without a manifest, HSMR's validity decisions, mixing with counts."""

import itertools
import json
import logging

import numpy as np
import pytest
from skelpgt.model.data import DataConfig, count_persons, drop_reason, person_stream, side_label
from skelpgt.model.sources import is_release, open_source_persons, tar_urls
from skelpgt.model.testing import make_hsmr_tars, make_skel_release
from skelpgt.model.train import TrainConfig, train

NAN = float("nan")
# personid → field overrides, each hitting one rule of HSMR's hsmr_v1 loader (hsmr-pipeline.md §2.1)
CRAFTED = {
    1: {"orig_pve_max": 0.07, "flip_pve_max": 0.07},  # stage 8: pve too large
    2: {"orig_pve_max": NAN, "flip_pve_max": NAN},  # stage 8: failed fit
    3: {"orig_betas": np.full(10, 3.5, np.float32), "flip_betas": np.full(10, -3.5, np.float32)},  # stage 10: |β| > 3
    4: {"orig_poses": np.full(46, NAN, np.float32)},  # stages 6 + 8: NaN pose zeroed, then valid (HSMR quirk)
    5: {"keypoints_2d": np.concatenate((np.ones((44, 2)), np.r_[[1.0] * 4, [0.29] * 40][:, None]), 1).astype(np.float32)},  # stage 12
    6: {"extra_info": {"fitting_loss": np.array({"reprojection_loss": 40000.0}, dtype=object)}},  # stage 14: dropped
    7: {"extra_info": {}, "orig_betas": np.full(10, 3.0, np.float32), "orig_pve_max": 0.0599},  # no fitting loss: kept; |β| = 3 valid
    8: {"orig_pve_max": 0.06},  # strict <: invalid; its flip side stays valid
}
# personid → (dropped reason or None, orig valid, flip valid), as HSMR decides
EXPECTED = {0: (None, True, True), 1: (None, False, False), 2: (None, False, False), 3: (None, False, False), 4: (None, True, True),
            5: ("few_keypoints", None, None), 6: ("reprojection", None, None), 7: (None, True, True), 8: (None, False, True),
            9: (None, True, True)}  # fmt: skip


@pytest.fixture(scope="module")
def tars(models_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hsmr") / "aic-tars"
    paths = make_hsmr_tars(d, models_dir, [2, 1, 2, 1, 2, 2], seed=7, overrides=CRAFTED)
    return d, paths


def test_tar_specs(tars):
    d, paths = tars
    want = [str(p) for p in paths]
    assert len(want) == 3 and not is_release(d)
    assert tar_urls(f"{d}/{{000000..000002}}.tar") == want  # HSMR config style
    assert tar_urls(f"{d}/*.tar") == want and tar_urls(d) == want
    assert tar_urls(f"{d}/000000.tar::{d}/{{000001..000002}}.tar") == want
    with pytest.raises(FileNotFoundError, match="000003.tar does not exist"):
        tar_urls(f"{d}/{{000000..000003}}.tar")


def test_hsmr_validity_decisions(tars):
    d, _ = tars
    cfg = DataConfig(release=f"{d}/{{000000..000002}}.tar", split=None)
    seen = {}
    for s in open_source_persons(cfg.release, split=None):
        assert "orig_label_id" not in s and "round" not in s  # none of our fields, and it reads
        why = drop_reason(s, cfg)
        sides = (None, None) if why else tuple(side_label(s, side, cfg)[0] for side in ("orig", "flip"))
        seen[int(s["personid"])] = (why, *sides)
        if s["personid"] == 4:
            assert side_label(s, "orig", cfg)[3] == "valid_nan_zeroed" and not side_label(s, "orig", cfg)[1].any()
        if s["personid"] == 3:
            assert side_label(s, "orig", cfg)[3] == "betas"
    assert seen == EXPECTED
    c = count_persons(cfg)
    assert c == {"persons": 10, "kept": 8, "dropped_few_keypoints": 1, "dropped_reprojection": 1,
                 "orig_valid": 4, "orig_invalid_pve": 3, "orig_invalid_betas": 1, "orig_nan_zeroed_valid": 1,
                 "flip_valid": 5, "flip_invalid_pve": 2, "flip_invalid_betas": 1, "flip_nan_zeroed_valid": 0}  # fmt: skip


def test_missing_pve_max_is_a_clear_error(models_dir, tmp_path):
    make_hsmr_tars(tmp_path / "bad", models_dir, [1], seed=1, overrides={0: {"orig_pve_max": None}})
    cfg = DataConfig(release=str(tmp_path / "bad"), split=None)
    with pytest.raises(KeyError, match=r"000000.tar: person 'aic-train/[0-9a-f]+_0' has no numeric 'orig_pve_max'"):
        count_persons(cfg)


def test_train_on_release_mixed_with_hsmr_tars(tars, models_dir, tmp_path, caplog):
    d, _ = tars
    rel = make_skel_release(tmp_path / "wd", models_dir, n_images=6, seed=2, p_invalid=0.0)
    spec = f"{d}/{{000000..000002}}.tar"
    data = DataConfig(split=None, batch_size=2, seed=1, mix=((str(rel), 1.0), (spec, 1.0)))
    sources = {s["source_release"] for _, _, s in itertools.islice(person_stream(data), 12)}
    assert sources == {str(rel), spec}
    cfg = TrainConfig(data=data, out_dir=str(tmp_path / "run"), models_dir=str(models_dir), arch="vit-micro", steps=2, lr=1e-4, log_every=1)
    with caplog.at_level(logging.INFO, logger="skelpgt.model.train"):
        r = train(cfg)
    assert any(m.startswith(f"source {spec}: ") and '"kept": 8' in m for m in caplog.messages)
    assert r["step"] == 2 and all(np.isfinite(r["losses"]))
    assert r["sources"][spec] == dict(count_persons(DataConfig(release=spec, split=None)), weight=1.0)
    assert r["sources"][spec]["kept"] == 8 and r["sources"][str(rel)]["persons"] == 6 and r["sources"][str(rel)]["orig_valid"] == 6
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["sources"] == r["sources"]


def test_flow_artifact_lists_source_counts():
    from skelpgt.pipelines.train import source_table

    md = source_table({"/r/round-0": {"persons": 6, "kept": 6, "weight": 1.0}, "/t/{0..2}.tar": {"persons": 10, "kept": 8, "weight": 0.5}})
    assert "| source | persons | kept | weight |" in md and "| `/t/{0..2}.tar` | 10 | 8 | 0.5 |" in md
    assert source_table(None) == ""
