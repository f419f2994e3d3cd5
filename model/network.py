"""HSMR-style regressor: ViT backbone + one-query transformer decoder head → SKEL q (46), β (10), camera.

Layout follows hsmr-pipeline.md §5.1–5.4 (no code copied from HSMR/HMR2.0/4D-Humans):

* Backbone: plain ViT on a 256 (H) × 192 (W) crop, 16×16 patch conv (stride 16, padding 4 as in
  ViTPose → 16 × 12 = 192 tokens), absolute position embedding of 1 + N entries added as
  (entries 1…N) + (entry 0), pre-LN blocks, final LayerNorm. Sizes come from `VIT_CONFIGS`
  (`vit-h`: dim 1280, depth 32, 16 heads — real training; `vit-tiny`: CPU tests and the demo).
* Head: ONE learned query token, `depth` decoder layers (pre-LN self-attention, cross-attention
  to the patch tokens, GELU MLP, all residual), then three linear outputs added to fixed means:
  pose 24 × 6, β 10, camera (s, tx, ty).
* Pose parameterisation (§5.3): joints with 3 DOFs and the 2-DOF hands read their 6-vector as the
  first two COLUMNS of a matrix, Gram–Schmidt (`roma.special_gramschmidt`) → rotation in the BSM
  joint frame → DOFs by the extrinsic Euler decomposition that inverts `SKEL.pose_rotations`
  (`skelpgt.fitting.dofs`, shared with the converter and SKEL; for hands the third angle is
  dropped). 1-DOF joints read (cos q, −sin q) from the first two entries: q = atan2(−r1, r0).
* Mean: zero pose except the pelvis, whose mean rotation makes the body upright and facing the
  camera (global Rx(π) in the SKEL output frame; `mean_pelvis_rotation(skel)` converts it to the
  BSM pelvis frame), β = 0, camera (0.9, 0, 0) (HSMR's SKEL_mean camera).

Pretrained backbones: `load_backbone(model_or_backbone, read_backbone_checkpoint(path))` takes
timm / ViTPose / HMR2.0 ViT key names and returns a `BackboneReport` (see `load_backbone`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import roma
import torch
from skelpgt.fitting.dofs import (
    JOINT_DOFS,
    MULTI_DOF_JOINTS,
    NUM_DOFS,
    NUM_JOINTS,
    SINGLE_DOF_JOINTS,
    SINGLE_DOFS,
    joint_dofs_from_rotation,
    rotations_from_dofs,
)
from skelpgt.fitting.keypoints import NUM_KEYPOINTS
from torch import Tensor, nn

NUM_BETAS = 10
MEAN_CAMERA = (0.9, 0.0, 0.0)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ViTConfig:
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    patch: int = 16
    padding: int = 4
    image_size: tuple[int, int] = (256, 192)  # (H, W)
    drop_path: float = 0.0
    stem: str = "patch"  # "patch": one 16×16 conv (timm/ViTPose); "conv": 3×3 stride-2 conv stack (small data)


@dataclass(frozen=True)
class HeadConfig:
    dim: int = 1024
    depth: int = 6
    heads: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024


@dataclass(frozen=True)
class NetConfig:
    backbone: ViTConfig
    head: HeadConfig = field(default_factory=HeadConfig)
    token_head: bool = False  # training-only per-token keypoint logits (LossWeights.tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        bb = dict(d["backbone"])
        bb["image_size"] = tuple(bb["image_size"])
        return cls(ViTConfig(**bb), HeadConfig(**d["head"]), bool(d.get("token_head", False)))


VIT_CONFIGS: dict[str, NetConfig] = {
    # HSMR's paper model (§5.1/§5.2). Never instantiated in the CPU tests.
    "vit-h": NetConfig(ViTConfig(dim=1280, depth=32, heads=16, drop_path=0.55), HeadConfig()),
    "vit-b": NetConfig(ViTConfig(dim=768, depth=12, heads=12, drop_path=0.3), HeadConfig()),
    # CPU-sized model for tests and the synthetic demo.
    "vit-tiny": NetConfig(ViTConfig(dim=192, depth=4, heads=3), HeadConfig(dim=192, depth=2, heads=3, head_dim=64, mlp_dim=384)),
    "vit-tiny-conv": NetConfig(ViTConfig(dim=192, depth=4, heads=3, stem="conv"), HeadConfig(dim=192, depth=2, heads=3, head_dim=64, mlp_dim=384)),
    # Even smaller: unit tests.
    "vit-micro": NetConfig(ViTConfig(dim=64, depth=2, heads=2), HeadConfig(dim=64, depth=1, heads=2, head_dim=32, mlp_dim=128)),
}


def net_config(arch: str | NetConfig | dict) -> NetConfig:
    if isinstance(arch, NetConfig):
        return arch
    if isinstance(arch, dict):
        return NetConfig.from_dict(arch)
    try:
        return VIT_CONFIGS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(VIT_CONFIGS)}") from None


# ----------------------------------------------------------------------------- pose parameterisation
def decode_pose(raw: Tensor) -> tuple[Tensor, Tensor]:
    """Network pose output (B,24,6) → (q (B,46), Gram–Schmidt matrices (B,24,3,3); 1-DOF rows unused)."""
    b = raw.shape[0]
    mats = roma.special_gramschmidt(raw.view(b, NUM_JOINTS, 2, 3).transpose(-1, -2))
    cols = [joint_dofs_from_rotation(j, mats[:, j]) for j in MULTI_DOF_JOINTS]
    index = [dof for j in MULTI_DOF_JOINTS for dof in JOINT_DOFS[j]] + list(SINGLE_DOFS)
    single = torch.atan2(-raw[:, list(SINGLE_DOF_JOINTS), 1], raw[:, list(SINGLE_DOF_JOINTS), 0])
    values = torch.cat((*cols, single), dim=-1)
    order = torch.empty(NUM_DOFS, dtype=torch.long)
    order[torch.tensor(index)] = torch.arange(NUM_DOFS)
    return values[:, order.to(raw.device)], mats


def encode_pose(q: Tensor) -> Tensor:
    """Inverse of `decode_pose` (up to Euler ambiguity): q (B,46) → 6D/2D representation (B,24,6)."""
    rot = rotations_from_dofs(q)
    raw = torch.cat((rot[..., :, 0], rot[..., :, 1]), dim=-1)  # columns 0 and 1
    single = torch.stack((torch.cos(q[:, list(SINGLE_DOFS)]), -torch.sin(q[:, list(SINGLE_DOFS)])), dim=-1)
    raw = raw.clone()
    raw[:, list(SINGLE_DOF_JOINTS)] = torch.cat((single, torch.zeros_like(single[..., :1]).expand(-1, -1, 4)), dim=-1)
    return raw


def rot_x(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def pelvis_frame(skel) -> Tensor:
    """F (3,3) with global pelvis rotation = F · Rp0 · Fᵀ: F = Rk0 · Ra0ᵀ, the pelvis bone alignment
    being the fixed `per_joint_rot[0]` (no shape dependence)."""
    return (skel.per_joint_rot[0] @ skel.apose_rot[0].T).detach().float().cpu()


def mean_pelvis_rotation(skel=None) -> Tensor:
    """BSM-frame pelvis rotation Rp0 (3,3) of an upright person facing the camera (global Rx(π))."""
    f = torch.eye(3) if skel is None else pelvis_frame(skel)
    return f.T @ rot_x(math.pi) @ f


def mean_pose_raw(pelvis: Tensor | None = None) -> Tensor:
    """Mean pose in the network's representation (24,6): identity / (1, 0) everywhere, pelvis = `pelvis`."""
    raw = encode_pose(torch.zeros(1, NUM_DOFS))[0]
    if pelvis is not None:
        raw[0] = torch.cat((pelvis[:, 0], pelvis[:, 1]))
    return raw


# ----------------------------------------------------------------------------- building blocks
class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """timm-compatible self-attention (fused qkv with bias, proj)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """(B,3,H,W) → tokens (B,N,dim) on a (H/patch, W/patch) grid: one patch-sized conv, or (stem='conv')
    log2(patch) 3×3 stride-2 convs with BatchNorm+ReLU and a 1×1 projection, which trains much faster
    from scratch on small data (Xiao et al., "Early convolutions help transformers see better", 2021)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        h, w = cfg.image_size
        if cfg.stem == "patch":
            self.proj = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch, padding=cfg.padding)
            self.grid = ((h + 2 * cfg.padding - cfg.patch) // cfg.patch + 1, (w + 2 * cfg.padding - cfg.patch) // cfg.patch + 1)
        elif cfg.stem == "conv":
            n = int(math.log2(cfg.patch))
            if 2**n != cfg.patch:
                raise ValueError(f"a conv stem needs a power-of-two patch size, got {cfg.patch}")
            layers, c_in = [], 3
            for i in range(n):
                c_out = max(cfg.dim >> (n - 1 - i), 16)
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(c_in, cfg.dim, 1)
            self.grid = (h // cfg.patch, w // cfg.patch)
        else:
            raise ValueError(f"unknown stem {cfg.stem!r}; known: 'patch', 'conv'")

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "stem"):
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """Plain ViT backbone; (B,3,H,W) → patch tokens (B,N,dim). Parameter names follow timm."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        n = self.patch_embed.grid[0] * self.patch_embed.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, self_attn: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: HeadConfig, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.self_attn = CrossAttention(cfg.dim, cfg.dim, cfg.heads, cfg.head_dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.norm_ctx = nn.LayerNorm(context_dim)
        self.cross_attn = CrossAttention(cfg.dim, context_dim, cfg.heads, cfg.head_dim)
        self.norm3 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), self.norm_ctx(context))
        return x + self.mlp(self.norm3(x))


class SKELHead(nn.Module):
    """One query token cross-attending to the backbone tokens → (pose raw (B,24,6), β (B,10), cam (B,3))."""

    def __init__(self, cfg: HeadConfig, context_dim: int, mean_pelvis: Tensor | None = None):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.query_pos = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.trunc_normal_(self.query_pos, std=0.02)
        self.layers = nn.ModuleList(DecoderLayer(cfg, context_dim) for _ in range(cfg.depth))
        self.apply(_init_weights)
        self.dec_pose = nn.Linear(cfg.dim, NUM_JOINTS * 6)
        self.dec_betas = nn.Linear(cfg.dim, NUM_BETAS)
        self.dec_cam = nn.Linear(cfg.dim, 3)
        for lin in (self.dec_pose, self.dec_betas, self.dec_cam):
            nn.init.xavier_uniform_(lin.weight, gain=0.01)
            nn.init.zeros_(lin.bias)
        self.register_buffer("mean_pose", mean_pose_raw(mean_pelvis).reshape(-1))
        self.register_buffer("mean_betas", torch.zeros(NUM_BETAS))
        self.register_buffer("mean_cam", torch.tensor(MEAN_CAMERA))

    def forward(self, context: Tensor, query_bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        b = context.shape[0]
        x = (self.query + self.query_pos).expand(b, -1, -1)
        if query_bias is not None:
            x = x + query_bias[:, None]
        for layer in self.layers:
            x = layer(x, context)
        tok = x[:, 0]
        pose = (self.dec_pose(tok) + self.mean_pose).view(b, NUM_JOINTS, 6)
        return pose, self.dec_betas(tok) + self.mean_betas, self.dec_cam(tok) + self.mean_cam


class Regressor(nn.Module):
    """Image crop (B,3,256,192) ImageNet-normalised → dict(q (B,46), betas (B,10), cam (B,3), pose_raw, pose_mats)."""

    def __init__(self, arch: str | NetConfig | dict = "vit-tiny", mean_pelvis: Tensor | None = None):
        super().__init__()
        self.config = net_config(arch)
        self.backbone = ViT(self.config.backbone)
        self.head = SKELHead(self.config.head, self.config.backbone.dim, mean_pelvis)
        self.token_keypoints = self.keypoint_query = None
        if self.config.token_head:
            # Per-token logits of "keypoint k lies in this patch" (trained by LossWeights.tokens); their
            # soft-argmax 2D keypoints also condition the query (zero-initialised: starts as plain HSMR).
            self.token_keypoints = nn.Linear(self.config.backbone.dim, NUM_KEYPOINTS)
            self.keypoint_query = nn.Linear(2 * NUM_KEYPOINTS, self.config.head.dim)
            nn.init.zeros_(self.keypoint_query.weight)
            nn.init.zeros_(self.keypoint_query.bias)
            self.register_buffer("token_centres", self._token_centres(), persistent=False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        tokens = self.backbone(images)
        out, bias = {}, None
        if self.token_keypoints is not None:
            logits = self.token_keypoints(tokens)  # (B,N,44)
            kp2d = logits.softmax(dim=1).transpose(1, 2) @ self.token_centres  # (B,44,2) crop units
            bias = self.keypoint_query(kp2d.detach().flatten(1))  # the pose losses must not pull the logits off the keypoints
            out = {"token_logits": logits, "token_kp2d": kp2d}
        pose_raw, betas, cam = self.head(tokens, bias)
        q, mats = decode_pose(pose_raw)
        return {"q": q, "betas": betas, "cam": cam, "pose_raw": pose_raw, "pose_mats": mats, **out}

    def _token_grid(self) -> tuple[float, Tensor]:
        """(tokens per crop unit, offset (2,)): token-grid coordinate (column, row) = crop units · scale + offset.

        The crop is 256 wide with the W-wide input at its centre, and a patch stem's conv padding
        shifts its patches by `padding` input pixels."""
        cfg = self.config.backbone
        pad = cfg.padding if cfg.stem == "patch" else 0
        h, w = cfg.image_size
        return h / cfg.patch, torch.tensor([(w / 2 + pad) / cfg.patch, (h / 2 + pad) / cfg.patch])

    def _token_centres(self) -> Tensor:
        """Centres (N,2) of the backbone tokens in normalised crop units (inverse of `token_index`)."""
        rows, cols = self.backbone.patch_embed.grid
        scale, offset = self._token_grid()
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        grid = torch.stack((c.flatten(), r.flatten()), dim=-1) + 0.5
        return ((grid - offset) / scale).float()

    def token_index(self, kp2d: Tensor) -> Tensor:
        """Keypoints (B,K,≥2) in normalised crop units → index (B,K) of the backbone token holding each, −1 outside."""
        rows, cols = self.backbone.patch_embed.grid
        scale, offset = self._token_grid()
        cr = torch.floor(kp2d[..., :2] * scale + offset.to(kp2d)).long()
        c, r = cr[..., 0], cr[..., 1]
        inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
        return torch.where(inside, r * cols + c, torch.full_like(c, -1))


def cam_translation(cam: Tensor, focal: float) -> Tensor:
    """Weak-perspective (s, tx, ty) (B,3) → translation (B,3) = (tx, ty, 2·f/s), f in crop units (§2.5)."""
    s = cam[:, 0]
    return torch.stack((cam[:, 1], cam[:, 2], 2.0 * focal / (s + 1e-9)), dim=-1)


# ----------------------------------------------------------------------------- pretrained weights
_PREFIXES = ("module.", "model.", "backbone.")


@dataclass
class BackboneReport:
    """What `load_backbone` did: source keys loaded / left out, our keys left at their init, the position-embedding resize."""

    loaded: list[str] = field(default_factory=list)  # our key names that received source weights
    missing: list[str] = field(default_factory=list)  # our keys with no source tensor
    unexpected: list[str] = field(default_factory=list)  # source keys (as given) with no counterpart
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (source key, source shape, our shape)
    pos_embed: dict | None = None  # {'from_grid', 'to_grid', 'cls_slot'} when resized

    def summary(self) -> str:
        pe = "" if self.pos_embed is None else f"; pos_embed {self.pos_embed['from_grid']} → {self.pos_embed['to_grid']}" + ("" if self.pos_embed["cls_slot"] else " (no cls slot in the source: entry 0 = 0)")
        return (f"backbone weights: {len(self.loaded)} tensors loaded, {len(self.missing)} missing {self.missing[:5]}, "
                f"{len(self.unexpected)} unexpected {self.unexpected[:5]}, {len(self.mismatched)} shape-mismatched {self.mismatched[:3]}{pe}")  # fmt: skip


def read_backbone_checkpoint(path) -> dict:
    """State dict of a timm / ViTPose (mmcv `state_dict`) / HMR2.0 (Lightning `state_dict`) / MAE (`model`) checkpoint file."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - Lightning / mmcv checkpoints pickle configs next to the tensors
        sd = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors (nor one under 'state_dict' / 'model')")
    return sd


def backbone_key(key: str) -> str:
    """Source key → our ViT key: prefixes `module.`, `model.`, `backbone.` stripped, ViTPose `last_norm.` → `norm.`."""
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key.replace("last_norm.", "norm.")


def load_backbone(module: nn.Module, state_dict: dict, strict: bool = True, src_grid: tuple[int, int] | None = None) -> BackboneReport:
    """Load a timm / ViTPose / HMR2.0 ViT state dict into `module` (a `Regressor` or a `ViT`) → `BackboneReport` (also logged).

    Key mapping (timm `VisionTransformer` names = ours, after `backbone_key`): `patch_embed.proj.*`,
    `pos_embed` (1, [1+]N, dim), `blocks.{i}.norm1|norm2.*`, `blocks.{i}.attn.qkv.*`,
    `blocks.{i}.attn.proj.*`, `blocks.{i}.mlp.fc1|fc2.*`, `norm.*`. A position embedding for another
    token grid (`src_grid`, else inferred: our grid, else a square one; with a cls slot when N−1
    fits, as in timm and ViTPose) is resized bicubically over the grid, entry 0 kept. Everything else (`cls_token`, heads, HMR2.0's `smpl_head.*`, ViTPose's `keypoint_head.*`)
    is reported as unexpected; tensors of the wrong shape are not loaded and reported. `strict`:
    raise if any of our keys is missing or mismatched.
    """
    vit = module.backbone if isinstance(module, Regressor) else module
    own = vit.state_dict()
    out, rep = {}, BackboneReport()
    for key, value in state_dict.items():
        k = backbone_key(key)
        if k not in own:
            rep.unexpected.append(key)
            continue
        if k == "pos_embed" and value.shape != own[k].shape and value.ndim == 3 and value.shape[-1] == own[k].shape[-1]:
            value, rep.pos_embed = _resize_pos_embed(value, vit.patch_embed.grid, src_grid)
        if value.shape != own[k].shape:
            rep.mismatched.append((key, tuple(value.shape), tuple(own[k].shape)))
            continue
        out[k] = value
    rep.loaded = list(out)
    rep.missing = [k for k in own if k not in out]
    logging.getLogger("skelpgt.model.network").info(rep.summary())
    if strict and (rep.missing or rep.mismatched):
        raise KeyError(rep.summary())
    vit.load_state_dict(out, strict=False)
    return rep


def _infer_grid(n: int, grid: tuple[int, int]) -> tuple[tuple[int, int], bool]:
    """(source grid, has cls slot) of an n-entry position embedding: our grid ±cls, else a square grid +cls (timm), else without."""
    own = grid[0] * grid[1]
    for m, cls_slot in ((n - 1, True), (n, False)):
        if m == own:
            return grid, cls_slot
    for m, cls_slot in ((n - 1, True), (n, False)):
        side = math.isqrt(max(m, 0))
        if side > 0 and side * side == m:
            return (side, side), cls_slot
    raise ValueError(f"cannot infer the token grid of a {n}-entry position embedding; pass src_grid=(rows, cols)")


def _resize_pos_embed(pos: Tensor, grid: tuple[int, int], src_grid: tuple[int, int] | None = None) -> tuple[Tensor, dict]:
    """Position embedding (1, [1+]N, dim) → (1, 1 + grid rows·cols, dim) by bicubic interpolation over the token grid."""
    n = pos.shape[1]
    if src_grid is not None:
        cls_slot = n == 1 + src_grid[0] * src_grid[1]
        if not cls_slot and n != src_grid[0] * src_grid[1]:
            raise ValueError(f"pos_embed has {n} entries, not {src_grid[0]}×{src_grid[1]} (+1)")
    else:
        src_grid, cls_slot = _infer_grid(n, grid)
    first = pos[:, :1] if cls_slot else pos.new_zeros(1, 1, pos.shape[-1])
    rest = pos[:, 1:] if cls_slot else pos
    rest = rest.reshape(1, src_grid[0], src_grid[1], -1).permute(0, 3, 1, 2)
    rest = nn.functional.interpolate(rest.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    out = torch.cat((first, rest.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)), dim=1)
    return out, {"from_grid": tuple(src_grid), "to_grid": tuple(grid), "cls_slot": cls_slot}
