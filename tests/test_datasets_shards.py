"""Shard writer: HSMR v1 fields, bit-exact round trip, deterministic bytes, atomic shards, plain-WebDataset readable."""

import os
import pickletools
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from skelpgt.datasets import OutSample, Quarantine, iter_shard, make_person, read_hmr2_tar, write_shards
from skelpgt.datasets.pyd import dump_pyd
from skelpgt.datasets.shards import PERSON_FIELDS, ShardWriter, sha256_file
from skelpgt.datasets.testing import make_hmr2_tar, random_label

REC_FIELDS = ("keypoints_2d", "keypoints_3d", "center", "scale")


def _samples(records, rng, *, round=0, release="rel"):
    """Group records by image and attach random labels (every 4th person unlabelled)."""
    by_img: dict[str, list] = {}
    for r in records:
        by_img.setdefault(r.image_key, []).append(r)
    out, labels, next_id = [], {}, 0
    for key, recs in by_img.items():
        persons = []
        for r in recs:
            if next_id % 4 == 3:
                orig = flip = None
            else:
                orig, flip = random_label(rng, next_id), random_label(rng, next_id + 1)
            next_id += 2
            labels[r.key] = (orig, flip)
            persons.append(make_person(r, orig, flip, round=round, release=release))
        out.append(OutSample(key, recs[0].image, recs[0].image_ext, persons))
    return out, labels


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(10)
    make_hmr2_tar(d / "src.tar", 12, rng)
    q = Quarantine()
    recs = list(read_hmr2_tar(d / "src.tar", q))
    assert len(q) == 0 and len(recs) > 12
    return recs


def _bits(a):
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def test_round_trip_is_bit_exact(tmp_path, source):
    rng = np.random.default_rng(11)
    samples, labels = _samples(source, rng, round=3, release="demo")
    infos = write_shards(samples, tmp_path, prefix="demo", samples_per_shard=5)
    assert [i.name for i in infos] == ["demo-000000.tar", "demo-000001.tar", "demo-000002.tar"]
    assert sum(i.samples for i in infos) == 12 and sum(i.persons for i in infos) == len(source)

    # reader -> writer -> reader: every source field unchanged
    q = Quarantine()
    back = [r for i in infos for r in read_hmr2_tar(tmp_path / i.name, q)]
    assert len(q) == 0 and [r.key for r in back] == [r.key for r in source]
    for a, b in zip(source, back):
        assert a.image == b.image and a.image_ext == b.image_ext and a.image_key == b.image_key
        for f in REC_FIELDS:
            assert _bits(getattr(a, f)) == _bits(getattr(b, f)), f
        assert a.personid == b.personid
        assert dump_pyd(a.extra_info) == dump_pyd(b.extra_info)

    # the SKEL label fields come back exactly as written
    got = {f"{s.key}_{j}": p for info in infos for s in iter_shard(tmp_path / info.name) for j, p in enumerate(s.persons)}
    assert set(got) == set(labels)
    for key, (orig, flip) in labels.items():
        p = got[key]
        assert tuple(p) == PERSON_FIELDS  # every key, fixed order
        assert p["round"] == 3 and p["release"] == "demo"
        for side, lab in (("orig", orig), ("flip", flip)):
            if lab is None:
                assert p[f"{side}_label_id"] == -1 and np.isnan(p[f"{side}_pve_max"]) and np.isnan(p[f"{side}_pve_mean"])
                assert _bits(p[f"{side}_poses"]) == _bits(np.zeros(46, np.float32))
                continue
            assert p[f"{side}_label_id"] == lab.label_id
            for f in ("poses", "betas", "trans"):
                assert _bits(p[f"{side}_{f}"]) == _bits(getattr(lab, f))
            assert p[f"{side}_pve_max"] == lab.pve_max and p[f"{side}_pve_mean"] == lab.pve_mean
            assert p[f"{side}_kp2d_err"] == lab.kp2d_err


def test_two_writes_are_byte_identical(tmp_path, source):
    a_infos = write_shards(_samples(source, np.random.default_rng(5))[0], tmp_path / "a", samples_per_shard=4)
    b_infos = write_shards(_samples(source, np.random.default_rng(5))[0], tmp_path / "b", samples_per_shard=4)
    assert len(a_infos) == 3
    for a, b in zip(a_infos, b_infos):
        assert (tmp_path / "a" / a.name).read_bytes() == (tmp_path / "b" / b.name).read_bytes()
        assert a == b
        assert a.sha256 == sha256_file(tmp_path / "a" / a.name)
    # a different label changes the bytes (the check above can fail)
    c_infos = write_shards(_samples(source, np.random.default_rng(6))[0], tmp_path / "c", samples_per_shard=4)
    assert c_infos[0].sha256 != a_infos[0].sha256


def test_shard_sizes_and_no_empty_shard(tmp_path, source):
    samples, _ = _samples(source, np.random.default_rng(0))
    assert write_shards([], tmp_path / "none") == [] and not list((tmp_path / "none").glob("*.tar"))
    infos = write_shards(samples, tmp_path / "six", samples_per_shard=6)
    assert [i.samples for i in infos] == [6, 6] and len(list((tmp_path / "six").iterdir())) == 2
    infos = write_shards(samples, tmp_path / "five", samples_per_shard=5, start_index=7, prefix="p")
    assert [(i.name, i.samples) for i in infos] == [("p-000007.tar", 5), ("p-000008.tar", 5), ("p-000009.tar", 2)]


def test_hsmr_loader_requirements(tmp_path, source):
    rec = source[0]
    nan_label = random_label(np.random.default_rng(1), 7)
    nan_label.poses[3] = np.nan  # a failed fit must not reach HSMR as a zero pose with small pve
    samples = [OutSample(rec.image_key, rec.image, rec.image_ext, [make_person(rec, nan_label, None, round=0, release="r")])]
    (info,) = write_shards(samples, tmp_path)
    (s,) = list(iter_shard(tmp_path / info.name))
    (p,) = s.persons
    for side in ("orig", "flip"):
        assert p[f"{side}_poses"].dtype == np.float32 and p[f"{side}_poses"].shape == (46,)
        assert p[f"{side}_betas"].dtype == np.float32 and p[f"{side}_betas"].shape == (10,)
        assert not p[f"{side}_poses"].any() and np.isnan(p[f"{side}_pve_max"])
    assert p["orig_label_id"] == 7 and p["flip_label_id"] == -1
    assert isinstance(p["scale"], np.ndarray) and p["scale"].shape == (2,)
    assert p["keypoints_2d"].shape == (44, 3) and p["keypoints_3d"].shape == (44, 4)
    assert isinstance(p["extra_info"]["fitting_loss"], np.ndarray) and p["extra_info"]["fitting_loss"].shape == ()
    # numpy 1.x (HSMR's environment) has no numpy._core: the pickle must not name it
    with tarfile.open(tmp_path / info.name) as tf:
        data = tf.extractfile(f"{rec.image_key}.data.pyd").read()
        names = tf.getnames()
        assert names == sorted(names)
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.mode) == (0, 0, 0, "skelpgt", 0o644)
    strings = {arg for op, arg, _ in pickletools.genops(data) if op.name in ("SHORT_BINUNICODE", "BINUNICODE")}
    assert not any("_core" in str(x) for x in strings)


def test_plain_webdataset_reads_shards(tmp_path, source):
    import webdataset as wds

    samples, _ = _samples(source, np.random.default_rng(2))
    infos = write_shards(samples, tmp_path, samples_per_shard=5)
    urls = [str(tmp_path / i.name) for i in infos]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples):
        assert g["jpg"].dtype == np.uint8 and g["jpg"].ndim == 3 and g["jpg"].shape[2] == 3
        assert isinstance(g["data.pyd"], list) and len(g["data.pyd"]) == len(s.persons)
        np.testing.assert_array_equal(g["data.pyd"][0]["orig_poses"], s.persons[0]["orig_poses"])


_KILL_CHILD = textwrap.dedent(
    """
    import sys, time, numpy as np
    from skelpgt.datasets import OutSample, ShardWriter
    from skelpgt.datasets.testing import tiny_jpeg
    rng = np.random.default_rng(0)
    w = ShardWriter(sys.argv[1], prefix="k", samples_per_shard=5, fsync=False)
    for i in range(7):
        w.write(OutSample(f"img/{i:04d}", tiny_jpeg(rng, 64, 64), "jpg", [{"x": np.zeros(3, np.float32), "orig_label_id": -1, "flip_label_id": -1,
            "round": 0, **{f"{s}_{f}": np.zeros(n, np.float32) for s in ("orig", "flip") for f, n in (("poses", 46), ("betas", 10), ("trans", 3))},
            **{f"{s}_{m}": float("nan") for s in ("orig", "flip") for m in ("pve_max", "pve_mean", "kp2d_err")}}]))
    w._drain()  # make the partial shard visible on disk before we are killed
    print("mid", flush=True)
    time.sleep(60)
    """
)


def test_killed_writer_leaves_no_partial_tar(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mid"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    names = sorted(os.listdir(out))
    assert names == ["k-000000.tar", "k-000001.tar.tmp"]
    assert (out / "k-000001.tar.tmp").stat().st_size > 0
    assert [s.key for s in iter_shard(out / "k-000000.tar")] == [f"img/{i:04d}" for i in range(5)]
    # the next writer with this prefix clears the leftover
    ShardWriter(out, prefix="k").close()
    assert sorted(os.listdir(out)) == ["k-000000.tar"]


def test_fast_tar_header_matches_tarfile():
    import tarfile as tf_mod

    from skelpgt.datasets.shards import _tarinfo, tar_header

    for name, size in [("a.jpg", 0), ("aic-train/" + "f" * 40 + ".data.pyd", 123456), ("x" * 100, 7), ("x" * 101, 7), ("é/ü.jpg", 5), ("k.jpg", 8**11 + 1)]:
        assert tar_header(name, size) == _tarinfo(name, size).tobuf(tf_mod.PAX_FORMAT, "utf-8", "surrogateescape"), name


def test_invalid_keys_and_empty_persons_rejected(tmp_path, source):
    rec = source[0]
    person = make_person(rec, None, None, round=0, release="r")
    with ShardWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="no dots"):
            w.write(OutSample("a/b.c", rec.image, "jpg", [person]))
        with pytest.raises(ValueError, match="no persons"):
            w.write(OutSample("a/b", rec.image, "jpg", []))


def test_pickle_bytes_depend_on_values_not_identity():
    a = np.arange(3.0, dtype=np.float32)
    rel = "".join(["rel", "ease"])  # equal to, but not the same object as, the literal
    shared = [{"p": a, "q": a, "r": rel, "e": {"k": (1, "release")}}, {"p": a, "q": a.copy(), "r": "release", "e": {"k": (1, rel)}}]
    fresh = [{"p": a.copy(), "q": a.copy(), "r": "release", "e": {"k": (1, "release")}}, {"p": a.copy(), "q": a.copy(), "r": "release", "e": {"k": (1, "release")}}]
    assert dump_pyd(shared) == dump_pyd(fresh)
    assert dump_pyd(fresh) != dump_pyd([fresh[0], {**fresh[1], "r": "other"}])
