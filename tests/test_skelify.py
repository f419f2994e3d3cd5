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


def test_linearization_matches_forward_mode_ad(skelify):
    from ad_reference import forward_mode_jacobian

    q, betas, t, kp = _person(skelify, 2, seed=0)
    goal = skelify._goal(kp)
    x = torch.cat((q * 0.9, betas * 0.5, t + 0.1), dim=1)
    res, jac = skelify._linearize(x, goal)
    torch.testing.assert_close(res, skelify._residuals(x, goal), atol=1e-5, rtol=1e-4)
    reference = forward_mode_jacobian(skelify._residuals, x, goal)
    torch.testing.assert_close(jac, reference, atol=1e-3, rtol=1e-3)


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


def test_config_is_used(skelify, skel_model):
    lazy = Skelify(skel_model, skelify.keypoints, SkelifyConfig(iterations=0))
    q, betas, t, kp = _person(lazy, 2, seed=5)
    result = lazy.fit(kp, q + 0.1, betas, t)
    torch.testing.assert_close(result.poses, wrap_angles(q + 0.1), atol=1e-6, rtol=0)
