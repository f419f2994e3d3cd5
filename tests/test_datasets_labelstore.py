"""Label store: append-only rows, idempotent resume, lineage, per-round current labels, crash safety, one writer."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from skelpgt.datasets import LabelStore, format_lineage, lineage
from skelpgt.datasets.labelstore import key_hash
from skelpgt.datasets.locks import LockTimeout


def _rows(keys, side="orig", round=0, producer="convert", seed=0, **kw):
    rng = np.random.default_rng(seed)
    n = len(keys)
    return {
        "sample_key": list(keys),
        "side": side,
        "round": round,
        "producer": producer,
        "poses": rng.normal(0, 0.3, (n, 46)).astype(np.float32),
        "betas": rng.normal(0, 1, (n, 10)).astype(np.float32),
        "trans": rng.normal(0, 1, (n, 3)).astype(np.float32),
        "pve_max": rng.uniform(0.01, 0.1, n).astype(np.float32),
        "config_digest": "cfg0",
        "code_version": "0.1.0",
        **kw,
    }


def test_append_ids_and_columns(tmp_path):
    p = tmp_path / "labels.h5"
    rows = _rows(["a/x_0", "a/x_1", "b/y_0"], side=["orig", "orig", "flip"])
    with LabelStore(p, "a") as st:
        ids = st.append(rows)
        assert ids.tolist() == [0, 1, 2]
        ids2 = st.append(_rows(["c/z_0"], seed=1))
        assert ids2.tolist() == [3]
    r = LabelStore(p)
    assert len(r) == 4
    cols = r.get([0, 1, 2])
    assert cols["sample_key"].tolist() == rows["sample_key"] and cols["side"].tolist() == ["orig", "orig", "flip"]
    np.testing.assert_array_equal(cols["poses"], rows["poses"])
    assert cols["producer"].tolist() == ["convert"] * 3 and cols["config_digest"].tolist() == ["cfg0"] * 3
    assert cols["accepted"].all() and (cols["parent_label_id"] == -1).all()
    assert np.isnan(cols["pve_mean"]).all() and cols["created_at"][0].endswith("+00:00")
    with pytest.raises(KeyError):
        r.get([4])
    r.close()


def test_idempotent_append_returns_existing_ids(tmp_path):
    p = tmp_path / "labels.h5"
    with LabelStore(p, "a") as st:
        first = st.append(_rows(["k_0", "k_1"]))
        # a resumed run re-appends the same batch plus new rows: no duplicates, same ids back
        again = st.append(_rows(["k_0", "k_2", "k_1", "k_2"], seed=3))
        assert again.tolist() == [first[0], 2, first[1], 2]
        # another config digest is another label
        other = st.append(_rows(["k_0"], config_digest="cfg1"))
        assert other.tolist() == [3]
        assert len(st) == 4
    with LabelStore(p, "a") as st:  # the dedup survives reopening
        assert st.append(_rows(["k_1", "k_0"], config_digest="cfg1")).tolist() == [4, 3]


def test_changed_source_data_makes_a_new_row_and_old_stores_upgrade(tmp_path):
    import h5py

    p = tmp_path / "labels.h5"
    with LabelStore(p, "a") as st:
        a = st.append(_rows(["k_0", "k_1"], source_digest="src-a"))
        assert st.append(_rows(["k_0", "k_1"], source_digest="src-a")).tolist() == a.tolist()  # rerun: same rows
        b = st.append(_rows(["k_0"], seed=1, source_digest="src-b"))  # the annotations changed
        assert b.tolist() == [2]
        assert st.append(_rows(["k_0"], seed=1, source_digest="src-b")).tolist() == [2]  # the newest version is reused
    with LabelStore(p, "a") as st:  # also after reopening
        assert st.append(_rows(["k_0"], seed=1, source_digest="src-b")).tolist() == [2]
    assert [r["source_digest"] for r in lineage(p, "k_0", "orig")] == ["src-a", "src-b"]
    with h5py.File(p, "a") as f:  # a store from before the column
        del f["labels/source_digest"], f["dicts/source_digest"]
        del f.attrs["n_dict_source_digest"]
    with LabelStore(p) as r:
        assert r.get([0, 2], ("source_digest",))["source_digest"].tolist() == ["", ""]
    with LabelStore(p, "a") as st:  # the writer adds it ('' for the old rows)
        assert st.append(_rows(["k_9"], source_digest="src-c")).tolist() == [3]
    with LabelStore(p) as r:
        assert r.get([0, 3], ("source_digest",))["source_digest"].tolist() == ["", "src-c"]


def test_lineage_of_three_versions_in_order_with_parents(tmp_path):
    p = tmp_path / "labels.h5"
    with LabelStore(p, "a") as st:
        st.append(_rows([f"img{i}_0" for i in range(50)]))  # unrelated rows around the one we follow
        v0 = st.append(_rows(["seq/a_0"], pve_max=0.05))[0]
        st.set_current(0, np.arange(51))
        v1 = st.append(_rows(["seq/a_0"], round=1, producer="skelify", parent_label_id=v0, pve_max=0.04, config_digest="r1"))[0]
        st.append(_rows([f"img{i}_0" for i in range(50)], round=1, producer="skelify", config_digest="r1"))
        st.set_current(1, [v1])
        st.carry_forward(0, 1)
        v2 = st.append(_rows(["seq/a_0"], round=2, producer="skelify", parent_label_id=v1, accepted=False, config_digest="r2"))[0]
        st.carry_forward(1, 2)  # rejected: round 2 keeps v1
    rows = lineage(p, "seq/a_0")
    assert [r["label_id"] for r in rows] == [v0, v1, v2]
    assert [r["parent_label_id"] for r in rows] == [-1, v0, v1]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["producer"] for r in rows] == ["convert", "skelify", "skelify"]
    assert [r["accepted"] for r in rows] == [True, True, False]
    assert [r["current_in_rounds"] for r in rows] == [[0], [1, 2], []]
    assert rows[1]["pve_max"] == pytest.approx(0.04)
    text = format_lineage(rows, "seq/a_0")
    body = text.split("## Chains")[0]
    assert body.index(f"| {v0} |") < body.index(f"| {v1} |") < body.index(f"| {v2} |")
    assert f"#{v2} (skelify, round 2, rejected) ← #{v1} (skelify, round 1) ← #{v0} (convert, round 0)" in text
    assert lineage(p, "seq/a_0_flip") == [] and len(lineage(p, "seq/a_0_orig")) == 3
    assert lineage(p, "nope_0") == []


def test_current_labels_and_counts(tmp_path):
    p = tmp_path / "labels.h5"
    with LabelStore(p, "a") as st:
        o = st.append(_rows(["a_0", "b_0"]))
        f = st.append(_rows(["a_0", "b_0"], side="flip"))
        assert st.set_current(0, np.concatenate([o, f])) == 4
        assert st.set_current(0, o) == 0  # already current: nothing appended
        new = st.append(_rows(["a_0"], round=1, producer="skelify", parent_label_id=o[0], config_digest="r1"))
        st.set_current(1, new)
        assert st.carry_forward(0, 1) == 3
    r = LabelStore(p)
    cur = r.current(1)
    assert list(zip(cur["sample_key"], cur["side"], cur["label_id"])) == [("a_0", "flip", f[0]), ("a_0", "orig", new[0]), ("b_0", "flip", f[1]), ("b_0", "orig", o[1])]
    labs = r.skel_labels(1)
    assert labs["a_0"][0].label_id == new[0] and labs["a_0"][1].label_id == f[0]
    assert r.labels_of_round(0)["label_id"].tolist() == sorted(np.concatenate([o, f]).tolist())
    assert r.rows_of_round(1)["label_id"].tolist() == [new[0]]
    assert r.counts() == [
        {"round": 0, "producer": "convert", "rows": 4, "accepted": 4, "current": 4},
        {"round": 1, "producer": "convert", "rows": 0, "accepted": 0, "current": 3},
        {"round": 1, "producer": "skelify", "rows": 1, "accepted": 1, "current": 1},
    ]
    assert r.rounds() == [0, 1]


def test_bad_rows_raise(tmp_path):
    with LabelStore(tmp_path / "labels.h5", "a") as st:
        with pytest.raises(ValueError, match="side"):
            st.append(_rows(["a_0"], side="left"))
        with pytest.raises(ValueError, match="poses"):
            st.append({**_rows(["a_0"]), "poses": np.zeros((1, 45))})
        with pytest.raises(ValueError, match="parent_label_id"):
            st.append(_rows(["a_0"], parent_label_id=5))
        assert len(st) == 0
        # a failed batch hands out no ids: later keys and rows are numbered from what is on disk
        assert st.append(_rows(["b_0", "a_0"])).tolist() == [0, 1]
    r = LabelStore(tmp_path / "labels.h5")
    assert [h["label_id"] for h in r.history("a_0")] == [1] and [h["label_id"] for h in r.history("b_0")] == [0]
    with pytest.raises(PermissionError):
        LabelStore(tmp_path / "labels.h5").append(_rows(["b_0"]))


def test_single_writer_and_concurrent_reader(tmp_path):
    p = tmp_path / "labels.h5"
    w = LabelStore(p, "a")
    w.append(_rows(["a_0"]))
    with pytest.raises(LockTimeout, match="pid"):
        LabelStore(p, "a", timeout=0.2)
    r = LabelStore(p)  # readers work while the writer is open
    assert len(r) == 1
    w.append(_rows(["b_0", "c_0"]))
    assert len(r) == 3 and r.history("c_0")[0]["label_id"] == 2  # and see committed batches
    w.close()
    LabelStore(p, "a").close()  # lock released on close


def test_history_through_index_and_tail(tmp_path):
    p = tmp_path / "labels.h5"
    keys = [f"ds/{i:05d}_0" for i in range(3000)]
    with LabelStore(p, "a") as st:
        st.append(_rows(keys))
    with LabelStore(p, "a") as st:  # closed store has everything indexed; these rows land in the tail
        st.append(_rows(keys[::1000], round=1, producer="skelify", config_digest="r1"))
        r = LabelStore(p)
        h = r.history("ds/01000_0")
        assert [x["label_id"] for x in h] == [1000, 3001]
    assert key_hash(["ab", "ba"])[0] != key_hash(["ab", "ba"])[1]


_CRASH_CHILD = textwrap.dedent(
    """
    import os, signal, sys, numpy as np, h5py
    from skelpgt.datasets.labelstore import LabelStore
    path, batch, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    st = LabelStore(path, "a", durable=False)
    if kill_after >= 0:
        # die in the middle of the data writes of batch number `kill_after`
        real = h5py.Dataset.__setitem__
        state = {"n": 0}
        def setitem(self, sel, val):
            state["n"] += 1
            if len(st) >= kill_after * batch and state["n"] > 7:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, sel, val)
        h5py.Dataset.__setitem__ = setitem
    b = len(st) // batch
    while True:
        rows = np.arange(b * batch, (b + 1) * batch)
        st.append({"sample_key": [f"k{i}_0" for i in rows], "side": "orig", "round": 0, "producer": "convert",
                   "poses": np.repeat(rows[:, None], 46, 1).astype(np.float32), "betas": np.zeros((batch, 10)),
                   "trans": np.zeros((batch, 3)), "config_digest": "c"})
        print(int(rows[-1]) + 1, flush=True)
        state = {"n": 0} if kill_after >= 0 else None
        b += 1
    """
)


def _check_store(p, at_least):
    r = LabelStore(p)
    n = len(r)
    assert n >= at_least
    cols = r.get(np.arange(n), ("label_id", "poses", "sample_key"))
    assert (cols["label_id"] == np.arange(n)).all()
    assert (cols["poses"][:, 0] == np.arange(n)).all()
    assert cols["sample_key"][-1] == f"k{n - 1}_0"
    r.close()
    return n


def test_store_survives_writer_killed_mid_write(tmp_path):
    p = tmp_path / "labels.h5"
    batch = 2000
    # deterministic: killed inside the HDF5 writes of the 4th batch
    proc = subprocess.run([sys.executable, "-c", _CRASH_CHILD, str(p), str(batch), "3"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    printed = [int(x) for x in proc.stdout.split()]
    assert printed == [2000, 4000, 6000]
    assert os.path.exists(str(p) + ".writing")  # it really died mid-write
    assert _check_store(p, 6000) == 6000  # all flushed rows there, nothing of the batch in flight
    # reopen as writer (recovers the file), continue, ids continue where the commit ended
    with LabelStore(p, "a") as st:
        assert st.recovered == 6000
        assert st.append({"sample_key": ["k6000_0"], "side": "orig", "round": 0, "producer": "convert",
                          "poses": np.full(46, 6000, np.float32), "betas": np.zeros(10), "trans": np.zeros(3),
                          "config_digest": "c"}).tolist() == [6000]  # fmt: skip
    assert not os.path.exists(str(p) + ".writing")
    _check_store(p, 6001)

    # random-time kills while appending continuously
    last = 6001
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD, str(p), str(batch), "-1"], stdout=subprocess.PIPE, text=True)
        seen = [proc.stdout.readline() for _ in range(3)]
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        printed = [int(x) for x in (seen + out.split()) if str(x).strip()]
        last = _check_store(p, max(printed[-1], last))
