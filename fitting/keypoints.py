"""HSMR's 44-keypoint set (25 OpenPose BODY_25 + 19 SPIN "GT" joints) regressed from SKEL skin vertices.

Source: docs/reference/skel-model.md §5 (construction) and hsmr-pipeline.md §1.7 (flip), §2.3 (pixel
flip), §3.2 (part groups). HSMR builds the 44 joints in four steps (24 "mix" regressor rows, 21
SMPL-H vertex picks, BODY_25 selection, 19 J19 rows); all four are linear in the skin vertices, so
here they are folded into one (44, 6890) matrix and the keypoints are a single batched matmul.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from .pickles import ModelFileError, dense, load_model_pickle

__all__ = [
    "NUM_KEYPOINTS",
    "NUM_VERTICES",
    "KEYPOINT_NAMES",
    "FLIP_PERMUTATION",
    "TORSO",
    "HEAD",
    "PROXIMAL_LIMBS",
    "DISTAL_LIMBS",
    "UNRELIABLE",
    "ROOT_INDEX",
    "MIX_REGRESSOR_FILE",
    "J19_REGRESSOR_FILE",
    "VERTEX_KEYPOINT_IDS",
    "BODY25_FROM_45",
    "load_regressor",
    "fold_regressors",
    "KeypointRegressor",
    "flip_keypoints_2d",
    "flip_keypoints_normalised",
]

NUM_KEYPOINTS = 44
NUM_VERTICES = 6890

MIX_REGRESSOR_FILE = "hsmr/J_regressor_SKEL_mix_MALE.pkl"
J19_REGRESSOR_FILE = "hsmr/SMPL_to_J19.pkl"

# Step 2: smplx VertexJointSelector's SMPL-H vertex ids, in its order; they become rows 24..44 of
# the intermediate 45-joint set.
VERTEX_KEYPOINT_IDS: tuple[int, ...] = (
    332, 6260, 2800, 4071, 583,  # nose, right eye, left eye, right ear, left ear
    3216, 3226, 3387,  # left big toe, left small toe, left heel
    6617, 6624, 6787,  # right big toe, right small toe, right heel
    2746, 2319, 2445, 2556, 2673,  # left thumb, index, middle, ring, pinky
    6191, 5782, 5905, 6016, 6133,  # right thumb, index, middle, ring, pinky
)  # fmt: skip

# Step 3: OpenPose BODY_25 as rows of the 45-joint set (24 mix rows + 21 vertex picks).
BODY25_FROM_45: tuple[int, ...] = (
    24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
)  # fmt: skip

# Names are unique: the OpenPose part is prefixed "op_", the SPIN ground-truth part "gt_", because
# both parts contain e.g. a right wrist.
KEYPOINT_NAMES: tuple[str, ...] = (
    "op_nose", "op_neck", "op_right_shoulder", "op_right_elbow", "op_right_wrist",
    "op_left_shoulder", "op_left_elbow", "op_left_wrist", "op_mid_hip", "op_right_hip",
    "op_right_knee", "op_right_ankle", "op_left_hip", "op_left_knee", "op_left_ankle",
    "op_right_eye", "op_left_eye", "op_right_ear", "op_left_ear", "op_left_big_toe",
    "op_left_small_toe", "op_left_heel", "op_right_big_toe", "op_right_small_toe", "op_right_heel",
    "gt_right_ankle", "gt_right_knee", "gt_right_hip", "gt_left_hip", "gt_left_knee",
    "gt_left_ankle", "gt_right_wrist", "gt_right_elbow", "gt_right_shoulder", "gt_left_shoulder",
    "gt_left_elbow", "gt_left_wrist", "gt_lsp_neck", "gt_lsp_head_top", "gt_mpii_pelvis",
    "gt_mpii_thorax", "gt_h36m_spine", "gt_h36m_jaw", "gt_h36m_head",
)  # fmt: skip

# Horizontal flip: new keypoint i takes old keypoint FLIP_PERMUTATION[i] (hsmr-pipeline.md §1.7).
FLIP_PERMUTATION: Tensor = torch.tensor(
    [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21]
    + [25 + i for i in (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18)],
    dtype=torch.long,
)

# HSMR's keypoint part groups (skel-model.md §5, hsmr-pipeline.md §3.2).
TORSO: tuple[int, ...] = (1, 2, 5, 8, 9, 12, 27, 28, 33, 34, 37, 39, 40, 41)
HEAD: tuple[int, ...] = (0, 15, 16, 17, 18, 38, 42, 43)
PROXIMAL_LIMBS: tuple[int, ...] = (3, 6, 10, 13, 26, 29, 32, 35)
DISTAL_LIMBS: tuple[int, ...] = (4, 7, 11, 14, 19, 20, 21, 22, 23, 24, 25, 30, 31, 36)
# LSP neck and head top: SKELify drops them from every part list as unreliable.
UNRELIABLE: tuple[int, ...] = (37, 38)

# MPII pelvis: HSMR's root for root-relative 3D keypoints (ref_jid = 25 + 14).
ROOT_INDEX = 39


def load_regressor(path: str | Path, rows: int) -> np.ndarray:
    """Read a regressor pickle (dense ndarray or scipy.sparse, Python 2 or 3) -> float32 ndarray (rows, 6890)."""
    obj = load_model_pickle(path)
    if not (scipy.sparse.issparse(obj) or isinstance(obj, np.ndarray)):
        raise ModelFileError(f"{path}: expected a numpy array or scipy.sparse matrix, found {type(obj).__name__}")
    matrix = dense(obj)
    if matrix.shape != (rows, NUM_VERTICES):
        raise ModelFileError(f"{path}: expected a ({rows}, {NUM_VERTICES}) regressor, found shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number):
        raise ModelFileError(f"{path}: expected a numeric regressor, found dtype {matrix.dtype}")
    matrix = matrix.astype(np.float32)
    if not np.isfinite(matrix).all():
        raise ModelFileError(f"{path}: regressor contains non-finite values")
    return matrix


def fold_regressors(mix: np.ndarray | Tensor, j19: np.ndarray | Tensor) -> Tensor:
    """Fold HSMR's 4-step construction into one matrix: mix (24, 6890), j19 (19, 6890) -> float32 (44, 6890)."""
    mix_t = torch.as_tensor(np.asarray(mix) if not isinstance(mix, Tensor) else mix).detach().cpu().double()
    j19_t = torch.as_tensor(np.asarray(j19) if not isinstance(j19, Tensor) else j19).detach().cpu().double()
    if tuple(mix_t.shape) != (24, NUM_VERTICES):
        raise ValueError(f"mix regressor: expected shape (24, {NUM_VERTICES}), found {tuple(mix_t.shape)}")
    if tuple(j19_t.shape) != (19, NUM_VERTICES):
        raise ValueError(f"J19 regressor: expected shape (19, {NUM_VERTICES}), found {tuple(j19_t.shape)}")
    # A vertex pick is the one-hot row of that vertex, so steps 1-2 are one (45, 6890) matrix and
    # step 3 is a row selection of it. Built in float64, rounded once at the end.
    picks = torch.zeros(len(VERTEX_KEYPOINT_IDS), NUM_VERTICES, dtype=torch.float64)
    picks[torch.arange(len(VERTEX_KEYPOINT_IDS)), torch.tensor(VERTEX_KEYPOINT_IDS)] = 1.0
    rows45 = torch.cat([mix_t, picks], dim=0)
    body25 = rows45[list(BODY25_FROM_45)]
    return torch.cat([body25, j19_t], dim=0).to(torch.float32)


class KeypointRegressor(torch.nn.Module):
    """HSMR's 44 keypoints from SKEL skin vertices as one (44, 6890) linear map."""

    def __init__(self, matrix: Tensor):
        """Wrap an already folded float32 matrix (44, 6890); use from_models_dir / from_matrices to build one."""
        super().__init__()
        matrix = torch.as_tensor(matrix, dtype=torch.float32)
        if tuple(matrix.shape) != (NUM_KEYPOINTS, NUM_VERTICES):
            raise ValueError(
                f"expected a ({NUM_KEYPOINTS}, {NUM_VERTICES}) keypoint matrix, found {tuple(matrix.shape)}"
            )
        # Not persistent: it comes from the model files, and checkpoints should not pin a copy of it.
        self.register_buffer("matrix", matrix.contiguous(), persistent=False)

    @classmethod
    def from_matrices(cls, mix: np.ndarray | Tensor, j19: np.ndarray | Tensor) -> KeypointRegressor:
        """Build from the mix regressor (24, 6890) and the J19 regressor (19, 6890)."""
        return cls(fold_regressors(mix, j19))

    @classmethod
    def from_models_dir(cls, models_dir: str | Path) -> KeypointRegressor:
        """Build from <models_dir>/hsmr/J_regressor_SKEL_mix_MALE.pkl and <models_dir>/hsmr/SMPL_to_J19.pkl."""
        models_dir = Path(models_dir)
        mix = load_regressor(models_dir / MIX_REGRESSOR_FILE, 24)
        j19 = load_regressor(models_dir / J19_REGRESSOR_FILE, 19)
        return cls.from_matrices(mix, j19)

    def forward(self, skin_verts: Tensor) -> Tensor:
        """Regress keypoints: skin_verts (B, 6890, 3) m -> (B, 44, 3) m (any leading batch dims)."""
        if skin_verts.shape[-2:] != (NUM_VERTICES, 3):
            raise ValueError(f"expected skin vertices (..., {NUM_VERTICES}, 3), got shape {tuple(skin_verts.shape)}")
        return torch.matmul(self.matrix.to(skin_verts.dtype), skin_verts)


def flip_keypoints_2d(kp: Tensor, width: float | Tensor) -> Tensor:
    """Mirror pixel keypoints: kp (..., 44, C>=2) px, width (number or (...) tensor) px -> (..., 44, C), x' = width - 1 - x."""
    # Pixel centres sit at integer x (HSMR/HMR2.0, hsmr-pipeline.md §2.3), so column c must land on
    # column width - 1 - c; y and confidence only follow the left/right permutation.
    if kp.shape[-2] != NUM_KEYPOINTS or kp.shape[-1] < 2:
        raise ValueError(f"expected keypoints (..., {NUM_KEYPOINTS}, C>=2), got shape {tuple(kp.shape)}")
    width_t = torch.as_tensor(width, dtype=kp.dtype, device=kp.device)
    if width_t.ndim > 0:
        width_t = width_t[..., None]  # broadcast a per-sample width over the keypoint axis
    permuted = kp[..., FLIP_PERMUTATION.to(kp.device), :]
    x = width_t - 1.0 - permuted[..., 0]
    return torch.cat([x.unsqueeze(-1), permuted[..., 1:]], dim=-1)


def flip_keypoints_normalised(kp: Tensor) -> Tensor:
    """Mirror keypoints in normalised crop units (..., 44, C): x → −x about the crop centre, then
    the left/right permutation (the crop centre flips with the image, so it stays at 0)."""
    permuted = kp[..., FLIP_PERMUTATION.to(kp.device), :]
    return torch.cat([-permuted[..., :1], permuted[..., 1:]], dim=-1)
