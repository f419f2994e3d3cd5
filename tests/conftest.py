"""Shared fixtures: one tiny synthetic models directory per test session."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A complete synthetic models directory (tiny skeleton mesh, full 6890-vertex skin)."""
    from skelpgt.fitting.synthetic import make_synthetic_models

    return make_synthetic_models(tmp_path_factory.mktemp("models"), tiny=True)


@pytest.fixture(scope="session")
def models_dir_b(tmp_path_factory):
    """Family B of the stand-ins (another skin, SMPL regressor and skinning), tiny skeleton mesh."""
    from skelpgt.fitting.synthetic import make_synthetic_models

    return make_synthetic_models(tmp_path_factory.mktemp("models_b"), tiny=True, family="B")


@pytest.fixture(scope="module", params=["A", "B"])
def family_dir(request, models_dir, models_dir_b):
    """The models directory of each independent stand-in family (a test using it runs on both)."""
    return {"A": models_dir, "B": models_dir_b}[request.param]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A temporary Prefect API (SQLite) for the session's flow runs (started once: each start costs ~15 s)."""
    import os

    os.environ.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def skel_model(models_dir):
    from skelpgt.fitting.skel import SKEL

    return SKEL.from_file(models_dir, gender="male")


@pytest.fixture(scope="module")
def vertex_mirror(skel_model):
    """Index of each template vertex's mirror image (x → −x), found geometrically (of the module's `skel_model`)."""
    from scipy.spatial import cKDTree

    v = skel_model.v_template.double().numpy()
    dist, idx = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    assert dist.max() < 1e-6, "stand-in template is not mirror-symmetric"
    return torch.from_numpy(idx)


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(tmp_path_factory, models_dir):
    """Keep the suite out of the user's cache and default models folder."""
    import os

    saved = {k: os.environ.get(k) for k in ("SKELPGT_CACHE_DIR", "SKELPGT_MODELS_DIR")}
    os.environ["SKELPGT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["SKELPGT_MODELS_DIR"] = str(models_dir)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the probe table of tests/test_probes.py (probe → exit code → first message line → nothing lost)."""
    rows = config.__dict__.get("_skelpgt_probes")
    if not rows:
        return
    tr = terminalreporter
    tr.section("probe table")
    tr.write_line("| probe | exit | first message line | nothing lost | checked |")
    tr.write_line("|---|---|---|---|---|")
    for name, code, first, ok, checked in rows:
        tr.write_line(f"| {name} | {code} | {first.replace('|', '/')} | {ok} | {checked} |")
