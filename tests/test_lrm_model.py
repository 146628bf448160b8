import math

import pytest
import torch
from torch import nn

from zeroverse.lrm.camera_rays import intrinsics_from_fov, look_at
from zeroverse.lrm.gslrm import GSLRM, PRESETS, GSLRMConfig, estimate_flops


def _cameras(B, V, size, radius=2.5):
    az = torch.arange(V) * (2 * math.pi / V) + 0.3
    eye = torch.stack([radius * az.cos(), radius * az.sin(), torch.full_like(az, 0.9)], -1)
    c2w = look_at(eye, torch.zeros(3)).expand(B, V, 4, 4).contiguous()
    K = intrinsics_from_fov(50.0, size, size).expand(B, V, 3, 3).contiguous()
    return c2w, K


def test_presets_and_validation():
    assert GSLRMConfig.preset("small").depth == 12 and GSLRMConfig.preset("small").width == 768
    assert GSLRMConfig.preset("base").depth == 24 and GSLRMConfig.preset("base").width == 1024
    assert set(PRESETS) >= {"tiny", "small", "base"}
    with pytest.raises(ValueError, match="preset"):
        GSLRMConfig.preset("huge")
    with pytest.raises(ValueError, match="multiple"):
        GSLRMConfig(image_size=100, patch_size=8)
    cfg = GSLRMConfig.preset("tiny")
    assert GSLRMConfig.from_dict(cfg.to_dict()) == cfg


def test_no_biases_anywhere():
    model = GSLRM(GSLRMConfig.preset("tiny"))
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            assert m.bias is None, m
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_forward_shapes_and_sane_init():
    torch.manual_seed(0)
    cfg = GSLRMConfig.preset("tiny", num_input_views=2)
    model = GSLRM(cfg)
    B, V, S = 2, 2, cfg.image_size
    c2w, K = _cameras(B, V, S)
    g = model(torch.rand(B, V, 3, S, S), c2w, K)
    N = V * S * S
    assert g.means.shape == (B, N, 3) and g.quats.shape == (B, N, 4)
    assert g.scales.shape == (B, N, 3) and g.opacities.shape == (B, N) and g.colors.shape == (B, N, 3)
    assert (g.scales > 0).all() and (g.scales <= cfg.max_scale).all()
    assert abs(g.scales.median().item() - cfg.init_scale) < 0.5 * cfg.init_scale
    assert 0.1 <= g.opacities.mean().item() <= 0.5
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(B, N))
    # Each Gaussian sits on its pixel's ray, between near and far, near the object at init.
    dist = (g.means.view(B, V, -1, 3) - c2w[:, :, None, :3, 3]).norm(dim=-1)
    assert (dist >= cfg.near - 1e-5).all() and (dist <= cfg.far + 1e-5).all()
    assert g.means.norm(dim=-1).median() < 1.5
    out = model.render(g, c2w, K, S, S, background=torch.ones(3))
    assert out.rgb.shape == (B, V, S, S, 3)
    assert torch.isfinite(out.rgb).all() and 0.02 < out.alpha.mean() < 0.999
    out.rgb.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_same_result():
    torch.manual_seed(0)
    cfg = GSLRMConfig.preset("tiny", num_input_views=1)
    a = GSLRM(cfg)
    b = GSLRM(GSLRMConfig.preset("tiny", num_input_views=1, grad_checkpointing=True))
    b.load_state_dict(a.state_dict())
    c2w, K = _cameras(1, 1, 32)
    x = torch.rand(1, 1, 3, 32, 32)
    ga, gb = a(x, c2w, K), b(x, c2w, K)
    ga.means.sum().backward()
    gb.means.sum().backward()
    torch.testing.assert_close(ga.means, gb.means)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_bad_inputs_raise():
    model = GSLRM(GSLRMConfig.preset("tiny"))
    c2w, K = _cameras(1, 2, 30)
    with pytest.raises(ValueError, match="multiple"):
        model(torch.rand(1, 2, 3, 30, 30), c2w, K)


def test_flops_small():
    f = estimate_flops(GSLRMConfig.preset("small"), 4, 256, 256)
    assert f["tokens"] == 4096
    # 12 layers x (24 T D² matmuls + 4 T² D attention) + embed + head, ~1.32 TFLOP forward.
    assert 1.2e12 < f["forward"] < 1.45e12 and f["train"] == 3 * f["forward"]
