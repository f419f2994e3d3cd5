"""Releases: round folders with manifest + quarantine, consumer API, verify, inspect; the whole data path end to end."""

import json
import shutil

import numpy as np
import pytest

from skelpgt.datasets import (
    LabelStore,
    OutSample,
    Quarantine,
    ReadCounts,
    RoundFacts,
    inspect_path,
    list_rounds,
    make_person,
    open_release,
    read_hmr2_tar,
    read_manifest,
    release_quarantine,
    verify_release,
    write_release,
)
from skelpgt.datasets.testing import hmr2_members, hmr2_person, make_hmr2_tar, tiny_jpeg, write_tar


def _build(workdir, rng, *, name="demo", round=0, parent=None, samples_per_shard=4):
    """Source tar (with one bad sample) -> label store round `round` -> release round; returns (manifest, store path)."""
    src = workdir / "src.tar"
    if not src.exists():
        make_hmr2_tar(workdir / "good.tar", 9, rng)
        bad = hmr2_person(rng)
        bad["keypoints_2d"] = bad["keypoints_2d"][:43]
        write_tar(workdir / "bad.tar", hmr2_members("bad/0", tiny_jpeg(rng), [bad]))
        shutil.move(workdir / "good.tar", src)
    q, counts = Quarantine(), ReadCounts()
    recs = list(read_hmr2_tar(src, q, counts)) + list(read_hmr2_tar(workdir / "bad.tar", q, counts))
    store = workdir / "labels.h5"
    lrng = np.random.default_rng(100 + round)
    with LabelStore(store, "a") as st:
        labelled = [r for r in recs if r.has_smpl]
        rows = []
        for r in labelled:
            for side in ("orig", "flip"):
                rows.append({
                    "sample_key": r.key, "side": side, "round": round, "producer": "convert" if round == 0 else "skelify",
                    "poses": lrng.normal(0, 0.3, 46), "betas": lrng.normal(0, 1, 10), "trans": lrng.normal(0, 1, 3),
                    "pve_max": float(lrng.uniform(0.02, 0.09)), "pve_mean": 0.01, "kp2d_err": 0.001, "config_digest": f"cfg{round}",
                })  # fmt: skip
        ids = st.append(rows)
        st.set_current(round, ids)
        if parent is not None:
            st.carry_forward(parent, round)
    labels = LabelStore(store).skel_labels(round)
    by_img: dict = {}
    for r in recs:
        by_img.setdefault(r.image_key, []).append(r)
    samples = [
        OutSample(k, rs[0].image, rs[0].image_ext, [make_person(r, *labels.get(r.key, (None, None)), round=round, release=name) for r in rs])
        for k, rs in by_img.items()
    ]
    facts = RoundFacts(name, round, parent, {"method": "fast", "round": round}, "0.1.0", q, counts.n_in)
    m = write_release(workdir, facts, samples, samples_per_shard=samples_per_shard)
    return m, store, recs


@pytest.fixture()
def built(tmp_path):
    m, store, recs = _build(tmp_path, np.random.default_rng(0))
    return tmp_path, m, store, recs


def test_release_layout_and_manifest(built):
    wd, m, store, recs = built
    rdir = wd / "releases" / "demo" / "round-0"
    assert sorted(p.name for p in rdir.iterdir()) == ["demo-000000.tar", "demo-000001.tar", "demo-000002.tar", "manifest.json", "quarantine.jsonl"]
    assert read_manifest(wd / "releases" / "demo") == m == json.loads((rdir / "manifest.json").read_text())
    c = m["counts"]
    assert c["persons"] == len(recs) and c["quarantined"] == 1 and c["in"] == len(recs) + 1 and c["samples"] == 9
    assert c["labelled"] == sum(r.has_smpl for r in recs) and c["unlabelled"] == c["persons"] - c["labelled"]
    assert m["quarantine"]["by_kind"] == {"shape": 1} and m["parent_round"] is None and m["code_version"] == "0.1.0"
    (e,) = release_quarantine(rdir)
    assert (e.key, e.field, e.kind) == ("bad/0_0", "keypoints_2d", "shape")
    text = (rdir / "manifest.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text)) and "time" not in text
    assert not (wd / "releases" / "demo" / "round-0.partial").exists()


def test_rerun_gives_identical_release(tmp_path):
    ma = _build(tmp_path, np.random.default_rng(0))[0]
    first = tmp_path / "first"
    shutil.copytree(tmp_path / "releases/demo/round-0", first)
    # from scratch (new store, new release folder): the same bytes
    shutil.rmtree(tmp_path / "releases")
    (tmp_path / "labels.h5").unlink()
    assert _build(tmp_path, np.random.default_rng(0))[0] == ma
    for name in ("manifest.json", "quarantine.jsonl", *[s["name"] for s in ma["shards"]]):
        assert (first / name).read_bytes() == (tmp_path / "releases/demo/round-0" / name).read_bytes()
    # resume in the same workdir: the store dedups, the round is rewritten identically (no error)
    n = len(LabelStore(tmp_path / "labels.h5"))
    assert _build(tmp_path, np.random.default_rng(0))[0] == ma
    assert len(LabelStore(tmp_path / "labels.h5")) == n
    # a different label content gives a different manifest and is refused without overwrite
    with pytest.raises(FileExistsError):
        _build(tmp_path, np.random.default_rng(0), round=0, samples_per_shard=5)


def test_open_release_yields_decoded_samples(built):
    wd, m, store, recs = built
    imgs = list(open_release(wd / "releases" / "demo"))
    assert len(imgs) == 9 and sum(len(s["persons"]) for s in imgs) == len(recs)
    s = imgs[0]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (24, 32, 3)
    assert s["round"] == 0 and s["release"] == "demo"
    p = s["persons"][0]
    assert p["orig_poses"].shape == (46,) and "orig_label_id" in p and p["person_index"] == 0
    persons = list(open_release(wd / "releases" / "demo", round=0, per_person=True))
    assert [p["__key__"] for p in persons] == [r.key for r in recs]
    assert persons[0]["img_name"] == recs[0].image_key and persons[0]["image"].shape == (24, 32, 3)
    good = list(open_release(wd / "releases" / "demo", per_person=True, min_quality=0.06))
    assert 0 < len(good) < len(persons)
    assert all(p["orig_pve_max"] < 0.06 for p in good)
    assert len(good) == sum(1 for p in persons if np.isfinite(p["orig_pve_max"]) and p["orig_pve_max"] < 0.06)


def test_train_val_split_is_disjoint_and_complete(built):
    wd, m, store, recs = built
    rel = wd / "releases" / "demo"
    train = [s["__key__"] for s in open_release(rel, split="train", val_fraction=0.3)]
    val = [s["__key__"] for s in open_release(rel, split="val", val_fraction=0.3)]
    assert val and train and not set(train) & set(val) and len(train) + len(val) == 9
    assert val == [s["__key__"] for s in open_release(rel, split="val", val_fraction=0.3)]  # stable
    with pytest.raises(ValueError):
        open_release(rel, split="test")


def test_latest_round_and_lineage_across_rounds(built):
    wd, m0, store, recs = built
    m1 = _build(wd, np.random.default_rng(0), round=1, parent=0)[0]
    assert list_rounds(wd / "releases" / "demo") == [0, 1] and m1["parent_round"] == 0
    assert m1["label_digest"] != m0["label_digest"]
    s = next(iter(open_release(wd / "releases" / "demo")))
    assert s["round"] == 1
    s0 = next(iter(open_release(wd / "releases" / "demo", round=0)))
    assert s0["round"] == 0


def test_verify_ok_and_detects_a_flipped_byte(built):
    wd, m, store, recs = built
    rdir = wd / "releases" / "demo" / "round-0"
    rep = verify_release(rdir, store=store)
    assert rep.ok, rep.errors
    assert rep.checked["labels checked against store"] == 2 * m["counts"]["labelled"]
    shard = rdir / m["shards"][1]["name"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    rep = verify_release(rdir)
    assert not rep.ok
    assert any("sha256 mismatch" in e and m["shards"][1]["name"] in e for e in rep.errors)
    assert "FAILED" in rep.to_markdown()


def test_verify_detects_missing_store_labels_and_bad_counts(built, tmp_path_factory):
    wd, m, store, recs = built
    rdir = wd / "releases" / "demo" / "round-0"
    empty = tmp_path_factory.mktemp("other") / "labels.h5"
    LabelStore(empty, "a").close()
    rep = verify_release(rdir, store=empty)
    assert not rep.ok and any("not in the store" in e for e in rep.errors)
    (rdir / "quarantine.jsonl").write_text("")
    rep = verify_release(rdir)
    assert any("quarantine.jsonl" in e for e in rep.errors)
    (rdir / "extra-000000.tar").write_bytes(b"")
    assert any("not in the manifest" in e for e in verify_release(rdir).errors)


def test_inspect_markdown(built):
    wd, m, store, recs = built
    text = inspect_path(wd / "releases" / "demo")
    assert "# release demo round 0" in text and "| orig_poses | ndarray float32 (46,) |" in text
    assert f"| {m['counts']['in']} | 9 | {len(recs)} |" in text and "demo-000002.tar" in text
    shard_text = inspect_path(wd / "releases" / "demo" / "round-0" / "demo-000000.tar")
    assert "skelpgt SKEL shard" in shard_text and "## Examples" in shard_text
    src_text = inspect_path(wd / "src.tar")
    assert "HMR2.0-style SMPL shard" in src_text and "| body_pose | ndarray float32 (72,) |" in src_text
