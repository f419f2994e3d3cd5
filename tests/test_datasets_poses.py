"""Pose samplers used by the synthetic data and the benchmarks."""

import torch

from skelpgt.datasets.poses import sample_skel_poses, sample_smpl_poses
from skelpgt.fitting.limits import LIMIT_QIDS, mirror_consistent_bounds
from skelpgt.fitting.mirror import mirror_smpl_pose


def test_smpl_poses_are_deterministic_and_left_right_balanced():
    a, b = sample_smpl_poses(4000, seed=3), sample_smpl_poses(4000, seed=3)
    assert a.shape == (4000, 72) and torch.equal(a, b)
    assert not torch.equal(a, sample_smpl_poses(4000, seed=4))
    # The mirrored distribution matches: per-component means of a sample and its mirror agree.
    body = slice(3, 72)
    assert (a[:, body].mean(0) - mirror_smpl_pose(a)[:, body].mean(0)).abs().max() < 0.05
    knee_flexion = a.view(-1, 24, 3)[:, 4, 0]
    assert knee_flexion.min() >= 0 and knee_flexion.max() > 1.5


def test_hard_fraction_sets_hard_cases():
    easy = sample_smpl_poses(400, seed=0, hard_fraction=0.0).view(-1, 24, 3)
    hard = sample_smpl_poses(400, seed=0, hard_fraction=1.0).view(-1, 24, 3)
    assert (hard[:, 4, 0] > 2.2).float().mean() > 0.1  # deep squats' knees
    assert (easy[:, 4, 0] > 2.2).sum() == 0


def test_skel_poses_stay_inside_the_limits():
    q = sample_skel_poses(500, seed=1)
    bounds = mirror_consistent_bounds().float()
    limited = q[:, list(LIMIT_QIDS)]
    assert ((limited >= bounds[:, 0]) & (limited <= bounds[:, 1])).all()
