"""Training data: crop geometry, flip consistency (image, keypoints, label), determinism."""

import numpy as np
import pytest
import torch
from skelpgt.fitting.camera import fit_camera_error
from skelpgt.fitting.keypoints import FLIP_PERMUTATION, flip_keypoints_normalised
from skelpgt.model.data import (
    DataConfig,
    ReleaseBatches,
    flip_person,
    identity_augmentation,
    person_stream,
    prepare_sample,
    release_persons,
)  # fmt: skip
from skelpgt.model.losses import BodyModel
from skelpgt.model.network import pelvis_frame
from skelpgt.model.testing import make_skel_release


@pytest.fixture(scope="module")
def release(models_dir, tmp_path_factory):
    return make_skel_release(tmp_path_factory.mktemp("rel"), models_dir, n_images=10, seed=3, p_invalid=0.3)


@pytest.fixture(scope="module")
def body(models_dir):
    return BodyModel(models_dir)


@pytest.fixture(scope="module")
def persons(release, body):
    frame = tuple(map(tuple, pelvis_frame(body.skel).double().tolist()))
    cfg = DataConfig(release=str(release), split=None, pelvis_frame=frame)
    return cfg, list(release_persons(cfg))


def _aug(flip, tx=0.0, ty=0.0, rot=0.0, scale=1.0):
    a = identity_augmentation()
    a.update(flip=flip, tx=tx, ty=ty, rot_deg=rot, scale=scale)
    return a


def test_flip_twice_is_identity(persons):
    _, ps = persons
    s = ps[0]
    f = flip_person(s)
    assert not np.array_equal(np.asarray(f["image"]), np.asarray(s["image"]))
    assert np.array_equal(f["orig_poses"], s["flip_poses"]) and np.array_equal(f["flip_poses"], s["orig_poses"])
    ff = flip_person(f)
    assert np.array_equal(np.asarray(ff["image"]), np.asarray(s["image"]))
    np.testing.assert_allclose(ff["keypoints_2d"], s["keypoints_2d"], atol=1e-4)
    np.testing.assert_allclose(ff["keypoints_3d"], s["keypoints_3d"], atol=1e-6)
    np.testing.assert_allclose(ff["center"], s["center"], atol=1e-4)
    for k in ("poses", "betas", "pve_max", "label_id"):
        assert np.array_equal(ff[f"orig_{k}"], s[f"orig_{k}"], equal_nan=True)


def test_flipped_crop_is_mirrored_crop(persons):
    cfg, ps = persons
    s = ps[1]
    a = prepare_sample(s, _aug(True, tx=0.01, ty=-0.015, rot=17.0, scale=1.1), cfg)
    b = prepare_sample(s, _aug(False, tx=-0.01, ty=-0.015, rot=-17.0, scale=1.1), cfg)
    assert torch.allclose(a["img"], b["img"].flip(-1), atol=1e-3)
    assert torch.allclose(a["kp2d"], flip_keypoints_normalised(b["kp2d"]), atol=1e-5)
    kp3 = b["kp3d"][FLIP_PERMUTATION]
    kp3[:, 0] = -kp3[:, 0]
    assert torch.allclose(a["kp3d"], kp3, atol=1e-5)
    # the crop keypoints land on the discs drawn into the image: disc pixels are bright
    u = ((a["kp2d"][:, 0] + 0.5) * 256 - 32 - 0.5).round().long().clamp(0, 191)
    v = ((a["kp2d"][:, 1] + 0.5) * 256 - 0.5).round().long().clamp(0, 255)
    assert a["img"][:, v, u].amax(0).mean() > a["img"].amax(0).mean()


@pytest.mark.parametrize("flip,rot", [(False, 0.0), (True, 0.0), (True, 25.0), (False, -40.0)])
def test_label_matches_keypoints_after_augmentation(persons, body, flip, rot):
    """Chosen side's label, projected with its best camera, reproduces the (flipped/rotated) crop keypoints."""
    cfg, ps = persons
    valid = [s for s in ps if np.isfinite(s["orig_pve_max"]) and s["orig_pve_max"] < 0.06]
    outs = [prepare_sample(s, _aug(flip, rot=rot, tx=0.01, scale=0.9), cfg) for s in valid[:4]]
    assert all(o["has_pose"] == 1 for o in outs)
    q = torch.stack([o["q"] for o in outs])
    betas = torch.stack([o["betas"] for o in outs])
    kp2d = torch.stack([o["kp2d"] for o in outs])
    with torch.no_grad():
        kp3d, _ = body(q, betas)
    err = fit_camera_error(kp3d, kp2d)
    assert err.max() < 2e-3, err
    # the other side's label does not fit: the check has teeth
    if flip:
        wrong = torch.stack([torch.as_tensor(s["orig_poses"]) for s in valid[:4]])
        with torch.no_grad():
            kp_wrong, _ = body(wrong, betas)
        assert fit_camera_error(kp_wrong, kp2d).min() > 5 * err.max()


def test_invalid_labels_and_determinism(release):
    cfg = DataConfig(release=str(release), split=None, batch_size=5, seed=11)
    b1 = next(iter(ReleaseBatches(cfg)))
    b2 = next(iter(ReleaseBatches(cfg)))
    for k in b1:
        assert torch.equal(b1[k], b2[k]), k
    inval = b1["has_pose"] == 0
    assert torch.all(b1["q"][inval] == 0) and torch.all(b1["betas"][inval] == 0) and torch.all(b1["has_betas"] == 1)
    # resuming the stream at batch 3 gives the same batch as running through 0..3
    it = iter(ReleaseBatches(cfg))
    full = [next(it) for _ in range(4)]
    late = next(iter(ReleaseBatches(cfg, start_batch=3)))
    assert all(torch.equal(full[3][k], late[k]) for k in late)
    # two DataLoader workers produce the same sequence
    loader = torch.utils.data.DataLoader(ReleaseBatches(cfg), batch_size=None, num_workers=2)
    it2 = iter(loader)
    par = [next(it2) for _ in range(4)]
    assert all(torch.equal(full[i][k], par[i][k]) for i in range(4) for k in late)


def test_multi_release_mixing(release, models_dir, tmp_path):
    other = make_skel_release(tmp_path, models_dir, n_images=4, seed=8, name="other")
    cfg = DataConfig(split=None, seed=1, mix=((str(release), 3.0), (str(other), 1.0)))
    stream = person_stream(cfg)
    got = [next(stream) for _ in range(40)]
    src = [s["source_release"] for _, _, s in got]
    n_other = sum(p == str(other) for p in src)
    assert 3 <= n_other <= 20 and [n for n, _, _ in got] == list(range(40))
    again = person_stream(cfg)
    assert [s["__key__"] for _, _, s in got] == [next(again)[2]["__key__"] for _ in range(40)]
    only_first = person_stream(DataConfig(split=None, mix=((str(release), 1.0), (str(other), 0.0))))
    assert all(next(only_first)[2]["source_release"] == str(release) for _ in range(15))


def test_extreme_crop_boxes_the_kept_keypoints(persons):
    """Each extreme crop (§2.3) is the enlarged box of its kept keypoints; partial visibility limits the choice."""
    from skelpgt.model.data import _CROPS, _FULL_CHOICE, extreme_crop_box

    _, ps = persons
    kp = np.asarray(ps[0]["keypoints_2d"], dtype=np.float64)
    cum = np.cumsum([p for _, p in _FULL_CHOICE])
    for (name, _), lo in zip(_FULL_CHOICE, np.concatenate(([0.0], cum[:-1]))):
        centre, size = extreme_crop_box(kp, (lo + 0.01) / cum[-1])
        kept, enlarge = _CROPS[name]
        pts = kp[list(kept), :2]
        np.testing.assert_allclose(centre, (pts.min(0) + pts.max(0)) / 2)
        assert size == pytest.approx((pts.max(0) - pts.min(0)).max() * 1.2 * enlarge)
    legless = kp.copy()
    legless[9:15, 2] = 0.0  # only the upper body is visible: never a leg crop
    for u in np.linspace(0, 0.99, 25):
        centre, _ = extreme_crop_box(legless, u)
        assert centre[1] <= kp[[9, 12], 1].max() + 1e-9
    hidden = kp.copy()
    hidden[3, 2] = 0.0  # neither the full nor the upper body is visible: the box stays
    assert extreme_crop_box(hidden, 0.5) is None


def test_extreme_crop_keeps_keypoints_consistent(persons):
    cfg, ps = persons
    a = identity_augmentation()
    a["extreme"] = 0.05  # "hips" on a fully visible person
    out = prepare_sample(ps[0], a, cfg)
    base = prepare_sample(ps[0], identity_augmentation(), cfg)
    assert not torch.allclose(out["kp2d"], base["kp2d"])
    torch.testing.assert_close(out["kp2d"][:, 2], base["kp2d"][:, 2])  # keypoints are moved, never masked
    torch.testing.assert_close(out["q"], base["q"])
