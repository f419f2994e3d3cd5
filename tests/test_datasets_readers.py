"""Readers: HMR2.0-style tars and npz files -> PersonRecords; bad units -> quarantine with precise reasons."""

import os
import pickle

import numpy as np
import pytest

from skelpgt.datasets import Quarantine, ReadCounts, read_hmr2_tar, read_npz, read_source
from skelpgt.datasets.testing import hmr2_members, hmr2_person, make_hmr2_tar, tiny_jpeg, write_tar


class _Evil:
    """A pickle that would run a shell command if loaded with plain pickle."""

    def __reduce__(self):
        return (os.system, ("true",))


def _read(path):
    q, c = Quarantine(), ReadCounts()
    recs = list(read_hmr2_tar(path, q, c))
    assert c.n_good == len(recs)
    assert c.n_in == c.n_good + c.n_quarantined == len(recs) + len(q)
    return recs, q


def test_good_tar_yields_one_record_per_person(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "a.tar"
    persons = [hmr2_person(rng), hmr2_person(rng, has_smpl=False)]
    img = tiny_jpeg(rng)
    png = tiny_jpeg(rng, fmt="PNG")
    write_tar(p, hmr2_members("coco/abc", img, persons) + hmr2_members("coco/def", png, [hmr2_person(rng)], "png"))
    recs, q = _read(p)
    assert len(q) == 0
    assert [r.key for r in recs] == ["coco/abc_0", "coco/abc_1", "coco/def_0"]
    r0, r1 = recs[0], recs[1]
    assert r0.image == img and r0.image_ext == "jpg" and r0.image_key == "coco/abc" and r0.person_index == 0
    assert r0.source_file == os.fspath(p)
    np.testing.assert_array_equal(r0.keypoints_2d, persons[0]["keypoints_2d"])
    np.testing.assert_array_equal(r0.body_pose, persons[0]["body_pose"])
    assert r0.keypoints_2d.dtype == np.float32 and r0.keypoints_2d.shape == (44, 3)
    assert r0.has_smpl and not r1.has_smpl  # unlabelled person still a good record
    assert not r1.body_pose.any() and not r1.betas.any()
    assert r0.extra_info["fitting_loss"].item() == persons[0]["extra_info"]["fitting_loss"].item()
    assert r0.personid == 0 and r1.personid == 1
    assert recs[2].image_ext == "png" and recs[2].image == png


def _bad_tar(tmp_path, rng):
    """Four good images plus one of each defect the issue names; returns path and counts."""
    good = [hmr2_person(rng) for _ in range(2)]
    kp43 = hmr2_person(rng)
    kp43["keypoints_2d"] = kp43["keypoints_2d"][:43]
    nanpose = hmr2_person(rng)
    nanpose["body_pose"] = nanpose["body_pose"].copy()
    nanpose["body_pose"][5] = np.nan
    members = []
    members += hmr2_members("s/good0", tiny_jpeg(rng), good)  # 2 persons
    members += [("s/notlist.jpg", tiny_jpeg(rng)), ("s/notlist.data.pyd", pickle.dumps({"keypoints_2d": 1}))]
    members += hmr2_members("s/kp43", tiny_jpeg(rng), [hmr2_person(rng), kp43])  # person 0 good, 1 bad
    members += hmr2_members("s/nan", tiny_jpeg(rng), [nanpose])
    members += hmr2_members("s/good1", tiny_jpeg(rng), [hmr2_person(rng)])
    p = tmp_path / "bad.tar"
    write_tar(p, members)
    return p


def test_bad_samples_are_quarantined_with_reasons_and_others_pass(tmp_path):
    rng = np.random.default_rng(1)
    p = _bad_tar(tmp_path, rng)
    recs, q = _read(p)
    assert [r.key for r in recs] == ["s/good0_0", "s/good0_1", "s/kp43_0", "s/good1_0"]
    by_key = {e.key: e for e in q}
    assert set(by_key) == {"s/notlist", "s/kp43_1", "s/nan_0"}
    e = by_key["s/notlist"]
    assert (e.field, e.kind) == ("data.pyd", "type") and "list" in e.reason and "dict" in e.reason
    e = by_key["s/kp43_1"]
    assert (e.field, e.kind) == ("keypoints_2d", "shape") and "(43, 3)" in e.reason and "(44, 3)" in e.reason
    e = by_key["s/nan_0"]
    assert (e.field, e.kind) == ("body_pose", "nan") and "1 NaN" in e.reason
    assert all(x.file == os.fspath(p) for x in q)


def test_truncated_tar_keeps_complete_samples(tmp_path):
    rng = np.random.default_rng(2)
    p = tmp_path / "t.tar"
    make_hmr2_tar(p, 6, rng, max_persons=1)
    full, _ = _read(p)
    data = p.read_bytes()
    # cut inside the data of the last image member
    last_jpg = data.rfind(b"\xff\xd8\xff")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: last_jpg + 100])
    recs, q = _read(cut)
    assert [r.key for r in recs] == [r.key for r in full[:5]]
    assert len(q) == 1
    (e,) = q
    assert e.kind == "truncated" and e.key == "img/000005" and e.field.endswith(".jpg")
    # cut exactly at a header boundary: tarfile would stop silently; we must still report it
    cut2 = tmp_path / "cut2.tar"
    cut2.write_bytes(data[:1024])
    recs2, q2 = _read(cut2)
    assert recs2 == [] and len(q2) == 1 and q2.entries[0].kind == "truncated"


@pytest.mark.parametrize(
    "mutate, field, kind",
    [
        (lambda d: d.pop("center"), "center", "missing"),
        (lambda d: d.update(scale=[1.0, 2.0, 3.0]), "scale", "shape"),
        (lambda d: d.update(keypoints_3d=np.full((44, 4), np.inf)), "keypoints_3d", "inf"),
        (lambda d: d.pop("body_pose"), "body_pose", "missing"),  # has_body_pose=1 but no pose
        (lambda d: d.update(extra_info=[1, 2]), "extra_info", "type"),
        (lambda d: d.update(betas=np.array(["a"] * 10)), "betas", "type"),
    ],
)
def test_field_defects(tmp_path, mutate, field, kind):
    rng = np.random.default_rng(3)
    d = hmr2_person(rng)
    mutate(d)
    p = tmp_path / "f.tar"
    write_tar(p, hmr2_members("x/y", tiny_jpeg(rng), [hmr2_person(rng), d]))
    recs, q = _read(p)
    assert [r.key for r in recs] == ["x/y_0"]
    assert [(e.key, e.field, e.kind) for e in q] == [("x/y_1", field, kind)]


def test_sample_level_defects(tmp_path):
    rng = np.random.default_rng(4)
    members = [("a/only_image.jpg", tiny_jpeg(rng))]
    members += [("a/only_pyd.data.pyd", pickle.dumps([hmr2_person(rng)]))]
    members += [("a/badjpg.jpg", b"not a jpeg"), ("a/badjpg.data.pyd", pickle.dumps([hmr2_person(rng)]))]
    members += [("a/evil.jpg", tiny_jpeg(rng)), ("a/evil.data.pyd", pickle.dumps([_Evil()]))]
    members += [("a/empty.jpg", tiny_jpeg(rng)), ("a/empty.data.pyd", pickle.dumps([]))]
    members += [("a/garbage.jpg", tiny_jpeg(rng)), ("a/garbage.data.pyd", b"\x80\x04not a pickle")]
    members += hmr2_members("a/ok", tiny_jpeg(rng), [hmr2_person(rng)])
    p = tmp_path / "s.tar"
    write_tar(p, members)
    recs, q = _read(p)
    assert [r.key for r in recs] == ["a/ok_0"]
    got = {e.key: (e.field, e.kind) for e in q}
    assert got == {
        "a/only_image": ("data.pyd", "unpaired"),
        "a/only_pyd": ("image", "unpaired"),
        "a/badjpg": ("image", "unreadable"),
        "a/evil": ("data.pyd", "forbidden"),
        "a/empty": ("data.pyd", "missing"),
        "a/garbage": ("data.pyd", "unreadable"),
    }


def test_not_a_tar_is_one_quarantine_entry(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(b"hello" * 1000)
    recs, q = _read(p)
    assert recs == [] and len(q) == 1 and q.entries[0].kind in ("unreadable", "truncated")


def test_npz_reader_spin_and_amass_styles(tmp_path):
    rng = np.random.default_rng(5)
    n = 4
    # SPIN style: per-person rows, several persons per image, GT joints in `part`
    img_root = tmp_path / "imgs"
    (img_root / "seq").mkdir(parents=True)
    imgs = {}
    for name in ("seq/im1.jpg", "seq/im2.jpg"):
        imgs[name] = tiny_jpeg(rng)
        (img_root / name).write_bytes(imgs[name])
    part = rng.uniform(0, 100, (n, 24, 3)).astype(np.float32)
    pose = rng.normal(0, 0.2, (n, 72)).astype(np.float32)
    np.savez(
        tmp_path / "spin.npz",
        imgname=np.array(["seq/im1.jpg", "seq/im1.jpg", "seq/im2.jpg", "seq/im2.jpg"]),
        center=rng.uniform(0, 100, (n, 2)),
        scale=np.array([1.0, 2.0, 0.5, 0.7]),
        pose=pose,
        betas=rng.normal(0, 1, (n, 10)),
        part=part,
        has_smpl=np.array([1, 0, 1, 1]),
    )
    q, c = Quarantine(), ReadCounts()
    recs = list(read_npz(tmp_path / "spin.npz", q, c, image_root=img_root))
    assert len(q) == 0 and c.n_good == n
    assert [r.key for r in recs] == ["seq/im1_0", "seq/im1_1", "seq/im2_0", "seq/im2_1"]
    np.testing.assert_array_equal(recs[0].keypoints_2d[25:44], part[0, :19])
    assert not recs[0].keypoints_2d[:25].any()
    np.testing.assert_array_equal(recs[2].scale, [0.5, 0.5])
    np.testing.assert_array_equal(recs[0].body_pose, pose[0])
    assert recs[0].has_smpl and not recs[1].has_smpl
    assert recs[2].image == imgs["seq/im2.jpg"] and recs[2].image_ext == "jpg"

    # AMASS style: SMPL+H poses (156 wide), one betas vector, trans, no images; one NaN row
    poses = rng.normal(0, 0.2, (3, 156))
    poses[1, 3] = np.nan
    np.savez(tmp_path / "amass.npz", poses=poses, betas=rng.normal(0, 1, 16), trans=rng.normal(0, 1, (3, 3)))
    q2, c2 = Quarantine(), ReadCounts()
    recs2 = list(read_npz(tmp_path / "amass.npz", q2, c2))
    assert [r.key for r in recs2] == ["amass/000000_0", "amass/000002_0"]
    assert [(e.key, e.field, e.kind) for e in q2] == [("amass/000001_0", "body_pose", "nan")]
    np.testing.assert_array_equal(recs2[0].body_pose[:66], poses[0, :66].astype(np.float32))
    assert not recs2[0].body_pose[66:].any()
    assert recs2[0].image == b"" and recs2[0].trans.shape == (3,)
    assert c2.n_in == 3

    # read_source over a folder mixes both kinds, in file order
    recs3 = list(read_source(tmp_path, Quarantine()))
    assert len(recs3) == 2 + 4  # spin.npz without image_root: still read, records carry no image
    assert recs3[-1].image == b""
    assert recs3[0].key.startswith("amass/")


def test_npz_wrong_shapes_quarantine_the_file(tmp_path):
    np.savez(tmp_path / "bad.npz", pose=np.zeros((3, 70)))
    q, c = Quarantine(), ReadCounts()
    assert list(read_npz(tmp_path / "bad.npz", q, c)) == []
    assert [(e.field, e.kind) for e in q] == [("pose", "shape")] and c.n_in == 1


def test_long_and_unicode_names_fall_back_to_tarfile(tmp_path):
    """Members our fast header parser does not handle (pax long names, GNU format) still read, in order."""
    import tarfile

    rng = np.random.default_rng(6)
    long_key = "d/" + "x" * 120
    members = hmr2_members("d/a", tiny_jpeg(rng), [hmr2_person(rng)])
    members += hmr2_members(long_key, tiny_jpeg(rng), [hmr2_person(rng)])
    members += hmr2_members("d/ü", tiny_jpeg(rng), [hmr2_person(rng)])
    members += hmr2_members("d/z", tiny_jpeg(rng), [hmr2_person(rng)])
    write_tar(tmp_path / "pax.tar", members)
    recs, q = _read(tmp_path / "pax.tar")
    assert len(q) == 0 and [r.key for r in recs] == ["d/a_0", f"{long_key}_0", "d/ü_0", "d/z_0"]
    import io

    with tarfile.open(tmp_path / "gnu.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    recs2, q2 = _read(tmp_path / "gnu.tar")
    assert len(q2) == 0 and [r.key for r in recs2] == [r.key for r in recs]
    # and truncation inside the fallback region is still reported
    data = (tmp_path / "gnu.tar").read_bytes()
    (tmp_path / "gnu_cut.tar").write_bytes(data[: data.rfind(b"\xff\xd8\xff") + 50])
    recs3, q3 = _read(tmp_path / "gnu_cut.tar")
    assert [r.key for r in recs3] == [r.key for r in recs[:3]] and [e.kind for e in q3] == ["truncated"]
