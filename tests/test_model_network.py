"""Network: pose parameterisation round trips, DOF conventions, mean pose, backbone loading."""
import math

import pytest
import torch
from skelpgt.fitting.dofs import dofs_from_rotations
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.model.network import (
    VIT_CONFIGS,
    Regressor,
    ViT,
    decode_pose,
    encode_pose,
    load_backbone,
    mean_pelvis_rotation,
    rotations_from_dofs,
)  # fmt: skip


def test_rotations_match_skel_and_decode_inverts_encode(skel_model):
    torch.manual_seed(0)
    q = (torch.rand(6, 46, dtype=torch.float64) - 0.5) * 1.6
    rot = rotations_from_dofs(q)
    assert torch.allclose(rot.float(), skel_model.pose_rotations(q.float()), atol=1e-6)
    q2, mats = decode_pose(encode_pose(q))
    assert torch.allclose(q2, q, atol=1e-9)
    # same Euler convention as fitting.convert for the multi-DOF joints
    assert torch.allclose(dofs_from_rotations(rot), q2, atol=1e-7)
    assert torch.allclose(mats[:, 0], rot[:, 0], atol=1e-9)


def test_mean_output_is_upright_person_facing_camera(models_dir, skel_model):
    torch.manual_seed(0)
    net = Regressor("vit-micro", mean_pelvis_rotation(skel_model))
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 256, 192))
    assert out["q"].shape == (2, 46) and out["betas"].shape == (2, 10) and out["cam"].shape == (2, 3)
    assert torch.allclose(out["cam"], torch.tensor([0.9, 0.0, 0.0]).expand(2, 3), atol=0.05)
    with torch.no_grad():
        kp = KeypointRegressor.from_models_dir(models_dir)(skel_model(out["q"], out["betas"]).skin_verts)
    # camera frame has y down: head top (38) above the ankles (25, 30); pelvis roughly central
    assert torch.all(kp[:, 38, 1] < kp[:, 39, 1]) and torch.all(kp[:, 39, 1] < kp[:, 25, 1])
    assert torch.all((kp[:, :, 1].amax(1) - kp[:, :, 1].amin(1)) > 1.0)
    # gradients reach the backbone
    net(torch.randn(1, 3, 256, 192))["q"].sum().backward()
    assert net.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_configs_and_timm_backbone_loading():
    h = VIT_CONFIGS["vit-h"].backbone
    assert (h.dim, h.depth, h.heads, h.patch, h.image_size) == (1280, 32, 16, 16, (256, 192))
    src = ViT(VIT_CONFIGS["vit-micro"].backbone)
    # a timm/ViTPose-style dict: prefixed keys, cls token, a 14x14 (224 px) position embedding, a classifier head
    sd = {f"backbone.{k}": v.clone() + 0.5 for k, v in src.state_dict().items() if k != "pos_embed"}
    sd["backbone.pos_embed"] = torch.randn(1, 1 + 14 * 14, 64)
    sd["backbone.cls_token"] = torch.zeros(1, 1, 64)
    sd["head.weight"] = torch.zeros(1000, 64)
    net = Regressor("vit-micro")
    report = load_backbone(net, sd)
    assert set(report.unexpected) == {"backbone.cls_token", "head.weight"}
    assert torch.equal(net.backbone.blocks[1].attn.qkv.weight, sd["backbone.blocks.1.attn.qkv.weight"])
    assert net.backbone.pos_embed.shape == (1, 1 + 16 * 12, 64)
    assert torch.equal(net.backbone.pos_embed[0, 0], sd["backbone.pos_embed"][0, 0])
    with torch.no_grad():
        assert math.isfinite(float(net(torch.zeros(1, 3, 256, 192))["q"].sum()))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_token_index_finds_the_patch_of_a_keypoint(stem):
    """A keypoint's token (LossWeights.tokens) is the patch whose receptive field holds it; outside → −1."""
    import dataclasses

    from skelpgt.model.network import NetConfig, Regressor, ViTConfig

    cfg = NetConfig(ViTConfig(dim=32, depth=1, heads=2, stem=stem), token_head=True)
    model = Regressor(cfg)
    rows, cols = model.backbone.patch_embed.grid
    pad = 4 if stem == "patch" else 0
    # centre of input pixel (u, v) → normalised crop units of the 256-wide square patch
    u, v = torch.tensor([0.5, 100.0, 185.0, -10.0]), torch.tensor([0.5, 130.0, 250.0, 50.0])
    kp = torch.stack(((u + 32) / 256 - 0.5, v / 256 - 0.5), dim=-1)[None]
    idx = model.token_index(kp)[0]
    expect = [((vv + pad) // 16) * cols + (uu + pad) // 16 for uu, vv in zip(u.tolist(), v.tolist())]
    assert idx[:3].tolist() == [int(e) for e in expect[:3]]
    assert idx[3] == -1
    out = model(torch.zeros(1, 3, 256, 192))
    assert out["token_logits"].shape == (1, rows * cols, 44)
    assert "token_logits" not in Regressor(dataclasses.replace(cfg, token_head=False))(torch.zeros(1, 3, 256, 192))
