"""A small numpy/PIL renderer: pinhole camera, z-buffered shaded triangle meshes, keypoint drawing.

Shared by the synthetic dataset (`synthetic.py`) and `skelpgt show` (label sheets, at the end).
Frames: the camera frame of HMR2.0/HSMR (x right, y down, z forward, metres). Pixel centres sit
at integer coordinates (column c covers [c − 0.5, c + 0.5]), so a horizontal flip maps x to
W − 1 − x exactly as the training loader does (hsmr-pipeline.md §2.3).

Rasterisation is vectorised over triangles: each triangle's pixel bounding box is enumerated in
buckets of equal box size (real meshes at these resolutions have boxes of a few pixels), pixels
are tested with barycentric coordinates, and a depth buffer keeps the nearest surface.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from skelpgt.fitting.body import load_body
from skelpgt.fitting.camera import FOCAL_NORMALISED, keypoint_error, normalise_keypoints, project, solve_translation
from skelpgt.fitting.keypoints import flip_keypoints_2d
from skelpgt.fitting.mirror import mirror_smpl_pose
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.fitting.skel import PARENTS
from skelpgt.fitting.smpl import load_smpl, smpl_forward

from .pyd import load_pyd
from .readers import source_files
from .records import IMAGE_EXTS, split_person_key
from .release import MANIFEST, resolve_round
from .shards import person_index_of
from .tario import TarSample, iter_tar

# Upper bounds of the bounding-box size buckets (pixels); boxes beyond the last are done one by one.
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
_NEAR = 1e-3  # metres; triangles with a vertex closer than this are dropped


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera in pixels: focal (px), principal point (cx, cy) (px), image size (px)."""

    focal: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def centred(cls, width: int, height: int, focal: float) -> "PinholeCamera":
        """Camera with the principal point at the image centre ((W − 1)/2, (H − 1)/2)."""
        return cls(float(focal), (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    def project(self, points: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) m → pixel coordinates (..., 2) (z clamped to ≥ 1 mm)."""
        p = np.asarray(points, dtype=np.float64)
        z = np.maximum(p[..., 2:3], _NEAR)
        return self.focal * p[..., :2] / z + np.array([self.cx, self.cy])

    def scaled(self, factor: float) -> "PinholeCamera":
        """The same view at `factor` times the resolution (pixel centres stay at integers)."""
        k = float(factor)
        return PinholeCamera(self.focal * k, (self.cx + 0.5) * k - 0.5, (self.cy + 0.5) * k - 0.5, round(self.width * k), round(self.height * k))

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (..., 2) → bool (...), True where the point lies on the image."""
        return (uv[..., 0] >= -0.5) & (uv[..., 0] <= self.width - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= self.height - 0.5)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals (N, 3) of a mesh (verts (N, 3), faces (F, 3) counter-clockwise from outside)."""
    v = np.asarray(verts, dtype=np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])  # area-weighted
    idx = faces.reshape(-1)
    out = np.stack([np.bincount(idx, weights=np.repeat(fn[:, k], 3), minlength=len(v)) for k in range(3)], axis=1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def lambert(normals: np.ndarray, light_dir: np.ndarray, ambient: float = 0.35) -> np.ndarray:
    """Lambert intensity (N,) in [ambient, 1] of unit normals (N, 3) lit from direction `light_dir` (towards the light)."""
    light = np.asarray(light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    return ambient + (1.0 - ambient) * np.clip(normals @ light, 0.0, None)


def shade_mesh(verts: np.ndarray, faces: np.ndarray, albedo: np.ndarray, light_dir: np.ndarray, ambient: float = 0.35) -> np.ndarray:
    """Per-vertex shaded colours (N, 3) in [0, 1]: albedo (N, 3) or (3,) × Lambert with a head-on fill light."""
    n = vertex_normals(verts, faces)
    # A weak light from the camera keeps surfaces turned from the key light from going flat.
    shade = lambert(n, light_dir, ambient) + 0.15 * np.clip(-n[:, 2], 0.0, None)
    return np.clip(np.asarray(albedo, dtype=np.float64) * shade[:, None], 0.0, 1.0)


@dataclass
class Raster:
    """Render target: colour (H, W, C) float, depth (H, W) metres (inf = empty), mesh id (H, W) (−1 = empty)."""

    color: np.ndarray
    depth: np.ndarray
    mesh_id: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int, channels: int = 3, background: np.ndarray | None = None) -> "Raster":
        """Empty target, optionally over a background image (H, W, C) float."""
        color = np.zeros((height, width, channels)) if background is None else np.array(background, dtype=np.float64)
        return cls(color, np.full((height, width), np.inf), np.full((height, width), -1, dtype=np.int32))

    @property
    def mask(self) -> np.ndarray:
        """Covered pixels (H, W) bool."""
        return self.mesh_id >= 0


def _bucket_fragments(uv, z, x0, y0, x1, y1, size, tris):
    """Pixel fragments of triangles `tris` whose boxes are ≤ size: (pixel x, pixel y, tri, barycentrics, depth)."""
    d = np.arange(size)
    dx, dy = np.meshgrid(d, d)
    dx, dy = dx.reshape(-1), dy.reshape(-1)
    px = x0[tris, None] + dx[None]
    py = y0[tris, None] + dy[None]
    a, b, c = uv[tris, 0], uv[tris, 1], uv[tris, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    inv = 1.0 / area
    # Edge functions at the pixel centres, normalised by the signed area → barycentrics.
    l0 = ((b[:, 0, None] - px) * (c[:, 1, None] - py) - (b[:, 1, None] - py) * (c[:, 0, None] - px)) * inv[:, None]
    l1 = ((c[:, 0, None] - px) * (a[:, 1, None] - py) - (c[:, 1, None] - py) * (a[:, 0, None] - px)) * inv[:, None]
    l2 = 1.0 - l0 - l1
    eps = -1e-9
    keep = (l0 >= eps) & (l1 >= eps) & (l2 >= eps) & (px <= x1[tris, None]) & (py <= y1[tris, None])
    t_idx, k_idx = np.nonzero(keep)
    bary = np.stack((l0[t_idx, k_idx], l1[t_idx, k_idx], l2[t_idx, k_idx]), axis=1)
    tri = tris[t_idx]
    depth = (bary * z[tri]).sum(1)
    return px[t_idx, k_idx], py[t_idx, k_idx], tri, bary, depth


def rasterize(
    target: Raster,
    verts: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray,
    camera: PinholeCamera,
    *,
    mesh_ids: np.ndarray | int = 0,
    cull_backfaces: bool = True,
    alpha: float = 1.0,
) -> Raster:
    """Draw a mesh into `target` with depth test: verts (N, 3) camera frame m, faces (F, 3), colors (N, C) per vertex.

    `mesh_ids` (F,) or one int labels the covered pixels (e.g. person index). With alpha < 1 the
    mesh is blended over the target's colour where it is nearest and leaves depth unchanged
    (an overlay: draw it last).
    """
    v = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    h, w = target.depth.shape
    uv_v = camera.project(v)
    z_v = v[:, 2]
    uv, z = uv_v[faces], z_v[faces]  # (F, 3, 2), (F, 3)
    ok = (z > _NEAR).all(1)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    ok &= np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) > 1e-12  # degenerate on screen: covers no pixel centre
    if cull_backfaces:
        n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        ok &= (n * v[faces[:, 0]]).sum(1) < 0  # normal points towards the camera at the origin
    x0 = np.clip(np.ceil(uv[..., 0].min(1)), 0, w - 1).astype(np.int64)
    x1 = np.clip(np.floor(uv[..., 0].max(1)), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(uv[..., 1].min(1)), 0, h - 1).astype(np.int64)
    y1 = np.clip(np.floor(uv[..., 1].max(1)), -1, h - 1).astype(np.int64)
    ok &= (x1 >= x0) & (y1 >= y0) & (uv[..., 0].max(1) >= 0) & (uv[..., 1].max(1) >= 0)
    size = np.maximum(x1 - x0, y1 - y0) + 1
    parts, lower = [], 0
    for upper in _BUCKETS:
        tris = np.nonzero(ok & (size > lower) & (size <= upper))[0]
        if tris.size:
            parts.append(_bucket_fragments(uv, z, x0, y0, x1, y1, upper, tris))
        lower = upper
    for t in np.nonzero(ok & (size > lower))[0]:  # rare huge triangles, one at a time
        parts.append(_bucket_fragments(uv, z, x0, y0, x1, y1, int(size[t]), np.array([t])))
    if not parts:
        return target
    px, py, tri, bary, depth = (np.concatenate(p) for p in zip(*parts))
    pix = py * w + px
    # Nearest fragment per pixel: sort by (pixel, depth) and keep each pixel's first entry.
    order = np.lexsort((depth, pix))
    pix_s = pix[order]
    first = order[np.r_[True, pix_s[1:] != pix_s[:-1]]]
    dflat = target.depth.reshape(-1)
    win = first[depth[first] < dflat[pix[first]]]
    p = pix[win]
    col = np.einsum("kj,kjc->kc", bary[win], np.asarray(colors, dtype=np.float64)[faces[tri[win]]])
    cflat = target.color.reshape(h * w, -1)
    ids = np.broadcast_to(np.asarray(mesh_ids, dtype=np.int32), (len(faces),))
    if alpha >= 1.0:
        cflat[p] = col
        dflat[p] = depth[win]
        target.mesh_id.reshape(-1)[p] = ids[tri[win]]
    else:
        cflat[p] = (1.0 - alpha) * cflat[p] + alpha * col
    return target


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] → uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


# OpenPose BODY_25 limbs (rows 0–24 of the 44 keypoints) and the SPIN ground-truth limbs (rows 25–43).
OPENPOSE_LIMBS = (
    (1, 8), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11), (8, 12), (12, 13),
    (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24),
)  # fmt: skip
GT_LIMBS = tuple(
    (25 + a, 25 + b)
    for a, b in ((0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11), (8, 12), (9, 12), (12, 13), (2, 14), (3, 14), (14, 16), (16, 15), (15, 12))
)
# Keypoints on the subject's left (drawn in a different colour than the right side).
_LEFT = {5, 6, 7, 12, 13, 14, 16, 18, 19, 20, 21, 28, 29, 30, 34, 35, 36}
_RIGHT = {2, 3, 4, 9, 10, 11, 15, 17, 22, 23, 24, 25, 26, 27, 31, 32, 33}


def _side_color(i: int, j: int | None = None) -> tuple[int, int, int]:
    idx = {i} if j is None else {i, j}
    if idx & _LEFT and not idx & _RIGHT:
        return (60, 160, 255)
    if idx & _RIGHT and not idx & _LEFT:
        return (255, 120, 40)
    return (80, 230, 80)


def draw_keypoints(draw, kp: np.ndarray, *, min_conf: float = 0.0, radius: float = 2.0, scale: float = 1.0, offset: float = 0.0) -> None:
    """Draw 44 keypoints (44, ≥2; column 2 = confidence) and their limbs with a PIL ImageDraw.

    Pixel coordinates are mapped by x·scale + offset (for drawing on an enlarged image). The
    subject's left is blue, right orange, midline green; the ground-truth rows (25–43) as rings.
    """
    kp = np.asarray(kp, dtype=np.float64)
    xy = kp[:, :2] * scale + offset
    conf = kp[:, 2] if kp.shape[1] > 2 else np.ones(len(kp))
    vis = conf > min_conf
    width = max(1, round(scale))
    for a, b in OPENPOSE_LIMBS + GT_LIMBS:
        if vis[a] and vis[b]:
            draw.line([tuple(xy[a]), tuple(xy[b])], fill=_side_color(a, b), width=width)
    for i in np.nonzero(vis)[0]:
        x, y = xy[i]
        r = radius * (1.4 if i >= 25 else 1.0)
        if i >= 25:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=_side_color(int(i)), width=1)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_side_color(int(i)))


def draw_bbox(draw, center: np.ndarray, scale_200: np.ndarray, *, scale: float = 1.0, offset: float = 0.0, color=(255, 255, 0)) -> None:
    """Draw the person box given by HMR2.0 `center` (2,) px and `scale` (2,) = (w, h)/200."""
    c = np.asarray(center, dtype=np.float64) * scale + offset
    half = np.asarray(scale_200, dtype=np.float64) * 200.0 * scale / 2.0
    draw.rectangle([c[0] - half[0], c[1] - half[1], c[0] + half[0], c[1] + half[1]], outline=color, width=1)


# ---------------------------------------------------------------------------- label sheets (`skelpgt show`)
_BONE = np.array([0.92, 0.89, 0.80])
_SKIN_OVERLAY = np.array([0.45, 0.70, 1.00])
_LIGHT = np.array([0.3, -0.7, -1.0])  # camera frame: from above, left, in front


@dataclass(frozen=True)
class Geometry:
    """A posed body at zero translation in the camera orientation: skin, optional skeleton mesh, joints, 44 keypoints (m)."""

    skin: np.ndarray  # (N, 3)
    skin_faces: np.ndarray  # (F, 3)
    joints: np.ndarray  # (J, 3)
    parents: tuple[int, ...]  # (J,), −1 for the root
    keypoints: np.ndarray  # (44, 3)
    bones: np.ndarray | None = None  # (M, 3) skeleton mesh vertices
    bone_faces: np.ndarray | None = None


class BodyModels:
    """SKEL (and, on demand, SMPL) + the 44-keypoint regressor, to turn labels into `Geometry`."""

    def __init__(self, models_dir, gender: str = "male"):
        self.models_dir = models_dir
        body = load_body(models_dir, gender)
        self.skel, self.regressor = body.skel, body.keypoints
        self._smpl = None

    def skel_geometry(self, poses: np.ndarray, betas: np.ndarray) -> Geometry:
        """SKEL label q (46,) rad, β (10,) → Geometry with the skeleton mesh."""
        with torch.no_grad():
            out = self.skel(torch.as_tensor(poses, dtype=torch.float32)[None], torch.as_tensor(betas, dtype=torch.float32)[None], skelmesh=True)
            kp = self.regressor(out.skin_verts)
        return Geometry(
            out.skin_verts[0].double().numpy(), self.skel.faces.numpy(), out.joints[0].double().numpy(), PARENTS,
            kp[0].double().numpy(), out.skel_verts[0].double().numpy(), self.skel.skel_faces.numpy(),
        )  # fmt: skip

    def smpl_geometry(self, pose: np.ndarray, betas: np.ndarray) -> Geometry:
        """SMPL label (72,) axis-angle, β (10,) → Geometry (no skeleton mesh; joints and limbs only)."""
        if self._smpl is None:
            self._smpl = load_smpl(self.models_dir, "neutral")
        with torch.no_grad():
            verts, joints = smpl_forward(self._smpl, torch.as_tensor(pose, dtype=torch.float32)[None], torch.as_tensor(betas, dtype=torch.float32)[None])
            kp = self.regressor(verts)
        parents = tuple(int(p) for p in self._smpl.parents.tolist())
        return Geometry(verts[0].double().numpy(), np.asarray(self._smpl.faces, np.int64), joints[0].double().numpy(), parents, kp[0].double().numpy())


def solve_camera(keypoints: np.ndarray, kp2d: np.ndarray, center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, PinholeCamera, float]:
    """Closed-form camera for a body's 44 keypoints (44, 3) m and its 2D keypoints (44, 3) px.

    HSMR's crop camera (focal 5000/256 in normalised crop units, principal point at the box centre)
    and SPIN's least squares (`fitting.camera`); the 19 annotated joints alone when their
    confidences sum to ≥ 4. Returns translation (3,) m, the equivalent pixel camera (without its
    image size) and the mean keypoint error in normalised crop units.
    """
    as64 = lambda a: torch.as_tensor(np.asarray(a, np.float64))[None]  # noqa: E731
    pts = as64(keypoints)
    kp = normalise_keypoints(as64(kp2d), as64(center), as64(scale))
    use = kp.clone()
    if float(use[0, 25:, 2].clamp(min=0).sum()) >= 4:
        use[0, :25, 2] = 0
    t = solve_translation(pts, use)
    err = float(keypoint_error(project(pts, t), kp)[0])
    size = float(np.max(np.asarray(scale, dtype=np.float64)) * 200.0)
    cam = PinholeCamera(FOCAL_NORMALISED * size, float(center[0]), float(center[1]), 0, 0)
    return t[0].numpy(), cam, err


def overlay_geometry(color: np.ndarray, geom: Geometry, trans: np.ndarray, camera: PinholeCamera, *, skin_alpha: float = 0.4) -> np.ndarray:
    """Draw a body over an image (H, W, 3) float in place: opaque shaded skeleton mesh, translucent shaded skin."""
    h, w = color.shape[:2]
    target = Raster(color, np.full((h, w), np.inf), np.full((h, w), -1, np.int32))
    if geom.bones is not None and len(geom.bone_faces):
        bones = geom.bones + trans
        rasterize(target, bones, geom.bone_faces, shade_mesh(bones, geom.bone_faces, _BONE, _LIGHT, 0.4), camera, cull_backfaces=False)
    skin = geom.skin + trans
    rasterize(target, skin, geom.skin_faces, shade_mesh(skin, geom.skin_faces, _SKIN_OVERLAY, _LIGHT, 0.4), camera, alpha=skin_alpha)
    return color


def draw_joints(draw, geom: Geometry, trans: np.ndarray, camera: PinholeCamera, radius: float = 2.0) -> None:
    """Draw a body's joints and limbs (parent → child), projected with `camera`."""
    uv = camera.project(geom.joints + trans)
    for j, p in enumerate(geom.parents):
        if p >= 0:
            draw.line([tuple(uv[p]), tuple(uv[j])], fill=(255, 40, 160), width=max(1, round(radius / 2)))
    for x, y in uv:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=(255, 40, 160))


@dataclass(frozen=True)
class PanelPerson:
    """One person on a panel: 2D keypoints (44, 3) px, box centre (2,) px, scale (2,) = box/200, body or None (no label)."""

    keypoints_2d: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    geometry: Geometry | None


def render_panel(image: np.ndarray, persons: list[PanelPerson], title: str, *, zoom: int = 1, bodies: bool = True):
    """Image (H, W, 3) uint8 + persons → PIL panel (zoomed, titled): keypoints and boxes, or the bodies with their cameras."""
    h, w = image.shape[:2]
    big = Image.fromarray(image).resize((w * zoom, h * zoom), Image.BILINEAR) if zoom > 1 else Image.fromarray(image)
    offset = (zoom - 1) / 2.0  # pixel centres stay at integers: x' = (x + 0.5)·zoom − 0.5
    errors = []
    if bodies:
        color = np.asarray(big, dtype=np.float64) / 255.0
        cams = []
        for p in persons:
            if p.geometry is None:
                cams.append(None)
                continue
            t, cam, err = solve_camera(p.geometry.keypoints, p.keypoints_2d, p.center, p.scale)
            if not np.isfinite(t).all() or (p.geometry.keypoints[:, 2] + t[2]).min() <= 0:
                cams.append(None)  # no camera in front of the body fits its keypoints (e.g. an upside-down label)
                errors.append(np.inf)
                continue
            cam = PinholeCamera(cam.focal, cam.cx, cam.cy, w, h).scaled(zoom)
            overlay_geometry(color, p.geometry, t, cam)
            cams.append((t, cam))
            errors.append(err)
        big = Image.fromarray(to_uint8(color))
        draw = ImageDraw.Draw(big)
        for p, tc in zip(persons, cams):
            if tc is not None:
                draw_joints(draw, p.geometry, tc[0], tc[1], radius=(1.0 if p.geometry.bones is not None else 1.5) * zoom)
    else:
        draw = ImageDraw.Draw(big)
        for p in persons:
            draw_bbox(draw, p.center, p.scale, scale=zoom, offset=offset)
            draw_keypoints(draw, p.keypoints_2d, radius=1.2 * zoom, scale=zoom, offset=offset)
    header = 14
    panel = Image.new("RGB", (big.width, big.height + header), (20, 20, 20))
    panel.paste(big, (0, header))
    label = title
    if errors:
        label += f"  kp err {np.mean(errors):.3f}" if np.isfinite(errors).all() else "  (no camera fits)"
    if bodies and not any(p.geometry is not None for p in persons):
        label += "  (no label)"
    ImageDraw.Draw(panel).text((3, 1), label, fill=(240, 240, 240))
    return panel


def hstack_panels(panels: list):
    """PIL panels → one PIL image side by side (2 px gaps)."""
    gap = 2
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)), (0, 0, 0))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


def find_sample(key: str, *, release=None, round: int | None = None, source=None) -> tuple[str, bytes, list[dict], list[int]]:
    """Image or per-person key → (image key, encoded image, person dicts, indices of the persons asked for).

    Looks in a release round's shards, or in source tars (a tar or a folder of them) when `source`
    is given. Raises KeyError when the key is not there.
    """
    try:
        person_image, person_index = split_person_key(key)
    except ValueError:
        person_image, person_index = None, -1
    if source is not None:
        files = [f for f in source_files(source) if f.endswith(".tar")]
    elif release is not None:
        rdir = resolve_round(release, round)
        files = [str(rdir / s["name"]) for s in json.loads((Path(rdir) / MANIFEST).read_text(encoding="utf-8"))["shards"]]
    else:
        raise ValueError("give a release or a source")
    for f in files:
        for item in iter_tar(f):
            if not isinstance(item, TarSample) or item.key not in (key, person_image):
                continue
            persons = load_pyd(item.members["data.pyd"])
            ext = next((e for e in IMAGE_EXTS if e in item.members), None)
            if ext is None:
                raise KeyError(f"{key}: sample in {f} has no image")
            if item.key == key:
                return item.key, item.members[ext], persons, list(range(len(persons)))
            at = [j for j, p in enumerate(persons) if isinstance(p, dict) and person_index_of(p, j) == person_index]
            if at:
                return item.key, item.members[ext], persons, at
    raise KeyError(f"{key}: no such image or person in {source if source is not None else release}")


def _label_geometry(models: BodyModels, person: dict, side: str) -> Geometry | None:
    """The body of one side ('orig' | 'flip') of a person dict: SKEL label (release) or SMPL label (source)."""
    if "orig_poses" in person:
        if int(person.get(f"{side}_label_id", -1)) < 0:
            return None
        q, b = np.asarray(person[f"{side}_poses"]), np.asarray(person[f"{side}_betas"])
        return models.skel_geometry(q, b) if np.isfinite(q).all() and np.isfinite(b).all() else None
    if float(np.asarray(person.get("has_body_pose", 0))) <= 0:
        return None
    pose = np.asarray(person["body_pose"], np.float32)
    if side == "flip":
        pose = mirror_smpl_pose(torch.from_numpy(pose)).numpy()
    return models.smpl_geometry(pose, np.asarray(person["betas"], np.float32))


def label_sheet(image: np.ndarray, persons: list[dict], models: BodyModels, *, title: str = "", zoom: int | None = None):
    """Image (H, W, 3) uint8 + HMR2.0/skelpgt person dicts → PIL sheet: input | orig label | flip label (mirrored image)."""
    h, w = image.shape[:2]
    zoom = zoom or int(max(1, min(4, np.ceil(320 / max(h, 1)))))
    orig, flip = [], []
    for p in persons:
        kp = np.asarray(p["keypoints_2d"], np.float64)
        center, scale = np.asarray(p["center"], np.float64), np.asarray(p["scale"], np.float64)
        orig.append(PanelPerson(kp, center, scale, _label_geometry(models, p, "orig")))
        kp_f = flip_keypoints_2d(torch.from_numpy(kp), w).numpy()
        flip.append(PanelPerson(kp_f, np.array([w - 1 - center[0], center[1]]), scale, _label_geometry(models, p, "flip")))
    kind = "SKEL" if persons and "orig_poses" in persons[0] else "SMPL"
    panels = [
        render_panel(image, orig, title or "input", zoom=zoom, bodies=False),
        render_panel(image, orig, f"orig {kind}", zoom=zoom),
        render_panel(np.ascontiguousarray(image[:, ::-1]), flip, f"flip {kind}", zoom=zoom),
    ]
    return hstack_panels(panels)


def crop_to_person(image: np.ndarray, person: dict, margin: float = 1.15) -> tuple[np.ndarray, dict]:
    """Square crop (zero-padded past the borders) around a person's box → (crop (S, S, 3), person dict in crop pixels)."""
    center = np.asarray(person["center"], np.float64)
    side = max(32, int(np.ceil(float(np.max(person["scale"])) * 200.0 * margin)))
    x0, y0 = (int(np.floor(c - side / 2)) for c in center)
    h, w = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    sx, sy = slice(max(x0, 0), min(x0 + side, w)), slice(max(y0, 0), min(y0 + side, h))
    if sx.stop > sx.start and sy.stop > sy.start:
        out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = image[sy, sx]
    kp = np.array(person["keypoints_2d"], np.float64)
    kp[:, :2] -= (x0, y0)
    return out, dict(person, keypoints_2d=kp, center=center - (x0, y0))


def show_sample(key: str, *, release=None, round: int | None = None, source=None, models_dir=None, gender: str = "male"):
    """`skelpgt show`: find a sample (image or person key) and draw its label sheet → PIL image."""
    image_key, data, persons, wanted = find_sample(key, release=release, round=round, source=source)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    models = BodyModels(ensure_models_dir(models_dir), gender=gender)
    if len(wanted) == 1 and key != image_key:  # one person: zoom in on its box
        image, person = crop_to_person(image, persons[wanted[0]])
        return label_sheet(image, [person], models, title=key)
    return label_sheet(image, [persons[i] for i in wanted], models, title=image_key)
