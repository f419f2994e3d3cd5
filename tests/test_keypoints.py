import io
import pickle
import struct

import numpy as np
import pytest
import scipy.sparse
import torch

from skelpgt.fitting.pickles import ModelFileError
from skelpgt.fitting.keypoints import (
    DISTAL_LIMBS,
    FLIP_PERMUTATION,
    HEAD,
    J19_REGRESSOR_FILE,
    KEYPOINT_NAMES,
    MIX_REGRESSOR_FILE,
    PROXIMAL_LIMBS,
    ROOT_INDEX,
    TORSO,
    UNRELIABLE,
    KeypointRegressor,
    flip_keypoints_2d,
    load_regressor,
)

V = 6890

# skel-model.md §5 table, typed in again: keypoint index -> vertex id / mix row / J19 row.
SPEC_VERTEX = {0: 332, 15: 6260, 16: 2800, 17: 4071, 18: 583, 19: 3216, 20: 3226, 21: 3387, 22: 6617, 23: 6624, 24: 6787}
SPEC_MIX = {1: 12, 2: 17, 3: 19, 4: 21, 5: 16, 6: 18, 7: 20, 8: 0, 9: 2, 10: 5, 11: 8, 12: 1, 13: 4, 14: 7}
SPEC_J19 = {25 + r: r for r in range(19)}


def _random_regressors(seed: int = 0, density: float = 0.01):
    rng = np.random.default_rng(seed)
    mix = rng.random((24, V)) * (rng.random((24, V)) < density)
    j19 = rng.random((19, V)) * (rng.random((19, V)) < density)
    mix /= mix.sum(axis=1, keepdims=True)
    j19 /= j19.sum(axis=1, keepdims=True)
    return mix.astype(np.float32), j19.astype(np.float32)


def _slow_reference(mix: np.ndarray, j19: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """HSMR's four steps done one after the other (skel-model.md §5), float64."""
    smplh_ids = [332, 6260, 2800, 4071, 583, 3216, 3226, 3387, 6617, 6624, 6787,
                 2746, 2319, 2445, 2556, 2673, 6191, 5782, 5905, 6016, 6133]  # fmt: skip
    body25 = [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34]
    out = []
    for v in verts.astype(np.float64):
        joints24 = mix.astype(np.float64) @ v  # step 1
        joints45 = np.concatenate([joints24, v[smplh_ids]], axis=0)  # step 2
        op25 = joints45[body25]  # step 3
        out.append(np.concatenate([op25, j19.astype(np.float64) @ v], axis=0))  # step 4
    return np.stack(out)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# --- constants ----------------------------------------------------------------------------------


def test_names_are_unique_and_44():
    assert len(KEYPOINT_NAMES) == 44 and len(set(KEYPOINT_NAMES)) == 44
    assert KEYPOINT_NAMES[ROOT_INDEX] == "gt_mpii_pelvis" and ROOT_INDEX == 39
    assert KEYPOINT_NAMES[0] == "op_nose" and KEYPOINT_NAMES[25] == "gt_right_ankle"


def test_flip_permutation_is_the_spec_one_and_an_involution():
    perm = FLIP_PERMUTATION.tolist()
    assert perm[:25] == [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21]
    assert perm[25:] == [25 + i for i in (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18)]
    assert sorted(perm) == list(range(44))
    assert [perm[p] for p in perm] == list(range(44))


def test_flip_permutation_swaps_left_and_right_names():
    def swap(name: str) -> str:
        return name.replace("left", "@").replace("right", "left").replace("@", "right")

    for i, p in enumerate(FLIP_PERMUTATION.tolist()):
        assert KEYPOINT_NAMES[p] == swap(KEYPOINT_NAMES[i]), (i, p)


def test_part_groups_partition_and_are_flip_closed():
    groups = [TORSO, HEAD, PROXIMAL_LIMBS, DISTAL_LIMBS]
    assert sorted(i for g in groups for i in g) == list(range(44))
    assert TORSO == (1, 2, 5, 8, 9, 12, 27, 28, 33, 34, 37, 39, 40, 41)
    assert HEAD == (0, 15, 16, 17, 18, 38, 42, 43)
    assert PROXIMAL_LIMBS == (3, 6, 10, 13, 26, 29, 32, 35)
    assert DISTAL_LIMBS == (4, 7, 11, 14, 19, 20, 21, 22, 23, 24, 25, 30, 31, 36)
    perm = FLIP_PERMUTATION.tolist()
    for g in groups:
        assert {perm[i] for i in g} == set(g)
    assert set(UNRELIABLE) == {37, 38}


# --- folded matrix ------------------------------------------------------------------------------


def test_vertex_pick_rows_pick_exactly_that_vertex():
    mix, j19 = _random_regressors()
    m = KeypointRegressor.from_matrices(mix, j19).matrix
    assert m.shape == (44, V) and m.dtype == torch.float32
    for k, vid in SPEC_VERTEX.items():
        expected = torch.zeros(V)
        expected[vid] = 1.0
        assert torch.equal(m[k], expected), k


def test_regressor_rows_come_from_the_spec_rows():
    mix, j19 = _random_regressors(1)
    m = KeypointRegressor.from_matrices(mix, j19).matrix
    for k, r in SPEC_MIX.items():
        assert torch.equal(m[k], torch.from_numpy(mix[r])), k
    for k, r in SPEC_J19.items():
        assert torch.equal(m[k], torch.from_numpy(j19[r])), k
    assert len(SPEC_VERTEX) + len(SPEC_MIX) + len(SPEC_J19) == 44


def test_folded_matrix_equals_the_four_steps():
    mix, j19 = _random_regressors(2, density=0.05)
    reg = KeypointRegressor.from_matrices(mix, j19)
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(3, V, 3)).astype(np.float32)
    out = reg(torch.from_numpy(verts))
    assert out.shape == (3, 44, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _slow_reference(mix, j19, verts), atol=1e-5, rtol=0)
    # float64 input is regressed in float64, and extra leading dims are batched too
    out64 = reg(torch.from_numpy(verts).double()[None])
    assert out64.shape == (1, 3, 44, 3) and out64.dtype == torch.float64
    np.testing.assert_allclose(out64[0].numpy(), _slow_reference(mix, j19, verts), atol=1e-9, rtol=0)


def test_forward_rejects_wrong_vertex_count():
    reg = KeypointRegressor.from_matrices(*_random_regressors())
    with pytest.raises(ValueError, match="6890"):
        reg(torch.zeros(2, 6889, 3))


def test_matrix_is_a_buffer_that_moves_but_is_not_checkpointed():
    reg = KeypointRegressor.from_matrices(*_random_regressors())
    assert "matrix" in dict(reg.named_buffers())
    assert "matrix" not in reg.state_dict()
    assert reg.double().matrix.dtype == torch.float64


def test_from_matrices_checks_shapes():
    mix, j19 = _random_regressors()
    with pytest.raises(ValueError, match="mix"):
        KeypointRegressor.from_matrices(mix[:23], j19)
    with pytest.raises(ValueError, match="J19"):
        KeypointRegressor.from_matrices(mix, j19.T)


# --- pickles ------------------------------------------------------------------------------------


def test_sparse_and_dense_pickles_load_identically(tmp_path):
    mix, j19 = _random_regressors(4)
    _write(tmp_path / "dense" / MIX_REGRESSOR_FILE, mix.astype(np.float64))
    _write(tmp_path / "dense" / J19_REGRESSOR_FILE, j19)
    _write(tmp_path / "sparse" / MIX_REGRESSOR_FILE, scipy.sparse.csc_matrix(mix))
    _write(tmp_path / "sparse" / J19_REGRESSOR_FILE, scipy.sparse.coo_matrix(j19))
    dense = KeypointRegressor.from_models_dir(tmp_path / "dense").matrix
    sparse = KeypointRegressor.from_models_dir(str(tmp_path / "sparse")).matrix
    assert torch.equal(dense, sparse)
    assert torch.equal(dense, KeypointRegressor.from_matrices(mix, j19).matrix)


def test_wrong_shaped_pickle_names_the_file_and_shape(tmp_path):
    mix, j19 = _random_regressors()
    _write(tmp_path / MIX_REGRESSOR_FILE, mix)
    _write(tmp_path / J19_REGRESSOR_FILE, j19[:, :6000])
    with pytest.raises(ValueError, match=r"SMPL_to_J19\.pkl.*\(19, 6000\)"):
        KeypointRegressor.from_models_dir(tmp_path)
    _write(tmp_path / J19_REGRESSOR_FILE, scipy.sparse.csr_matrix(mix))  # 24 rows where 19 belong
    with pytest.raises(ValueError, match=r"SMPL_to_J19\.pkl.*\(24, 6890\)"):
        KeypointRegressor.from_models_dir(tmp_path)


def test_non_matrix_pickle_names_the_file(tmp_path):
    path = tmp_path / "reg.pkl"
    _write(path, {"J_regressor": np.zeros((24, V))})
    with pytest.raises(ModelFileError, match=r"reg\.pkl.*dict"):
        load_regressor(path, 24)
    with pytest.raises(ModelFileError, match=r"missing\.pkl: file not found"):
        load_regressor(tmp_path / "missing.pkl", 24)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the regressor pickles made under Python 2 do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_python2_pickle_needs_and_gets_latin1(tmp_path):
    mix, _ = _random_regressors()
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(mix)
    # the raw array buffer is a py2 str with non-ASCII bytes: the default decoding cannot read it
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(buf.getvalue())
    path = tmp_path / "py2.pkl"
    path.write_bytes(buf.getvalue())
    loaded = load_regressor(path, 24)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, mix)


# --- 2D flip ------------------------------------------------------------------------------------


def test_flip_keypoints_2d():
    torch.manual_seed(0)
    kp = torch.rand(3, 44, 3) * torch.tensor([640.0, 480.0, 1.0])
    f = flip_keypoints_2d(kp, 640)
    assert f.shape == kp.shape
    perm = FLIP_PERMUTATION
    torch.testing.assert_close(f[..., 0], 639.0 - kp[:, perm, 0])
    assert torch.equal(f[..., 1:], kp[:, perm, 1:])
    torch.testing.assert_close(flip_keypoints_2d(f, 640), kp, atol=1e-4, rtol=0)  # float32 ulp at 640
    # concrete: the left shoulder at column 10 becomes the right shoulder at column 629 of a 640 px image
    one = torch.zeros(1, 44, 3)
    one[0, 5] = torch.tensor([10.0, 7.0, 0.9])
    out = flip_keypoints_2d(one, 640)
    assert out[0, 2].tolist() == pytest.approx([629.0, 7.0, 0.9])


def test_flip_keypoints_2d_per_sample_width_and_xy_only():
    kp = torch.zeros(2, 44, 2)
    kp[:, 0, 0] = torch.tensor([3.0, 5.0])
    out = flip_keypoints_2d(kp, torch.tensor([100.0, 200.0]))
    assert out[:, 0, 0].tolist() == [96.0, 194.0]
    assert out.shape == (2, 44, 2)
    with pytest.raises(ValueError):
        flip_keypoints_2d(torch.zeros(2, 43, 3), 100)


def test_stand_in_keypoints_sit_on_the_body_and_mirror_with_it(models_dir, skel_model, vertex_mirror):
    """On the synthetic models: keypoints are where their names say, and flip with the mesh."""
    from skelpgt.fitting.mirror import mirror_pose

    regressor = KeypointRegressor.from_models_dir(models_dir)
    rest = regressor(skel_model(torch.zeros(1, 46), torch.zeros(1, 10)).skin_verts)[0]
    name = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    nose = [i for n, i in name.items() if "nose" in n][0]
    assert rest[nose, 1] > 0.3 and rest[nose, 2] > 0.05
    assert (rest[:, 1] > -1.25).all() and (rest[:, 1] < 0.55).all()
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(2, 46, generator=g) * 0.4, torch.randn(2, 10, generator=g)
    kp = regressor(skel_model(q, b).skin_verts)
    kp_mirrored = regressor(skel_model(mirror_pose(q), b).skin_verts)
    expected = kp[:, FLIP_PERMUTATION] * torch.tensor([-1.0, 1.0, 1.0])
    assert (kp_mirrored - expected).abs().max() < 1e-4
