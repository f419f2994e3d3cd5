"""Pretrained backbone weights: HMR2.0 (Lightning) / ViTPose (mmcv) / timm key layouts, position-embedding resize, key report."""

import pytest
import torch
from skelpgt.model.network import (
    VIT_CONFIGS,
    NetConfig,
    Regressor,
    ViT,
    ViTConfig,
    load_backbone,
    read_backbone_checkpoint,
)  # fmt: skip

SMALL = ViTConfig(dim=32, depth=2, heads=2)  # same key names as vit-h, fast


def _source(cfg: ViTConfig, seed=0) -> dict:
    """A ViT state dict in timm naming with random values (ours, so the key set is exactly the layout)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in ViT(cfg).state_dict().items()}


def test_hmr2_lightning_checkpoint(tmp_path):
    src = _source(SMALL)
    sd = {f"backbone.{k}": v for k, v in src.items()}
    sd["smpl_head.decpose.weight"] = torch.zeros(144, 1024)
    sd["discriminator.D_conv1.weight"] = torch.zeros(32, 9, 1, 1)
    torch.save({"state_dict": sd, "hyper_parameters": {"cfg": {"MODEL": "hmr2"}}, "epoch": 3}, tmp_path / "hmr2.ckpt")
    net = Regressor(NetConfig(SMALL))
    report = load_backbone(net, read_backbone_checkpoint(tmp_path / "hmr2.ckpt"))
    assert report.missing == [] and report.mismatched == [] and report.pos_embed is None
    assert set(report.unexpected) == {"smpl_head.decpose.weight", "discriminator.D_conv1.weight"}
    assert len(report.loaded) == len(src)
    own = net.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items())


def test_vitpose_checkpoint_resize_and_mismatch(tmp_path):
    src = _source(SMALL, seed=1)
    sd = {f"backbone.{k.replace('norm.', 'last_norm.') if k.startswith('norm.') else k}": v for k, v in src.items()}
    sd["keypoint_head.final_layer.weight"] = torch.zeros(17, 32, 1, 1)
    # a timm ImageNet embedding: 224 px → 14×14 tokens + cls; channel 0 varies with the row, channel 1 with the column
    r, c = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    pe = torch.zeros(1, 1 + 196, 32)
    pe[0, 0] = 7.0
    pe[0, 1:, 0], pe[0, 1:, 1] = r.flatten(), c.flatten()
    sd["backbone.pos_embed"] = pe
    sd["backbone.blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)  # wrong width: reported, not loaded
    torch.save({"state_dict": sd, "meta": {"mmcv_version": "1.3.9"}}, tmp_path / "vitpose.pth")
    net = Regressor(NetConfig(SMALL))
    before = net.backbone.blocks[1].mlp.fc1.weight.clone()
    with pytest.raises(KeyError, match="1 shape-mismatched"):
        load_backbone(net, read_backbone_checkpoint(tmp_path / "vitpose.pth"))
    report = load_backbone(net, read_backbone_checkpoint(tmp_path / "vitpose.pth"), strict=False)
    assert report.mismatched == [("backbone.blocks.1.mlp.fc1.weight", (64, 32), (128, 32))]
    assert report.missing == ["blocks.1.mlp.fc1.weight"] and report.unexpected == ["keypoint_head.final_layer.weight"]
    assert torch.equal(net.backbone.blocks[1].mlp.fc1.weight, before)
    assert torch.equal(net.backbone.norm.weight, src["norm.weight"])
    assert report.pos_embed == {"from_grid": (14, 14), "to_grid": (16, 12), "cls_slot": True}
    pos = net.backbone.pos_embed.detach()
    assert pos.shape == (1, 1 + 16 * 12, 32) and pos[0, 0, 0] == 7.0
    grid = pos[0, 1:].reshape(16, 12, 32)
    assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(16, 12)) and torch.allclose(grid[:, :, 1], grid[:1, :, 1].expand(16, 12))
    # row i of 16 samples source row (i + 0.5)·14/16 − 0.5 (bicubic, so interior values are within a fraction of a row)
    rows = (torch.arange(16.0) + 0.5) * 14 / 16 - 0.5
    cols = (torch.arange(12.0) + 0.5) * 14 / 12 - 0.5
    assert (grid[2:-2, 0, 0] - rows[2:-2]).abs().max() < 0.3 and (grid[0, 2:-2, 1] - cols[2:-2]).abs().max() < 0.3
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all() and (grid[0, 1:, 1] > grid[0, :-1, 1]).all()


def test_pos_embed_without_cls_slot():
    src = _source(SMALL, seed=2)
    src["pos_embed"] = torch.randn(1, 16 * 12, 32)  # same grid, no cls entry
    vit = ViT(SMALL)
    report = load_backbone(vit, src)
    assert report.pos_embed == {"from_grid": (16, 12), "to_grid": (16, 12), "cls_slot": False}
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(32)) and torch.allclose(vit.pos_embed[0, 1:], src["pos_embed"][0])


def test_vitpose_h_layout_fits_vit_h():
    """The full ViTPose-H key layout and shapes (256×192 with a cls slot) load into `vit-h` with nothing missing (meta tensors)."""
    cfg = VIT_CONFIGS["vit-h"].backbone
    with torch.device("meta"):
        vit = ViT(cfg)
        sd = {"backbone.patch_embed.proj.weight": torch.empty(1280, 3, 16, 16), "backbone.patch_embed.proj.bias": torch.empty(1280),
              "backbone.pos_embed": torch.empty(1, 193, 1280), "backbone.last_norm.weight": torch.empty(1280),
              "backbone.last_norm.bias": torch.empty(1280), "keypoint_head.final_layer.weight": torch.empty(17, 256, 1, 1)}  # fmt: skip
        for i in range(32):
            p = f"backbone.blocks.{i}."
            sd.update({p + "norm1.weight": torch.empty(1280), p + "norm1.bias": torch.empty(1280), p + "attn.qkv.weight": torch.empty(3840, 1280),
                       p + "attn.qkv.bias": torch.empty(3840), p + "attn.proj.weight": torch.empty(1280, 1280), p + "attn.proj.bias": torch.empty(1280),
                       p + "norm2.weight": torch.empty(1280), p + "norm2.bias": torch.empty(1280), p + "mlp.fc1.weight": torch.empty(5120, 1280),
                       p + "mlp.fc1.bias": torch.empty(5120), p + "mlp.fc2.weight": torch.empty(1280, 5120), p + "mlp.fc2.bias": torch.empty(1280)})  # fmt: skip
        report = load_backbone(vit, sd)
    assert report.missing == [] and report.mismatched == [] and report.pos_embed is None
    assert report.unexpected == ["keypoint_head.final_layer.weight"] and len(report.loaded) == 5 + 32 * 12


def test_training_records_the_report(models_dir, tmp_path, caplog):
    import logging

    from skelpgt.model.data import DataConfig
    from skelpgt.model.losses import BodyModel
    from skelpgt.model.train import TrainConfig, build_model

    src = _source(VIT_CONFIGS["vit-micro"].backbone, seed=3)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.items()} | {"smpl_head.x": torch.zeros(1)}}, tmp_path / "hmr2.ckpt")
    cfg = TrainConfig(data=DataConfig(), out_dir=str(tmp_path), arch="vit-micro", backbone_weights=str(tmp_path / "hmr2.ckpt"))
    with caplog.at_level(logging.INFO, logger="skelpgt.model.network"):
        model = build_model(cfg, BodyModel(models_dir))
    assert model.backbone_report["unexpected"] == ["smpl_head.x"] and model.backbone_report["missing"] == []
    assert any("1 unexpected ['smpl_head.x']" in m for m in caplog.messages)
    assert torch.equal(model.backbone.blocks[1].attn.qkv.weight, src["blocks.1.attn.qkv.weight"])
