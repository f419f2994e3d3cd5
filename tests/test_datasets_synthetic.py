"""Synthetic dataset (rendered SMPL people in HMR2.0 tars), the label sheet of `skelpgt show`, and the data CLI."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from skelpgt.datasets import LabelStore, OutSample, Quarantine, ReadCounts, RoundFacts, make_person, read_hmr2_tar, read_source, write_release
from skelpgt.datasets.synthetic import iter_synthetic_images, make_synthetic_dataset
from skelpgt.pipelines.cli import app

N_IMAGES, SIZE, SEED = 6, 128, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory, models_dir):
    out = tmp_path_factory.mktemp("synth")
    info = make_synthetic_dataset(out, N_IMAGES, seed=SEED, models_dir=models_dir, image_size=SIZE, shard_size=4)
    return info


@pytest.fixture(scope="module")
def records(synth):
    q, counts = Quarantine(), ReadCounts()
    recs = list(read_source(synth.out_dir / "shards", q, counts))
    assert len(q) == 0 and counts.n_quarantined == 0
    return recs


def _files(info):
    return {p.relative_to(info.out_dir).as_posix(): p.read_bytes() for p in sorted(info.out_dir.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(synth, tmp_path, models_dir):
    again = make_synthetic_dataset(tmp_path / "a", N_IMAGES, seed=SEED, models_dir=models_dir, image_size=SIZE, shard_size=4)
    assert _files(again) == _files(synth)
    assert sorted(_files(synth)) == ["dataset.json", "shards/synthetic-000000.tar", "shards/synthetic-000001.tar", "truth.npz"]
    other = make_synthetic_dataset(tmp_path / "b", 2, seed=SEED + 1, models_dir=models_dir, image_size=SIZE, shard_size=4)
    assert other.shards[0].read_bytes() != synth.shards[0].read_bytes()


def test_tars_read_cleanly_with_the_right_counts(synth, records):
    meta = json.loads(synth.meta.read_text())
    assert meta["n_images"] == N_IMAGES and meta["n_persons"] == synth.n_persons == len(records)
    assert meta["seed"] == SEED and meta["image_size"] == SIZE and len(meta["models_digest"]) == 64
    per_image = {}
    for r in records:
        per_image.setdefault(r.image_key, []).append(r.person_index)
    assert sorted(per_image) == [f"synthetic/{SEED}-{i:06d}" for i in range(N_IMAGES)]
    assert all(idx == list(range(len(idx))) and 1 <= len(idx) <= 3 for idx in per_image.values())
    # the first shard alone: 4 images
    q = Quarantine()
    assert len({r.image_key for r in read_hmr2_tar(synth.shards[0], q)}) == 4 and len(q) == 0
    r = records[0]
    assert r.image_ext == "jpg" and Image.open(io.BytesIO(r.image)).size == (SIZE, SIZE)
    assert r.keypoints_2d.shape == (44, 3) and r.keypoints_3d.shape == (44, 4) and r.extra_info == {}
    assert r.body_pose.dtype == np.float32 and r.scale.shape == (2,)


def test_keypoints_2d_are_the_projection_of_keypoints_3d(synth, records):
    meta = json.loads(synth.meta.read_text())
    f, (cx, cy) = meta["camera"]["focal_px"], meta["camera"]["principal_point_px"]
    assert f == pytest.approx(1.2 * SIZE) and (cx, cy) == ((SIZE - 1) / 2, (SIZE - 1) / 2)
    n_out = 0
    for r in records:
        xyz = r.keypoints_3d[:, :3].astype(np.float64)
        uv = f * xyz[:, :2] / xyz[:, 2:] + [cx, cy]
        np.testing.assert_allclose(r.keypoints_2d[:, :2], uv, atol=1e-3)
        assert (r.keypoints_3d[:, 3] == 1).all() and (xyz[:, 2] > 1.5).all()
        inside = (uv >= -0.5).all(1) & (uv <= SIZE - 0.5).all(1)
        conf = r.keypoints_2d[:, 2]
        assert set(np.unique(conf)) <= {0.0, 1.0} and not conf[~inside].any()
        assert conf.sum() >= 0.6 * 44  # placement keeps people mostly in view
        n_out += int((~inside).sum())
    assert n_out >= 0


def test_truth_matches_labels_and_keypoints(synth, records, models_dir):
    from skelpgt.fitting.keypoints import KeypointRegressor
    from skelpgt.fitting.smpl import load_smpl, smpl_forward

    with np.load(synth.truth) as t:
        truth = {k: t[k] for k in t.files}
    assert sorted(truth["key"].tolist()) == sorted(r.key for r in records)
    row = {k: i for i, k in enumerate(truth["key"].tolist())}
    idx = np.array([row[r.key] for r in records])
    for r, i in zip(records, idx):
        assert r.has_smpl == bool(truth["labelled"][i]) == r.has_betas
        if r.has_smpl:
            np.testing.assert_array_equal(r.body_pose, truth["pose"][i])
            np.testing.assert_array_equal(r.betas, truth["betas"][i])
        else:
            assert not r.body_pose.any() and not r.betas.any()
    # the stored pose/betas/trans rebuild the 3D keypoints in the camera frame
    smpl = load_smpl(models_dir, "neutral")
    reg = KeypointRegressor.from_models_dir(models_dir)
    with torch.no_grad():
        verts, _ = smpl_forward(smpl, torch.from_numpy(truth["pose"][idx]), torch.from_numpy(truth["betas"][idx]), torch.from_numpy(truth["trans"][idx]))
        kp = reg(verts).numpy()
    np.testing.assert_allclose(kp, np.stack([r.keypoints_3d[:, :3] for r in records]), atol=1e-4)
    # upright people: SMPL's up axis (+y) points up in the image (camera −y), i.e. ~180° about x
    from scipy.spatial.transform import Rotation

    up = Rotation.from_rotvec(truth["pose"][:, :3].astype(np.float64)).apply([0.0, 1.0, 0.0])
    assert (up[:, 1] < -0.8).all()


def test_box_contains_the_confident_keypoints(records):
    for r in records:
        half = r.scale * 200 / 2
        vis = r.keypoints_2d[:, 2] > 0
        assert (np.abs(r.keypoints_2d[vis, :2] - r.center) <= half + 1e-3).all()
        assert 10 < r.scale.max() * 200 < 3 * SIZE


def test_images_show_shaded_people(synth, models_dir):
    imgs = list(iter_synthetic_images(N_IMAGES, seed=SEED, models_dir=models_dir, image_size=SIZE))
    tar_images = {}
    for p in synth.shards:
        for r in read_hmr2_tar(p):
            tar_images[r.image_key] = r.image
    assert [i.key for i in imgs] == sorted(tar_images) and all(tar_images[i.key] == i.jpeg for i in imgs)
    # an image does not depend on the range it is rendered in (parallel generation gives the same data)
    assert [i.jpeg for i in iter_synthetic_images(2, seed=SEED, models_dir=models_dir, image_size=SIZE, start=3)] == [i.jpeg for i in imgs[3:5]]
    for img in imgs:
        rgb = np.asarray(Image.open(io.BytesIO(img.jpeg)).convert("RGB"), np.float64) / 255
        assert img.mask.shape == (SIZE, SIZE) and rgb.std() > 0.03
        body, bg = rgb[img.mask >= 0], rgb[img.mask < 0]
        assert len(body) > 50 and len(bg) > 50
        for i, (person, truth) in enumerate(zip(img.persons, img.truth)):
            assert (img.mask == i).sum() > 20
            x, y = np.rint(person["keypoints_2d"][39, :2]).astype(int)
            if not (0 <= x < SIZE and 0 <= y < SIZE):
                continue
            who = img.mask[y, x]
            assert who >= 0, "the pelvis projects onto a body"
            # Lambert shading scales all channels alike: a body pixel keeps its albedo's chromaticity
            patch = rgb[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].reshape(-1, 3).mean(0)
            palette = img.truth[who]["palette"]
            chroma = lambda c: c / c.sum(-1, keepdims=True)  # noqa: E731
            assert np.abs(chroma(palette) - chroma(patch)).max(-1).min() < 0.08


def test_some_persons_are_unlabelled(models_dir, monkeypatch):
    import skelpgt.datasets.synthetic as syn

    monkeypatch.setattr(syn, "P_UNLABELLED", 0.5)
    persons = [p for img in iter_synthetic_images(4, seed=9, models_dir=models_dir, image_size=64) for p in img.persons]
    flags = [float(p["has_body_pose"]) for p in persons]
    assert 0.0 in flags and 1.0 in flags
    for p in persons:
        if not p["has_body_pose"]:
            assert p["has_betas"] == 0 and not p["body_pose"].any() and not p["betas"].any()


@pytest.fixture(scope="module")
def release(synth, records, tmp_path_factory):
    """Release round 0 of the synthetic records with random SKEL labels (one person unlabelled) + its label store."""
    wd = tmp_path_factory.mktemp("wd")
    rng = np.random.default_rng(0)
    upright = np.zeros(46)
    upright[1] = np.pi  # SKEL pelvis list: turns SMPL's y-up body upright in the y-down camera frame
    with LabelStore(wd / "labels.h5", "a") as st:
        rows = [
            {"sample_key": r.key, "side": side, "round": 0, "producer": "convert", "poses": upright + rng.normal(0, 0.1, 46),
             "betas": rng.normal(0, 1, 10), "trans": np.zeros(3), "pve_max": 0.03, "pve_mean": 0.01, "kp2d_err": 0.001}
            for r in records[1:] for side in ("orig", "flip")
        ]  # fmt: skip
        st.set_current(0, st.append(rows))
        labels = st.skel_labels(0)
    by_img = {}
    for r in records:
        by_img.setdefault(r.image_key, []).append(r)
    samples = [
        OutSample(k, rs[0].image, rs[0].image_ext, [make_person(r, *labels.get(r.key, (None, None)), round=0, release="syn") for r in rs])
        for k, rs in by_img.items()
    ]
    write_release(wd, RoundFacts("syn", 0, n_in=len(records)), samples, samples_per_shard=4, fsync=False)
    return wd, wd / "releases" / "syn"


def test_show_draws_a_label_sheet(release, records, tmp_path, models_dir):
    wd, rel = release
    runner = CliRunner()
    key = records[1].image_key  # an image key shows every person of the image
    out = tmp_path / "sheet.png"
    res = runner.invoke(app, ["show", key, "--release", str(rel), "--out", str(out), "--models-dir", str(models_dir)])
    assert res.exit_code == 0, res.output
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    zoom = 3  # 128 px images are shown at 3× (panels ≥ 320 px tall)
    assert sheet.shape[0] == SIZE * zoom + 14 and sheet.shape[1] == 3 * SIZE * zoom + 4
    image = np.asarray(Image.open(io.BytesIO(records[1].image)).convert("RGB").resize((SIZE * zoom, SIZE * zoom), Image.BILINEAR)).astype(int)
    orig_panel = sheet[14:, SIZE * zoom + 2 : 2 * SIZE * zoom + 2]
    flip_panel = sheet[14:, 2 * SIZE * zoom + 4 :]
    assert (np.abs(orig_panel - image).sum(-1) > 30).mean() > 0.002  # the body is drawn over the image
    assert (np.abs(flip_panel - image[:, ::-1]).sum(-1) > 30).mean() > 0.002
    # a person key (cropped to the person), an unlabelled person, a source tar; a missing key fails
    for args in (
        [records[1].key, "--release", str(rel)],
        [records[0].key, "--release", str(rel / "round-0")],
        [records[0].key, "--source", str(records[0].source_file)],
    ):
        res = runner.invoke(app, ["show", *args, "--out", str(tmp_path / "x.png"), "--models-dir", str(models_dir)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["show", "nope/0_0", "--release", str(rel), "--out", str(tmp_path / "y.png")])
    assert res.exit_code == 1 and not (tmp_path / "y.png").exists()


def test_cli_inspect_verify_lineage(release, records, tmp_path):
    wd, rel = release
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(rel)])
    assert res.exit_code == 0 and "# release syn round 0" in res.output and "orig_poses" in res.output
    res = runner.invoke(app, ["inspect", str(records[0].source_file)])
    assert res.exit_code == 0 and "HMR2.0-style SMPL shard" in res.output
    res = runner.invoke(app, ["verify", str(rel), "--store", str(wd / "labels.h5")])
    assert res.exit_code == 0 and "**OK**" in res.output
    res = runner.invoke(app, ["lineage", records[1].key, "--workdir", str(wd)])
    assert res.exit_code == 0 and f"# lineage of {records[1].key}" in res.output and "convert" in res.output
    assert runner.invoke(app, ["lineage", records[1].key, "--workdir", str(tmp_path)]).exit_code == 2  # bad input
    broken = tmp_path / "round-0"
    shutil.copytree(rel / "round-0", broken)  # the release fixture stays intact for other tests
    shard = sorted(broken.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(broken)])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output


def test_cli_make_synthetic(tmp_path, models_dir):
    args = ["data", "make-synthetic", str(tmp_path / "d"), "--n", "2", "--image-size", "64", "--seed", "1", "--models-dir", str(models_dir)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "wrote 2 images" in res.output and (tmp_path / "d" / "shards" / "synthetic-000000.tar").is_file()
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["n_images"] == 2 and meta["seed"] == 1 and meta["image_size"] == 64


def test_rasterizer_depth_test_and_culling(models_dir):
    from skelpgt.datasets.render import PinholeCamera, Raster, rasterize
    from skelpgt.fitting.smpl import load_smpl

    cam = PinholeCamera.centred(64, 64, 80.0)
    tri = np.array([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0], [0.0, 0.5, 2.0]])
    away, facing = np.array([[0, 1, 2]]), np.array([[0, 2, 1]])  # counter-clockwise seen from outside
    assert not rasterize(Raster.empty(64, 64), tri, away, np.ones((3, 3)), cam).mask.any()
    hit = rasterize(Raster.empty(64, 64), tri, facing, np.ones((3, 3)), cam).mask
    assert abs(hit.sum() - 0.5 * (0.5 * 80 / 2) ** 2) < 20  # area of the projected triangle, px²
    # a closed body: culling back faces changes nothing the depth test would have kept
    smpl = load_smpl(models_dir, "neutral")
    v = smpl.v_template.double().numpy() * [1, -1, -1] + [0, 0, 3]  # upright and facing the camera
    f = np.asarray(smpl.faces, np.int64)
    col = np.random.default_rng(0).uniform(0, 1, (len(v), 3))
    a = rasterize(Raster.empty(64, 64), v, f, col, cam)
    b = rasterize(Raster.empty(64, 64), v, f, col, cam, cull_backfaces=False)
    assert a.mask.sum() > 300 and (a.mask != b.mask).mean() < 0.01
    both = a.mask & b.mask
    assert np.abs(a.depth[both] - b.depth[both]).max() < 0.02
    # nearer meshes win: the same body 1 m closer hides this one where they overlap
    rasterize(a, v - [0, 0, 1], f, np.zeros((len(v), 3)), cam, mesh_ids=1)
    assert (a.mesh_id == 1).sum() > 300 and (a.depth[a.mesh_id == 1] < 2.5).all()
