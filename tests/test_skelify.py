"""SKELify: recovers 2D keypoints from a perturbed start; unit-consistent scores; bad keypoints."""

from __future__ import annotations

import pytest
import torch

from skelpgt.datasets.poses import sample_skel_poses
from skelpgt.fitting.camera import normalise_keypoints, project
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.limits import wrap_angles
from skelpgt.fitting.skelify import Skelify, SkelifyConfig


@pytest.fixture(scope="module")
def skelify(models_dir, skel_model):
    return Skelify(skel_model, KeypointRegressor.from_models_dir(models_dir))


def _person(skelify, n: int, seed: int):
    """Known SKEL people seen by the crop camera: (q, β, t, keypoints in normalised crop units)."""
    g = torch.Generator().manual_seed(seed)
    q = sample_skel_poses(n, seed) * 0.6
    q[:, :3] = torch.tensor([3.14159, 0.0, 0.0]) + torch.randn(n, 3, generator=g) * 0.2  # upright, y-down camera
    betas = torch.randn(n, 10, generator=g) * 0.5
    t = torch.tensor([0.03, -0.02, 40.0]).expand(n, 3) + torch.randn(n, 3, generator=g) * torch.tensor([0.05, 0.05, 2.0])
    kp = project(skelify.model_keypoints(q, betas), t)
    return q, betas, t, torch.cat((kp, torch.ones(n, 44, 1)), dim=-1)


@pytest.mark.parametrize("camera", ["crop", "perspective"])
def test_linearization_matches_forward_mode_ad(skelify, camera):
    from ad_reference import forward_mode_jacobian

    q, betas, t, kp = _person(skelify, 2, seed=0)
    if camera == "crop":
        goal = skelify._goal(kp)
    else:  # an off-centre person seen by a wide camera: focal 1.5 crop sides, principal point off the crop
        goal = skelify._goal(kp, torch.tensor([1.5, 2.0]), torch.tensor([[0.4, -0.2], [-0.3, 0.1]]), q + 0.05)
        t = t * torch.tensor([1.0, 1.0, 0.1])
    x = torch.cat((q * 0.9, betas * 0.5, t + 0.1), dim=1)
    res, jac = skelify._linearize(x, goal)
    m = skelify._residuals(x, goal).shape[1]
    torch.testing.assert_close(res[:, :m], skelify._residuals(x, goal), atol=1e-5, rtol=1e-4)
    reference = forward_mode_jacobian(skelify._residuals, x, goal)
    torch.testing.assert_close(jac[:, :m], reference, atol=1e-3, rtol=1e-3)
    # The damping-floor rows: zero residual, √μ·I (they change the step, not the cost).
    assert torch.equal(res[:, m:], torch.zeros(2, 59))
    torch.testing.assert_close(jac[:, m:], torch.eye(59).expand(2, 59, 59) * skelify.config.damping_floor**0.5)


def test_pair_moment_keypoints_equal_the_regressed_skin(skelify, skel_model):
    """The fitting path (no skin posed) gives the keypoints of the full model: regressor · skin."""
    q, betas, _, _ = _person(skelify, 4, seed=6)
    fast, _ = skelify._fast_keypoints(*skelify._kinematics(q, betas), betas)
    torch.testing.assert_close(fast, skelify.keypoints(skel_model(q, betas).skin_verts), atol=2e-5, rtol=0)


def test_recovers_the_keypoints_of_a_known_pose_from_a_perturbed_start(skelify):
    q, betas, t, kp = _person(skelify, 6, seed=1)
    g = torch.Generator().manual_seed(2)
    start = q + torch.randn(q.shape, generator=g) * 0.15
    before = skelify.evaluate(kp, start, torch.zeros_like(betas))
    after = skelify.fit(kp, start, torch.zeros_like(betas))
    assert after.reason == [""] * 6
    assert (after.kp2d_err < 4e-3).all(), after.kp2d_err
    assert (after.kp2d_err < before.kp2d_err / 4).all()
    assert (after.score < before.score).all()


def test_scores_do_not_depend_on_the_crop_size_in_pixels(skelify):
    """The same person cropped at 256 px and at 512 px gets the same fit and the same decision."""
    q, betas, t, kp = _person(skelify, 3, seed=3)
    results = []
    for side in (256.0, 512.0):
        center = torch.tensor([[side / 2, side / 2]]).expand(3, 2)
        scale = torch.full((3, 2), side / 200)
        pixels = torch.cat((kp[..., :2] * side + center[:, None], kp[..., 2:]), dim=-1)
        normalised = normalise_keypoints(pixels, center, scale)
        current = skelify.evaluate(normalised, q + 0.1, betas)
        candidate = skelify.fit(normalised, q + 0.1, betas)
        results.append((current.score, candidate.score, candidate.score < current.score))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
    assert torch.equal(results[0][2], results[1][2])


def test_bad_keypoints_are_skipped_with_a_reason(skelify):
    q, betas, t, kp = _person(skelify, 3, seed=4)
    kp[1, :, 2] = 0.0
    kp[2, 7, 0] = float("nan")
    result = skelify.fit(kp, q + 0.05, betas)
    assert result.reason[0] == "" and "confident keypoints" in result.reason[1] and "NaN" in result.reason[2]
    assert torch.isnan(result.kp2d_err[1:]).all() and torch.isfinite(result.kp2d_err[0])
    torch.testing.assert_close(result.poses[1:], wrap_angles(q[1:] + 0.05), atol=1e-6, rtol=0)


def test_a_person_with_missing_foot_keypoints_still_converges(skelify):
    """DOFs no confident keypoint sees (toes, subtalar, wrists) must not stall the whole fit."""
    q, betas, _, kp = _person(skelify, 4, seed=7)
    kp[:, [11, 14, 19, 20, 21, 22, 23, 24], 2] = 0.0  # both ankles and all six foot keypoints missing
    g = torch.Generator().manual_seed(8)
    start = q + torch.randn(q.shape, generator=g) * 0.15
    before = skelify.evaluate(kp, start, torch.zeros_like(betas))
    after = skelify.fit(kp, start, torch.zeros_like(betas))
    assert (after.kp2d_err < before.kp2d_err / 4).all(), (before.kp2d_err, after.kp2d_err)


def test_config_is_used(skelify, skel_model):
    lazy = Skelify(skel_model, skelify.keypoints, SkelifyConfig(iterations=0))
    q, betas, t, kp = _person(lazy, 2, seed=5)
    result = lazy.fit(kp, q + 0.1, betas, t)
    torch.testing.assert_close(result.poses, wrap_angles(q + 0.1), atol=1e-6, rtol=0)


def _perspective_person(skelify, n: int, seed: int):
    """Known SKEL people seen off-centre by a wide full-image camera: (q, β, t, kp, focal, principal), normalised crop units."""
    q, betas, _, _ = _person(skelify, n, seed)
    focal = torch.full((n,), 2.5)  # crop sides: a 0.4-m-wide crop of a 2.5-m-away person
    principal = torch.tensor([0.6, -0.4]).expand(n, 2)  # the image centre is 0.6, 0.4 crop sides away
    t = torch.tensor([-0.6, 0.4, 5.0]).expand(n, 3).clone()  # puts the pelvis near the crop centre
    kp = project(skelify.model_keypoints(q, betas), t, focal, principal)
    return q, betas, t, torch.cat((kp, torch.ones(n, 44, 1)), dim=-1), focal, principal


def test_crop_intrinsics_and_translation_follow_the_full_image_camera():
    from skelpgt.fitting.camera import crop_intrinsics, full_image_intrinsics, solve_translation

    focal, principal = full_image_intrinsics(torch.tensor([640.0]), torch.tensor([480.0]))
    torch.testing.assert_close(focal, torch.tensor([800.0]))
    torch.testing.assert_close(principal, torch.tensor([[320.0, 240.0]]))
    f_n, p_n = crop_intrinsics(focal, principal, torch.tensor([[100.0, 300.0]]), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(f_n, torch.tensor([2.0]))  # 800 px / 400 px
    torch.testing.assert_close(p_n, torch.tensor([[0.55, -0.15]]))
    # Pixel projection, then normalisation = the normalised camera's projection.
    points, t = torch.randn(1, 44, 3) * 0.3, torch.tensor([[0.5, -0.2, 6.0]])
    cam = points + t[:, None]
    pixels = focal * cam[..., :2] / cam[..., 2:] + principal[:, None]
    torch.testing.assert_close(project(points, t, f_n, p_n), (pixels - torch.tensor([[100.0, 300.0]])) / 400.0, atol=1e-5, rtol=1e-5)
    kp = torch.cat((project(points, t, f_n, p_n), torch.ones(1, 44, 1)), dim=-1)
    torch.testing.assert_close(solve_translation(points, kp, f_n, p_n), t, atol=1e-3, rtol=1e-4)


def test_a_perspective_camera_fits_an_off_centre_person_the_crop_camera_cannot(skelify):
    q, betas, _, kp, focal, principal = _perspective_person(skelify, 4, seed=9)
    truth = skelify.evaluate(kp, q, betas, None, focal, principal)
    assert (truth.kp2d_err < 1e-4).all(), truth.kp2d_err  # the true pose under its camera: no error
    assert (skelify.evaluate(kp, q, betas).kp2d_err > 10 * truth.kp2d_err + 5e-3).all()  # under the crop camera: a floor
    g = torch.Generator().manual_seed(10)
    start = q + torch.randn(q.shape, generator=g) * 0.1
    after = skelify.fit(kp, start, betas, None, focal, principal)
    before = skelify.evaluate(kp, start, betas, None, focal, principal)
    assert (after.kp2d_err < before.kp2d_err / 4).all(), (before.kp2d_err, after.kp2d_err)


def test_perspective_scores_do_not_depend_on_the_crop_size_in_pixels(skelify):
    """The same image at 1× and 2× resolution: intrinsics and crop both scale, the normalised camera and decisions do not."""
    from skelpgt.fitting.camera import crop_intrinsics, full_image_intrinsics

    q, betas, t, kp, _, _ = _perspective_person(skelify, 3, seed=11)
    results = []
    for k in (1.0, 2.0):
        f_px, c_px = full_image_intrinsics(torch.full((3,), 640.0 * k), torch.full((3,), 480.0 * k))
        center, scale = torch.tensor([[150.0, 100.0]]).expand(3, 2) * k, torch.full((3, 2), 1.28 * k)
        focal, principal = crop_intrinsics(f_px, c_px, center, scale)
        kp = torch.cat((project(skelify.model_keypoints(q, betas), t, focal, principal), kp[..., 2:]), dim=-1)
        current = skelify.evaluate(kp, q + 0.1, betas, None, focal, principal)
        candidate = skelify.fit(kp, q + 0.1, betas, None, focal, principal)
        accept = skelify.accept(kp, current, candidate.poses, candidate.betas, candidate.kp2d_err, candidate.score)
        results.append((current.score, candidate.score, accept))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
    assert torch.equal(results[0][2], results[1][2])


def test_acceptance_guard_rejects_a_large_3d_move_for_a_small_2d_gain(skelify):
    q, betas, _, kp, focal, principal = _perspective_person(skelify, 2, seed=12)
    current = skelify.evaluate(kp, q, betas, None, focal, principal)
    current.kp2d_err = current.kp2d_err + torch.tensor([1e-3, 0.2])  # person 0: a tiny 2D gain; person 1: a large one
    current.score = current.score + torch.tensor([1e-3, 0.2])
    moved = q.clone()
    moved[:, 3:] += 0.3  # every body joint turned by 0.3 rad: a large 3D change
    cand = skelify.evaluate(kp, moved, betas, None, focal, principal)
    cand.kp2d_err, cand.score = current.kp2d_err - torch.tensor([5e-4, 0.15]), current.score - torch.tensor([5e-4, 0.15])
    assert skelify.accept(kp, current, moved, betas, cand.kp2d_err, cand.score).tolist() == [False, True]
    # A candidate that stays (almost) where the label is needs only a lower score.
    assert skelify.accept(kp, current, q + 1e-4, betas, cand.kp2d_err, cand.score).tolist() == [True, True]
    assert skelify.accept(kp, current, q + 1e-4, betas, current.kp2d_err, current.score).tolist() == [False, False]


def test_fit_focal_recovers_each_images_focal_from_its_people_and_resists_one_noisy_person(skelify):
    """Three 640×480 images (focal 500, 700, 1000 px), four known SKEL people each, spread over the
    image at 3–6 m: the per-image focal fitted from exact projections is within 0.5 % of the truth,
    starting from CLIFF's √(W² + H²) = 800 px; with 10-px noise on one person's keypoints in the
    2-person image it stays within 0.5 % (measured: 0.0004 %), closer than a plain least-squares
    focal with equal weights (0.3 % off). Bodies that fit at no focal (wrong labels) leave the
    focal near its start (measured 908 px, 2133 px without the pull)."""
    import math

    from skelpgt.fitting.camera import fit_focal

    true_focal = torch.tensor([500.0, 700.0, 1000.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    n = len(group)
    q, betas, _, _ = _person(skelify, n, seed=11)
    points = skelify.model_keypoints(q, betas).double()
    g = torch.Generator().manual_seed(2)
    depth = 3.0 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)
    # Image positions across the frame (px from the principal point), back-projected to the depth.
    uv = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([520.0, 360.0], dtype=torch.float64)
    f = true_focal.double()[group]
    t = torch.cat((uv / f[:, None] * depth[:, None], depth[:, None]), dim=-1) - points[:, 39]
    xy = project(points, t, f)
    kp = torch.cat((xy, torch.ones(n, 44, 1, dtype=torch.float64)), dim=-1)
    size = (xy.amax(1) - xy.amin(1)).amax(-1) * 1.2  # the crop side, px
    start = torch.full((3,), 800.0)
    exact = fit_focal(points, kp, size, group, start)
    torch.testing.assert_close(exact, true_focal, rtol=5e-3, atol=0)
    noisy = kp.clone()
    noisy[9, :, :2] += torch.randn(44, 2, generator=g, dtype=torch.float64) * 10.0
    robust = fit_focal(points, noisy, size, group, start)
    plain = fit_focal(points, noisy, size, group, start, floor=1e3, prior=0.0)  # floor ≫ errors: every person weighs the same
    assert abs(float(robust[2]) / 1000.0 - 1) < 5e-3 and abs(float(robust[2]) / 1000.0 - 1) < abs(float(plain[2]) / 1000.0 - 1), (robust, plain)
    torch.testing.assert_close(robust[:2], exact[:2])  # other images are unaffected
    # Bodies that match their keypoints at no focal (labels 0.25 rad off everywhere): the pull
    # towards the start keeps the image's focal near it instead of at the search's edge.
    wrong = skelify.model_keypoints(q[8:] + torch.randn(2, 46, generator=g) * 0.25, betas[8:]).double()
    pulled = fit_focal(wrong, kp[8:], size[8:], torch.zeros(2, dtype=torch.long), start[:1])
    free = fit_focal(wrong, kp[8:], size[8:], torch.zeros(2, dtype=torch.long), start[:1], prior=0.0)
    assert 800.0 / 1.3 < float(pulled) < 800.0 * 1.3 and abs(math.log(float(pulled) / 1000)) < abs(math.log(float(free) / 1000)), (pulled, free)
    # A person with fewer than 3 usable keypoints does not count; an image with none keeps its start.
    unseen = kp.clone()
    unseen[8:, :, 2] = 0.0
    assert float(fit_focal(points, unseen, size, group, start)[2]) == 800.0
