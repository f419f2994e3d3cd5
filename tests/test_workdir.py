"""The work folder's layout is spelled in one place (`datasets/workdir.py`), and the data layer imports nothing above it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from skelpgt.datasets.workdir import Workdir

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("fitting", "datasets", "model", "pipelines")


def test_workdir_paths(tmp_path):
    wd = Workdir(tmp_path)
    assert os.fspath(wd) == str(tmp_path) and Workdir.of(wd) is wd and Workdir.of(str(tmp_path)) == wd
    assert wd.labels == tmp_path / "labels.h5"
    assert wd.round("syn", 2) == tmp_path / "releases" / "syn" / "round-2"
    assert wd.staging("syn", 2) == tmp_path / "releases" / "syn" / "round-2.partial"
    assert wd.checkpoints("syn", 1) == tmp_path / "checkpoints" / "syn" / "round-1"
    assert wd.predictions("syn", 1, "ab" * 32) == tmp_path / "predictions" / "syn" / f"round-1-{'ab' * 8}.npz"
    assert wd.prediction_parts("syn", 1, "ab" * 32) == tmp_path / "predictions" / "syn" / f"round-1-{'ab' * 8}.parts"
    assert wd.candidates("syn", 3, "d1g") == tmp_path / "refine" / "syn" / "round-3-d1g"
    assert wd.synthetic_source(48, 0) == tmp_path / "source" / "synthetic-48-0"
    # same-named shards of two folders get two conversion files
    a, b = wd.conversion("syn", tmp_path / "A" / "s-000000.tar"), wd.conversion("syn", tmp_path / "B" / "s-000000.tar")
    assert a != b and a.parent == b.parent == tmp_path / "work" / "syn" / "round-0" and a.name.startswith("s-000000-")


def test_workdir_refuses_a_path_as_release_name_and_a_release_without_rounds(tmp_path):
    wd = Workdir(tmp_path)
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="invalid release name"):
            wd.round(bad, 0)
    with pytest.raises(FileNotFoundError, match="run build-pseudo-gt first"):
        wd.latest_round("syn")
    (wd.round("syn", 0)).mkdir(parents=True)
    (wd.round("syn", 0) / "manifest.json").write_text("{}")
    (wd.round("syn", 3)).mkdir(parents=True)  # no manifest: not a complete round
    assert wd.rounds("syn") == [0] and wd.latest_round("syn") == 0 and wd.latest_round("syn", 5) == 5


def _sources():
    for folder in PACKAGES:
        for path in sorted((PROJECT / folder).rglob("*.py")):
            yield path, path.read_text(encoding="utf-8")


def test_the_layout_is_spelled_only_in_workdir_py():
    """No other module builds `releases/…`, `labels.h5`, `checkpoints/…`, `predictions/…` or `refine/…` paths itself."""
    spelled = re.compile(r'/ "(releases|labels\.h5|checkpoints|predictions|refine|work|source)"')
    found = [f"{path.relative_to(PROJECT)}:{n}" for path, text in _sources() if path.name != "workdir.py"
             for n, line in enumerate(text.splitlines(), 1) if spelled.search(line)]  # fmt: skip
    assert not found, found


def test_datasets_and_fitting_import_nothing_above_them():
    """Import direction: pipelines → model → datasets → fitting (README "Layout")."""
    below = {"fitting": set(), "datasets": {"fitting"}, "model": {"datasets", "fitting"}}
    wrong = []
    for path, text in _sources():
        folder = path.relative_to(PROJECT).parts[0]
        if folder not in below:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skelpgt."):
                target = node.module.split(".")[1]
                if target != folder and target not in below[folder]:
                    wrong.append(f"{path.relative_to(PROJECT)}:{node.lineno} imports skelpgt.{target}")
    assert not wrong, wrong
