"""Per-person records read from source data, SKEL labels, and their validation.

A source person becomes a `PersonRecord` only when every field it needs is present, has the
right shape and is finite; otherwise validation returns a `QuarantineEntry` saying which field
and why. Nothing here raises on bad data.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .quarantine import QuarantineEntry

N_KEYPOINTS = 44
SMPL_POSE_DIM = 72
N_BETAS = 10
SKEL_POSE_DIM = 46
IMAGE_EXTS = ("jpg", "jpeg", "png")

# Shapes of the per-person arrays shared by input and output shards.
KEYPOINT_SHAPES = {
    "keypoints_2d": (N_KEYPOINTS, 3),
    "keypoints_3d": (N_KEYPOINTS, 4),
    "center": (2,),
    "scale": (2,),
}


def person_key(image_key: str, person_index: int) -> str:
    """Image key + 0-based person index -> per-person key `<image key>_<index>`."""
    return f"{image_key}_{int(person_index)}"


def split_person_key(key: str) -> tuple[str, int]:
    """Per-person key -> (image key, person index); inverse of `person_key`."""
    image_key, _, idx = key.rpartition("_")
    if not image_key or not idx.isdigit():
        raise ValueError(f"not a per-person key (expected '<image key>_<index>'): {key!r}")
    return image_key, int(idx)


_UNSAFE_BASENAME = re.compile(r"[.\s]")


def safe_image_key(name: str) -> str:
    """File-ish name -> WebDataset-safe image key (extension dropped, dots in the last path part -> '_')."""
    name = name.replace("\\", "/").lstrip("./")
    head, _, base = name.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base else base
    # WebDataset splits a member name at the first dot of its last path part.
    stem = _UNSAFE_BASENAME.sub("_", stem) or "_"
    return f"{head}/{stem}" if head else stem


@dataclass(frozen=True, eq=False)
class PersonRecord:
    """One annotated person of a source image (arrays float32, keypoints in original-image pixels)."""

    key: str  # "<image key>_<person index>"
    image_key: str
    person_index: int
    source_file: str
    image: bytes  # encoded image exactly as read (b"" for parameter-only sources)
    image_ext: str  # "jpg" | "jpeg" | "png" | "" (no image)
    keypoints_2d: np.ndarray  # (44, 3) x, y pixels, confidence
    keypoints_3d: np.ndarray  # (44, 4) metres (root-relative meaningful), confidence
    center: np.ndarray  # (2,) bbox centre, pixels
    scale: np.ndarray  # (2,) bbox (w, h) / 200
    body_pose: np.ndarray  # (72,) SMPL axis-angle, global orientation first; zeros if has_smpl False
    betas: np.ndarray  # (10,) SMPL shape; zeros if has_smpl False
    trans: np.ndarray  # (3,) SMPL translation, metres; zeros when unknown
    has_smpl: bool
    has_betas: bool
    extra_info: dict = field(default_factory=dict)
    personid: int = 0
    gender: str = ""  # SMPL body of the parameters: 'neutral' | 'male' | 'female'; '' = not given (the converter's default)


@dataclass(frozen=True, eq=False)
class SkelLabel:
    """One SKEL label of a person side: q (46,) radians, beta (10,), trans (3,) metres, fit metrics."""

    label_id: int
    poses: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    pve_mean: float = float("nan")  # metres
    pve_max: float = float("nan")  # metres; NaN = invalid fit
    kp2d_err: float = float("nan")  # normalised crop units


class _Bad(Exception):
    """Internal: carries the (field, reason) of a failed validation up to the caller."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(field_name, reason)
        self.field_name = field_name
        self.reason = reason


def _float_array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if value is None:
        raise _Bad(name, "missing: field is None")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise _Bad(name, f"type: not an array ({type(value).__name__}: {exc})") from None
    if arr.dtype.kind not in "fiub":
        raise _Bad(name, f"type: expected numbers, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise _Bad(name, f"shape: got {arr.shape}, expected {shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        n_nan = int(np.isnan(out).sum())
        n_inf = int(out.size - finite.sum()) - n_nan
        kind = "nan" if n_nan else "inf"
        parts = [f"{n_nan} NaN"] if n_nan else []
        if n_inf:
            parts.append(f"{n_inf} Inf (after float32 cast)")
        raise _Bad(name, f"{kind}: {', '.join(parts)} of {out.size} values")
    return out


def _required(d: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in d:
        raise _Bad(name, "missing: field not present")
    return _float_array(d[name], name, shape)


def _flag(value: Any, name: str) -> bool:
    try:
        arr = np.asarray(value)
        if arr.size != 1 or arr.dtype.kind not in "fiub":
            raise ValueError
        v = float(arr.reshape(()))
    except Exception:
        raise _Bad(name, f"type: expected a scalar flag, got {type(value).__name__}") from None
    if not np.isfinite(v):
        raise _Bad(name, "nan: flag is not finite")
    return v > 0


def _smpl_arrays(d: dict, has_name: str, arr_name: str, size: int) -> tuple[np.ndarray, bool]:
    """(array, valid) of an SMPL field: required and finite when its has_* flag is set."""
    flag = _flag(d[has_name], has_name) if has_name in d else arr_name in d
    if not flag:
        return np.zeros(size, np.float32), False
    return _required(d, arr_name, (size,)), True


def person_from_dict(
    d: Any,
    *,
    image_key: str,
    person_index: int,
    source_file: str,
    image: bytes,
    image_ext: str,
) -> PersonRecord | QuarantineEntry:
    """HMR2.0-style per-person dict -> validated `PersonRecord`, or a `QuarantineEntry` naming the bad field."""
    key = person_key(image_key, person_index)
    try:
        if not isinstance(d, dict):
            raise _Bad("person", f"type: expected dict, got {type(d).__name__}")
        kp2d = _required(d, "keypoints_2d", KEYPOINT_SHAPES["keypoints_2d"])
        kp3d = _required(d, "keypoints_3d", KEYPOINT_SHAPES["keypoints_3d"])
        center = _required(d, "center", KEYPOINT_SHAPES["center"])
        scale = _required(d, "scale", KEYPOINT_SHAPES["scale"])
        body_pose, has_pose = _smpl_arrays(d, "has_body_pose", "body_pose", SMPL_POSE_DIM)
        betas, has_betas = _smpl_arrays(d, "has_betas", "betas", N_BETAS)
        trans = _float_array(d["trans"], "trans", (3,)) if d.get("trans") is not None else np.zeros(3, np.float32)
        extra = d.get("extra_info", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise _Bad("extra_info", f"type: expected dict, got {type(extra).__name__}")
        pid = d.get("personid", person_index)
        try:
            personid = int(np.asarray(pid).reshape(()))
        except Exception:
            raise _Bad("personid", f"type: expected an integer, got {type(pid).__name__}") from None
    except _Bad as bad:
        return QuarantineEntry(key=key, file=source_file, field=bad.field_name, reason=bad.reason)
    return PersonRecord(
        key=key,
        image_key=image_key,
        person_index=int(person_index),
        source_file=source_file,
        image=image,
        image_ext=image_ext,
        keypoints_2d=kp2d,
        keypoints_3d=kp3d,
        center=center,
        scale=scale,
        body_pose=body_pose,
        betas=betas,
        trans=trans,
        has_smpl=has_pose,
        has_betas=has_betas,
        extra_info=extra,
        personid=personid,
    )


def check_image_bytes(data: bytes, ext: str) -> str | None:
    """Encoded image bytes + extension -> None if the whole image decodes, else a quarantine reason.

    A full decode, not a magic-number check: a truncated JPEG has a valid header and would only
    fail later, inside a training data loader.
    """
    if not data:
        return "missing: empty image member"
    if ext in ("jpg", "jpeg"):
        if data[:3] != b"\xff\xd8\xff":
            return "unreadable: not a JPEG (bad magic number)"
    elif ext == "png":
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            return "unreadable: not a PNG (bad signature)"
    else:
        return f"type: unsupported image extension {ext!r}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for damaged data
        return f"unreadable: image does not decode ({type(exc).__name__}: {exc})"
    return None
