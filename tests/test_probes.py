"""Probes of a hostile but realistic user: bad inputs, kills, concurrent runs, tampering, odd paths.

Every probe records its exit code (0, or what the CLI gives the error: 2 bad input, 1 failed run),
the first line of its message and a "nothing lost" check (counts add up, every label id belongs to
its person and source, earlier rounds byte-identical). The table is printed at the end of the run
(conftest.py, `pytest_terminal_summary`). Tiny inputs and a cheap converter setting keep it fast:
these probe integrity, not fit accuracy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skelpgt.datasets import LabelStore, open_release, read_manifest, verify_release
from skelpgt.datasets.labelstore import open_store
from skelpgt.datasets.records import N_KEYPOINTS
from skelpgt.datasets.testing import hmr2_members, hmr2_person, make_hmr2_tar, tiny_jpeg, write_tar
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.pipelines.cli import app
from skelpgt.pipelines.errors import describe_error
from skelpgt.pipelines.usecases import BuildConfig, ReshardConfig, build_round0, convert_locally, reshard

CONFIG = dict(chunk_size=8, pad_multiple=8, lm_iterations=2)  # cheap fits: these tests check bookkeeping
RUNNER = CliRunner()


@pytest.fixture(scope="module")
def converter(models_dir):
    return Converter.from_models_dir(models_dir, ConvertConfig(**CONFIG))


@pytest.fixture
def probe(request):
    """record(name, exit code, message, nothing-lost ok, what was checked) -> adds a row to the probe table."""
    rows = request.config.__dict__.setdefault("_skelpgt_probes", [])

    base = str(request.config._tmp_path_factory.getbasetemp())

    def record(name: str, code: int, message: str, ok: bool, checked: str) -> None:
        first = (message or "").strip().splitlines()[0] if (message or "").strip() else "-"
        first = re.sub(re.escape(base) + r"/[^/]+/", "…/", first)  # the test's temp folder says nothing
        rows.append((name, code, first[:140], "ok" if ok else "LOST", checked))

    return record


def run(fn, *args, **kwargs):
    """Call a pipeline function as the CLI would: (exit code, first message line, result or None)."""
    try:
        return 0, "", fn(*args, **kwargs)
    except Exception as exc:  # the CLI's mapping of expected errors
        code, line = describe_error(exc)
        return code, line, None


def cli(*args: str):
    """skelpgt ARGS in-process -> (exit code, first line of stderr, else of stdout)."""
    res = RUNNER.invoke(app, list(args))
    err = (getattr(res, "stderr", "") or "").strip()
    text = err or (res.stdout or "").strip()
    return res.exit_code, text.splitlines()[0] if text else "", res


def build(converter, sources, workdir, release="r", overwrite=False):
    """build_round0 as the CLI would call it → (exit code, first message line, manifest or None)."""
    code, msg, built = run(build_round0, workdir, BuildConfig(tuple(str(s) for s in sources), release, overwrite), convert_locally(converter))
    return code, msg, built and built.manifest


def sample(key, persons, rng, image=None):
    return hmr2_members(key, image if image is not None else tiny_jpeg(rng, 16, 16), persons)


def persons_in(*tars) -> int:
    """Persons and damaged units a reader finds in the tars (what 'in' must count)."""
    from skelpgt.datasets.readers import ReadCounts, read_source

    counts = ReadCounts()
    for t in tars:
        list(read_source(t, None, counts))
    return counts.n_in


def nothing_lost(workdir, release="r", n_in=None, round=None) -> tuple[bool, str]:
    """Counts add up (and equal `n_in`), verify incl. every label id vs the store passes."""
    rdir = Path(workdir) / "releases" / release
    manifest = read_manifest(rdir, round)
    c = manifest["counts"]
    rep = verify_release(rdir, round, store=workdir)
    ok = rep.ok and c["in"] == c["persons"] + c["quarantined"] and (n_in is None or c["in"] == n_in)
    why = f"in {c['in']} = {c['persons']} released + {c['quarantined']} quarantined; verify --store {'OK' if rep.ok else rep.errors[:2]}"
    return ok, why


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the five defects
def test_same_named_shards_in_two_folders_are_both_released(converter, tmp_path, probe):
    rng = np.random.default_rng(1)
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir()
    make_hmr2_tar(tmp_path / "A" / "s-000000.tar", 2, rng, prefix="a", max_persons=2)
    make_hmr2_tar(tmp_path / "B" / "s-000000.tar", 3, rng, prefix="b", max_persons=3)
    n_in = persons_in(tmp_path / "A" / "s-000000.tar", tmp_path / "B" / "s-000000.tar")
    code, msg, manifest = build(converter, [tmp_path / "A" / "s-000000.tar", tmp_path / "B" / "s-000000.tar"], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=n_in)
    keys = {s["__key__"].split("/")[0] for s in open_release(tmp_path / "w" / "releases" / "r", image="pil")}
    probe("1 same-named shards A/ and B/", code, msg or f"{manifest['counts']['persons']} persons of both folders released", ok and keys == {"a", "b"}, why)
    assert code == 0 and ok and keys == {"a", "b"}


def test_a_quarantined_person_does_not_shift_the_others_keys(converter, tmp_path, probe):
    rng = np.random.default_rng(2)
    bad_kp, bad_beta = hmr2_person(rng), hmr2_person(rng)
    bad_kp["keypoints_2d"] = np.zeros((N_KEYPOINTS - 1, 3), np.float32)
    bad_beta["betas"] = np.full(10, np.inf, np.float32)
    persons = [bad_kp, hmr2_person(rng), hmr2_person(rng)]
    write_tar(tmp_path / "s.tar", sample("img/0", persons, rng) + sample("img/1", [hmr2_person(rng), bad_beta, hmr2_person(rng)], rng))
    code, msg, _ = build(converter, [tmp_path / "s.tar"], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=6)
    got = {s["__key__"]: (s["orig_label_id"], s["flip_label_id"]) for s in open_release(tmp_path / "w" / "releases" / "r", per_person=True, image="pil")}
    with open_store(tmp_path / "w") as st:
        owners = {k: {str(x) for x in st.get(list(ids), ("sample_key",))["sample_key"]} for k, ids in got.items()}
    right = sorted(got) == ["img/0_1", "img/0_2", "img/1_0", "img/1_2"] and all(v == {k} for k, v in owners.items())
    probe("2 quarantined person keeps others' keys", code, msg or f"released keys {sorted(got)}", ok and right, why)
    assert code == 0 and ok and right


def test_changed_annotations_refuse_then_overwrite_with_new_rows(converter, tmp_path, probe):
    rng = np.random.default_rng(3)
    people = [hmr2_person(rng), hmr2_person(rng)]
    src = tmp_path / "s.tar"
    write_tar(src, sample("img/0", people, rng, image=tiny_jpeg(np.random.default_rng(0), 16, 16)))
    wd = tmp_path / "w"
    assert build(converter, [src], wd)[0] == 0
    round0 = tree_bytes(wd / "releases" / "r" / "round-0")
    with LabelStore(wd / "labels.h5") as st:
        n_rows = len(st)
    people[1]["betas"] = people[1]["betas"] + 0.5  # the annotations change
    write_tar(src, sample("img/0", people, rng, image=tiny_jpeg(np.random.default_rng(0), 16, 16)))
    code, msg, _ = build(converter, [src], wd)
    with LabelStore(wd / "labels.h5") as st:
        untouched = len(st) == n_rows
    refused_clean = untouched and tree_bytes(wd / "releases" / "r" / "round-0") == round0 and not (wd / "releases" / "r" / "round-0.partial").exists()
    probe("3a rebuild of changed source, no overwrite", code, msg, refused_clean, "store rows and round-0 bytes unchanged, no round-0.partial")
    assert code == 2 and "overwrite=true" in msg and refused_clean
    code, msg, _ = build(converter, [src], wd, overwrite=True)
    ok, why = nothing_lost(wd, n_in=2)
    with LabelStore(wd / "labels.h5") as st:
        history = st.history("img/0_1", "orig")
        current = {(str(k), str(s)): int(i) for k, s, i in zip(*st.current(0).values())}
    versions = {h["source_digest"] for h in history}
    fresh = len(history) == 2 and len(versions) == 2 and current[("img/0_1", "orig")] == history[-1]["label_id"]
    probe("3b rebuild with overwrite=true", code, msg or f"lineage of img/0_1 orig: {len(history)} versions, 2 source digests", ok and fresh, why)
    assert code == 0 and ok and fresh


@pytest.mark.parametrize("kind", ["empty-tar", "zero-byte", "not-a-tar", "all-rejected"])
def test_an_empty_or_unreadable_shard_is_quarantined_not_fatal(converter, tmp_path, probe, kind):
    rng = np.random.default_rng(4)
    make_hmr2_tar(tmp_path / "a.tar", 2, rng, prefix="a", max_persons=2)
    bad = tmp_path / "b.tar"
    if kind == "empty-tar":
        write_tar(bad, [])
    elif kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "not-a-tar":
        bad.write_bytes(b"this is a text file, not a tar archive\n" * 40)
    else:
        p = hmr2_person(rng)
        p["body_pose"] = np.full(72, np.nan, np.float32)
        write_tar(bad, sample("b/0", [p], rng))
    n_in = persons_in(tmp_path / "a.tar", bad)
    code, msg, manifest = build(converter, [tmp_path / "a.tar", bad], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=n_in)
    q = [json.loads(line) for line in (tmp_path / "w" / "releases" / "r" / "round-0" / "quarantine.jsonl").read_text().splitlines()]
    named = any(e["file"] == str(bad) for e in q)
    probe(f"4 {kind} shard among inputs", code, msg or next(e["reason"] for e in q if e["file"] == str(bad)), ok and named, why)
    assert code == 0 and ok and named


def test_a_truncated_jpeg_is_quarantined_and_the_release_decodes(converter, tmp_path, probe):
    rng = np.random.default_rng(5)
    jpeg = tiny_jpeg(rng, 32, 32)
    write_tar(tmp_path / "s.tar", sample("img/0", [hmr2_person(rng)], rng, image=jpeg[: len(jpeg) // 2]) + sample("img/1", [hmr2_person(rng)], rng))
    code, msg, _ = build(converter, [tmp_path / "s.tar"], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=2)
    decoded = [s["__key__"] for s in open_release(tmp_path / "w" / "releases" / "r")]  # full decode, as training does
    q = (tmp_path / "w" / "releases" / "r" / "round-0" / "quarantine.jsonl").read_text()
    probe("5 truncated JPEG", code, msg or json.loads(q.splitlines()[0])["reason"], ok and decoded == ["img/1"], why + "; every released image decodes")
    assert code == 0 and ok and decoded == ["img/1"] and "image does not decode" in q


def test_verify_store_ok_after_quarantine_same_names_and_changed_annotations(converter, tmp_path, probe):
    """Defects 1-3 together: the release verifies against the store, label ids, sides and source digests."""
    rng = np.random.default_rng(13)
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir()
    bad = hmr2_person(rng)
    bad["keypoints_2d"] = np.zeros((N_KEYPOINTS - 1, 3), np.float32)
    write_tar(tmp_path / "A" / "s-000000.tar", sample("a/0", [bad, hmr2_person(rng), hmr2_person(rng)], rng))
    people = [hmr2_person(rng), hmr2_person(rng)]
    image = tiny_jpeg(rng, 16, 16)
    write_tar(tmp_path / "B" / "s-000000.tar", sample("b/0", people, rng, image=image))
    sources = [tmp_path / "A" / "s-000000.tar", tmp_path / "B" / "s-000000.tar"]
    assert build(converter, sources, tmp_path / "w")[0] == 0
    people[0]["body_pose"] = people[0]["body_pose"] * 0.5  # B's annotations change
    write_tar(tmp_path / "B" / "s-000000.tar", sample("b/0", people, rng, image=image))
    code, msg, _ = build(converter, sources, tmp_path / "w", overwrite=True)
    vcode, _, res = cli("verify", str(tmp_path / "w" / "releases" / "r"), "--store", str(tmp_path / "w"))
    ok, why = nothing_lost(tmp_path / "w", n_in=5)
    good = code == 0 and vcode == 0 and "**OK**" in res.stdout and "label source digests checked | 8" in res.stdout
    probe("verify --store: quarantined + same-named + changed", vcode, "**OK**" if "**OK**" in res.stdout else res.stdout, ok and good, why)
    assert good and ok, res.stdout


# ---------------------------------------------------------------------------- also found
def test_the_same_image_key_in_two_shards_is_quarantined_once(converter, tmp_path, probe):
    rng = np.random.default_rng(6)
    write_tar(tmp_path / "a.tar", sample("img/0", [hmr2_person(rng), hmr2_person(rng)], rng))
    write_tar(tmp_path / "b.tar", sample("img/0", [hmr2_person(rng)], rng) + sample("img/1", [hmr2_person(rng)], rng))
    code, msg, manifest = build(converter, [tmp_path / "a.tar", tmp_path / "b.tar"], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=4)
    good = manifest["counts"]["persons"] == 3 and manifest["quarantine"]["by_kind"] == {"duplicate": 1}
    resharded = reshard(tmp_path / "w", ReshardConfig("r", 0, samples_per_shard=1, name="r1")).manifest  # keeps the first copy too
    ok2, _ = nothing_lost(tmp_path / "w", release="r1", n_in=4)
    good = good and ok2 and resharded["counts"] == manifest["counts"]
    probe("duplicate image key in two shards", code, msg or "second copy quarantined: duplicate", ok and good, why + "; a reshard keeps the first copy")
    assert code == 0 and ok and good


@pytest.fixture(scope="module")
def built(converter, tmp_path_factory):
    """One small release (3 images) to tamper with, copy and read."""
    root = tmp_path_factory.mktemp("built")
    make_hmr2_tar(root / "s.tar", 3, np.random.default_rng(7), prefix="img", max_persons=2, p_no_smpl=0.3)
    assert build(converter, [root / "s.tar"], root / "w")[0] == 0
    return root


def _tamper_manifest(m: dict, what: str) -> None:
    if what == "round":
        m["round"] = 1
    elif what == "release":
        m["release"] = "other"
    elif what == "config":
        m["config"]["convert"]["lm_iterations"] = 99
    elif what == "config_digest":
        m["config_digest"] = "0" * 64
    elif what == "sources":  # another file, with the config digest redone: only the sources check can tell
        from skelpgt.datasets.release import config_digest

        m["config"]["sources"] = [m["config"]["sources"][0].replace("s.tar", "other.tar")]
        m["config_digest"] = config_digest(m["config"])
    elif what == "counts":
        m["counts"]["persons"] += 1


@pytest.mark.parametrize("what", ["round", "release", "config", "config_digest", "sources", "counts", "shard-byte", "quarantine-line"])
def test_verify_catches_each_tampering(built, tmp_path, probe, what):
    from skelpgt.datasets.release import canonical_json

    wd = tmp_path / "w"
    shutil.copytree(built / "w", wd)
    rdir = wd / "releases" / "r" / "round-0"
    mpath = rdir / "manifest.json"
    shutil.copy(built / "s.tar", built / "other.tar")
    with open(built / "other.tar", "ab") as fh:
        fh.write(bytes(512))  # same samples, other bytes
    if what in ("round", "release", "config", "config_digest", "sources", "counts"):
        m = json.loads(mpath.read_text())
        _tamper_manifest(m, what)
        mpath.write_bytes(canonical_json(m))
    elif what == "shard-byte":
        shard = next(rdir.glob("*.tar"))
        data = bytearray(shard.read_bytes())
        data[700] ^= 1
        shard.write_bytes(bytes(data))
    else:
        with open(rdir / "quarantine.jsonl", "a") as fh:
            fh.write(json.dumps({"key": "x_0", "file": "f", "field": "f", "reason": "nan: forged"}) + "\n")
    code, _msg, res = cli("verify", str(rdir), "--store", str(wd))
    first = next((ln[2:] for ln in res.stdout.splitlines() if ln.startswith("- ")), "OK")
    probe(f"tamper: {what}", code, first, code == 1, "verify exits 1")
    assert code == 1, res.stdout


def test_a_label_id_pointing_at_another_person_is_caught(built, tmp_path, probe):
    from skelpgt.datasets.release import RoundFacts, finalize_release, staging_dir
    from skelpgt.datasets.shards import iter_shard, write_shards

    wd = tmp_path / "w"
    shutil.copytree(built / "w", wd)
    rdir = wd / "releases" / "r" / "round-0"
    shard = next(rdir.glob("*.tar"))
    samples = list(iter_shard(shard))
    labelled = [(s, p) for s in samples for p in s.persons if p["orig_label_id"] >= 0]
    (s0, p0), (s1, p1) = labelled[0], labelled[-1]
    p0["orig_label_id"], p1["orig_label_id"] = p1["orig_label_id"], p0["orig_label_id"]  # ids swapped, checksums redone
    stage = staging_dir(wd, "r", 0)
    write_shards(samples, stage, prefix="r")
    m = read_manifest(rdir)
    finalize_release(wd, RoundFacts("r", 0, config=m["config"], code_version=m["code_version"]), overwrite=True)
    code, _msg, res = cli("verify", str(rdir), "--store", str(wd))
    first = next((ln[2:] for ln in res.stdout.splitlines() if ln.startswith("- ")), "OK")
    probe("tamper: label ids swapped, checksums redone", code, first, code == 1 and "another sample/side" in res.stdout, "verify --store exit 1")
    assert code == 1 and "another sample/side" in res.stdout


def test_a_read_only_copy_of_a_work_folder_can_be_inspected(built, tmp_path, probe, monkeypatch):
    from skelpgt.datasets import lineage

    ro = tmp_path / "ro"
    shutil.copytree(built / "w", ro)
    for p in [*ro.rglob("*.lock"), *ro.rglob("*.rwlock")]:
        p.unlink()  # a copy made without the lock files
    real_open = os.open

    def read_only_open(path, flags, *args, **kw):  # what a read-only folder does, even to root
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    for p in [ro, *ro.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    monkeypatch.setattr(os, "open", read_only_open)
    try:
        rep = verify_release(ro / "releases" / "r", store=ro)
        n = sum(1 for _ in open_release(ro / "releases" / "r"))
        rows = lineage(ro, "img/000000_0")
        code, msg, _ = cli("verify", str(ro / "releases" / "r"), "--store", str(ro))
    finally:
        monkeypatch.undo()
        for p in [ro, *ro.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    good = rep.ok and n == 3 and len(rows) > 0 and code == 0
    probe("read-only work folder (no lock files)", code, f"verify --store {'OK' if rep.ok else rep.errors[0]}; {n} images; lineage {len(rows)} rows", good, "verify, open_release, lineage without write access")
    assert good, rep.errors


def test_a_release_name_that_is_a_path_writes_nothing(converter, tmp_path, probe):
    make_hmr2_tar(tmp_path / "s.tar", 1, np.random.default_rng(8), prefix="img", max_persons=1)
    wd = tmp_path / "deep" / "w"
    wd.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, msg, _ = build(converter, [tmp_path / "s.tar"], wd, release="../../x")
    after = sorted(p for p in tmp_path.rglob("*"))
    probe("release='../../x'", code, msg, before == after, "no file written anywhere")
    assert code == 2 and before == after


def test_a_dataset_root_as_input_means_its_shards(models_dir, tmp_path, probe):
    from skelpgt.datasets.readers import source_files
    from skelpgt.datasets.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "ds", 2, seed=1, models_dir=models_dir, image_size=64, shard_size=1)
    got = source_files([tmp_path / "ds"])
    ok = got == [str(s) for s in data.shards]
    probe("inputs = a dataset root", 0, f"{len(got)} shard(s), truth.npz left out", ok, "sources == the dataset's shards")
    assert ok


@pytest.mark.parametrize("args", [("rounds", "{wd}", "--release", "nope"), ("diff", "{wd}", "0", "7"), ("lineage", "img/000000_0", "--workdir", "{empty}")])
def test_rounds_diff_lineage_on_missing_things_fail(built, tmp_path, probe, args):
    (tmp_path / "empty").mkdir()
    argv = [a.format(wd=built / "w", empty=tmp_path / "empty") for a in args]
    code, msg, _ = cli(*argv)
    probe(f"{args[0]} on a missing release/round", code, msg, code != 0, "error exit, nothing written")
    assert code == 2 and msg.startswith("error:")


# ---------------------------------------------------------------------------- errors of the CLI
def _npz(path: Path, n: int, **extra) -> Path:
    np.savez(path, poses=np.zeros((n, 72), np.float32), betas=np.zeros((n, 10), np.float32), trans=np.zeros((n, 3), np.float32), **extra)
    return path


def test_convert_without_the_neutral_model_says_what_to_do(models_dir, tmp_path, probe):
    partial = tmp_path / "models"
    shutil.copytree(models_dir, partial)
    (partial / "smpl" / "SMPL_NEUTRAL.pkl").unlink()
    code, msg, res = cli("convert", str(_npz(tmp_path / "in.npz", 2)), str(tmp_path / "out.npz"), "--models-dir", str(partial))
    lines = len(res.output.strip().splitlines())
    probe("convert: models without SMPL_NEUTRAL", code, msg, lines == 1 and not (tmp_path / "out.npz").exists(), f"{lines} line(s) of output, no output file")
    assert code == 2 and lines == 1 and "--smpl-gender male|female" in msg and "SMPL_NEUTRAL.pkl" in msg


@pytest.mark.parametrize("case", ["0 rows", "--batch 0", "missing file", "text file named .npz", "truncated model pickle", "truncated labels.h5"])
def test_bad_input_is_one_line_and_exit_2(models_dir, tmp_path, probe, case):
    inp, out = _npz(tmp_path / "in.npz", 2), tmp_path / "out.npz"
    if case == "0 rows":
        argv = ["convert", str(_npz(tmp_path / "z.npz", 0)), str(out)]
    elif case == "--batch 0":
        argv = ["convert", str(inp), str(out), "--batch", "0"]
    elif case == "missing file":
        argv = ["convert", str(tmp_path / "nope.npz"), str(out)]
    elif case == "text file named .npz":
        (tmp_path / "t.npz").write_text("poses,betas\n0,0\n")
        argv = ["convert", str(tmp_path / "t.npz"), str(out)]
    elif case == "truncated model pickle":
        broken = tmp_path / "models"
        shutil.copytree(models_dir, broken)
        pkl = broken / "smpl" / "SMPL_NEUTRAL.pkl"
        pkl.write_bytes(pkl.read_bytes()[:1000])
        argv = ["convert", str(inp), str(out), "--models-dir", str(broken)]
    else:
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "labels.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
        argv = ["lineage", "img/0_0", "--workdir", str(tmp_path / "w")]
    code, msg, res = cli(*argv)
    lines = len(res.output.strip().splitlines())
    probe(f"bad input: {case}", code, msg, lines == 1 and not out.exists(), f"{lines} line(s), no output file")
    assert code == 2 and lines == 1 and msg.startswith("error:")


def test_nan_inf_rows_among_good_rows_are_flagged_not_fatal(models_dir, tmp_path, probe):
    pose = np.zeros((4, 72), np.float32)
    betas = np.zeros((4, 10), np.float32)
    pose[1, 5] = np.nan
    betas[2, 0] = np.inf
    betas[3, 1] = -9.9  # extreme but finite (real AMASS subjects reach it): converted, not refused
    np.savez(tmp_path / "in.npz", poses=pose, betas=betas, trans=np.zeros((4, 3), np.float32))
    code, msg, res = cli("convert", str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), "--batch", "8")
    with np.load(tmp_path / "out.npz") as z:
        conv = z["converged"]
        good = bool(conv[0]) and not conv[1] and not conv[2] and np.isfinite(z["poses"][3]).all() and bool(conv[3])
        good = good and "extreme shape" in str(z["flags"][3]) and not str(z["flags"][0])
    probe("convert: NaN and Inf rows among good rows, β=-9.9", code, res.stdout.strip().splitlines()[-1], good, "rows 1-2 refused with a reason, row 3 converted and flagged, row 0 clean, N out == N in")
    assert code == 0 and good


@pytest.mark.parametrize("n", [1, 40])
def test_tiny_and_huge_person_counts(converter, tmp_path, probe, n):
    rng = np.random.default_rng(9)
    write_tar(tmp_path / "s.tar", sample("img/0", [hmr2_person(rng) for _ in range(n)], rng))
    code, msg, manifest = build(converter, [tmp_path / "s.tar"], tmp_path / "w")
    ok, why = nothing_lost(tmp_path / "w", n_in=n)
    probe(f"{n} person(s) in one image", code, msg or f"{manifest['counts']['labelled']} labelled", ok, why)
    assert code == 0 and ok


def test_paths_with_spaces_and_non_ascii(converter, tmp_path, probe):
    folder = tmp_path / "données d'entrée"
    folder.mkdir()
    make_hmr2_tar(folder / "s 0 é.tar", 2, np.random.default_rng(10), prefix="img", max_persons=2)
    wd = tmp_path / "travail à faire"
    code, msg, manifest = build(converter, [folder / "s 0 é.tar"], wd)
    ok, why = nothing_lost(wd, n_in=persons_in(folder / "s 0 é.tar"))
    probe("paths with spaces and non-ASCII", code, msg or str(wd.name), ok, why)
    assert code == 0 and ok


def test_a_reader_during_a_writer(built, tmp_path, probe):
    wd = tmp_path / "w"
    shutil.copytree(built / "w", wd)
    with LabelStore(wd / "labels.h5", "a") as writer:
        cur = writer.labels_of_round(0)
        n0 = len(cur["label_id"])
        writer.append({"sample_key": "img/000000_0", "side": "orig", "round": 0, "producer": "manual", "poses": cur["poses"][0], "betas": cur["betas"][0], "trans": cur["trans"][0]})
        rep = verify_release(wd / "releases" / "r", store=wd)  # reads while the writer holds the store
        with LabelStore(wd / "labels.h5") as reader:
            seen = len(reader.labels_of_round(0)["label_id"])
    probe("reader while a writer holds labels.h5", 0, "verify --store OK" if rep.ok else rep.errors[0], rep.ok and seen == n0, "reader sees committed rows only")
    assert rep.ok and seen == n0


# ---------------------------------------------------------------------------- kills and concurrency
_BUILD_SCRIPT = """
import sys
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.pipelines.usecases import BuildConfig, build_round0, convert_locally
conv = Converter.from_models_dir(sys.argv[1], ConvertConfig(**{config!r}))
build_round0(sys.argv[2], BuildConfig(tuple(sys.argv[3:]), "r"), convert_locally(conv))
"""


def _spawn(models_dir, workdir, sources):
    script = _BUILD_SCRIPT.format(config=CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, str(models_dir), str(workdir), *map(str, sources)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(11)
    return [Path(p) for p in (root / "a.tar", root / "b.tar", root / "c.tar") if make_hmr2_tar(p, 2, rng, prefix=p.stem, max_persons=2) or True]


def test_a_run_killed_at_several_points_resumes_byte_identical(converter, models_dir, three_sources, tmp_path, probe):
    clean = tmp_path / "clean"
    assert build(converter, three_sources, clean)[0] == 0
    want = (clean / "releases" / "r" / "round-0" / "manifest.json").read_bytes()
    marks = {
        "after the first shard's labels": lambda wd: any((wd / "work" / "r" / "round-0").glob("*.labels.npz")),
        "during the label store write": lambda wd: (wd / "labels.h5").exists(),
        "while writing release shards": lambda wd: (wd / "releases" / "r" / "round-0.partial").exists(),
    }
    for point, reached in marks.items():
        wd = tmp_path / point.replace(" ", "-").replace("'", "")
        proc = _spawn(models_dir, wd, three_sources)
        deadline = time.time() + 120
        while proc.poll() is None and not reached(wd) and time.time() < deadline:
            time.sleep(0.002)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, msg, _ = build(converter, three_sources, wd)
        same = (wd / "releases" / "r" / "round-0" / "manifest.json").read_bytes() == want
        ok, why = nothing_lost(wd)
        probe(f"SIGKILL {point}" + ("" if killed else " (finished first)"), code, msg or "resumed", ok and same, why + "; manifest byte-identical to a clean run")
        assert code == 0 and ok and same


def test_two_builds_at_once_give_one_release(models_dir, three_sources, tmp_path, probe):
    wd = tmp_path / "w"
    procs = [_spawn(models_dir, wd, three_sources) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    ok, why = nothing_lost(wd)
    leftovers = [p.name for p in (wd / "releases" / "r").iterdir() if p.name not in ("round-0", ".lock")]
    first = next((e.strip().splitlines()[-1] for _, e in outs if e.strip()), "both exit 0")
    probe("two builds at once, same workdir", max(codes), first if max(codes) else "both exit 0", ok and not leftovers, why + "; no .partial/.tmp left")
    assert codes == [0, 0] and ok and not leftovers


def test_earlier_rounds_stay_byte_identical_after_a_rebuild(converter, tmp_path, probe):
    rng = np.random.default_rng(12)
    make_hmr2_tar(tmp_path / "s.tar", 2, rng, prefix="img", max_persons=2)
    wd = tmp_path / "w"
    assert build(converter, [tmp_path / "s.tar"], wd)[0] == 0
    other = reshard(wd, ReshardConfig("r", 0, samples_per_shard=1, name="r1")).manifest
    frozen = tree_bytes(wd / "releases" / "r")
    code, msg, _ = build(converter, [tmp_path / "s.tar"], wd)  # identical rerun
    same = tree_bytes(wd / "releases" / "r") == frozen
    ok, why = nothing_lost(wd, release="r1")
    probe("rerun of an unchanged build", code, msg or "no-op", same and ok and other["counts"]["persons"] > 0, "round-0 folder byte-identical; resharded copy verifies")
    assert code == 0 and same and ok


def test_no_warning_or_error_line_on_the_normal_path(tmp_path, probe):
    np.savez(tmp_path / "in.npz", poses=np.zeros((2, 72), np.float32), betas=np.zeros((10,), np.float32), trans=np.zeros((2, 3), np.float32))
    res = subprocess.run([sys.executable, "-m", "skelpgt.pipelines.cli", "convert", str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    noisy = [ln for ln in res.stderr.splitlines() if "Warning" in ln or "ERROR" in ln]
    probe("convert: normal path output", res.returncode, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-200:], not noisy, "no warning or ERROR line")
    assert res.returncode == 0 and not noisy, noisy


_REFINE_SCRIPT = """
import sys
from skelpgt.fitting.skelify import Skelify, SkelifyConfig
from skelpgt.pipelines.usecases import RefineConfig, refine_round
refine_round(sys.argv[2], RefineConfig("r", 0, batch_size=8), Skelify.from_models_dir(sys.argv[1], SkelifyConfig(iterations=1)))
"""


def test_two_refines_at_once_give_one_round(built, models_dir, tmp_path, probe):
    wd = tmp_path / "w"
    shutil.copytree(built / "w", wd)
    round0 = tree_bytes(wd / "releases" / "r" / "round-0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _REFINE_SCRIPT, str(models_dir), str(wd)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    ok, why = nothing_lost(wd, round=1)
    with LabelStore(wd / "labels.h5") as st:
        rows = st.rows_of_round(1, ("sample_key", "side", "producer"))
    made = [(k, s) for k, s, p in zip(rows["sample_key"], rows["side"], rows["producer"]) if p == "skelify"]
    once = len(made) == len(set(made)) > 0
    same0 = tree_bytes(wd / "releases" / "r" / "round-0") == round0
    first = next((e.strip().splitlines()[-1] for _, e in outs if e.strip() and max(codes)), "both exit 0")
    probe("two refines at once", max(codes), first, ok and once and same0, why + "; each label refined once; round 0 byte-identical")
    assert codes == [0, 0] and ok and once and same0
