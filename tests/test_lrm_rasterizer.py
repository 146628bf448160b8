import math

import pytest
import torch

import zeroverse.lrm.rasterizer as rz
from zeroverse.lrm.camera_rays import look_at, ray_origins_directions, world_to_camera
from zeroverse.lrm.rasterizer import rasterize_gaussians


def _scene(n, seed, dtype=torch.float32, B=1, C=2, size=16):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(B, n, 3, generator=g, dtype=dtype) * 2 - 1) * 0.6
    quats = torch.randn(B, n, 4, generator=g, dtype=dtype)
    scales = torch.rand(B, n, 3, generator=g, dtype=dtype) * 0.2 + 0.1
    opac = torch.rand(B, n, generator=g, dtype=dtype) * 0.6 + 0.3
    colors = torch.rand(B, n, 3, generator=g, dtype=dtype)
    az = torch.rand(B, C, generator=g, dtype=dtype) * 2 * math.pi
    eye = torch.stack([2.5 * az.cos(), 2.5 * az.sin(), torch.full_like(az, 0.8)], -1)
    viewmats = world_to_camera(look_at(eye, torch.zeros(3, dtype=dtype)))
    f = size * 1.1
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=dtype).expand(B, C, 3, 3)
    return means, quats, scales, opac, colors, viewmats, K.contiguous()


def test_single_isotropic_gaussian_centre_peak_radius():
    # Principal point on the centre of pixel (20, 40): an on-axis isotropic Gaussian projects to
    # an isotropic 2D Gaussian centred exactly there.
    H, W, f, z, sigma, opacity = 48, 64, 50.0, 3.0, 0.06, 0.8
    c2w = look_at(torch.tensor([0.0, -z, 0.0]), torch.zeros(3))
    K = torch.tensor([[f, 0, 40.5], [0, f, 20.5], [0, 0, 1]])
    means = torch.zeros(1, 1, 3)
    out = rasterize_gaussians(
        means, torch.tensor([[[1.0, 0, 0, 0]]]), torch.full((1, 1, 3), sigma),
        torch.tensor([[opacity]]), torch.tensor([[[1.0, 0.0, 0.0]]]),
        world_to_camera(c2w)[None, None], K[None, None], W, H, background=torch.ones(3),
        backend="torch",
    )
    alpha = out.alpha[0, 0, ..., 0]
    assert out.rgb.shape == (1, 1, H, W, 3) and out.depth.shape == (1, 1, H, W, 1)
    i, j = divmod(int(alpha.argmax()), W)
    assert (i, j) == (20, 40)
    assert alpha[20, 40].item() == pytest.approx(opacity, abs=1e-6)
    # 2D std in px: f*sigma/z = 1.0, dilated by gsplat's 0.3 px² low-pass filter.
    s2 = (f * sigma / z) ** 2 + 0.3
    for di, dj in [(0, 3), (2, 0), (-2, -2), (1, -3)]:
        expect = opacity * math.exp(-0.5 * (di * di + dj * dj) / s2)
        assert alpha[20 + di, 40 + dj].item() == pytest.approx(expect, rel=1e-4)
    # Symmetric about the centre; nothing far away (alpha < 1/255 is dropped).
    torch.testing.assert_close(alpha[20, 30:40].flip(0), alpha[20, 41:51])
    assert alpha[20, 40 + 4].item() == 0.0  # 0.8*exp(-16/2.6) < 1/255: dropped
    # Colour composited over white, depth = camera z where anything was hit.
    rgb = out.rgb[0, 0, 20, 40]
    torch.testing.assert_close(rgb, torch.tensor([1.0, 1 - opacity, 1 - opacity]), atol=1e-6, rtol=0)
    assert out.depth[0, 0, 20, 40, 0].item() == pytest.approx(z, rel=1e-6)


def test_off_axis_gaussian_lands_on_its_pixel():
    H = W = 32
    c2w = look_at(torch.tensor([1.5, -2.0, 1.0]), torch.tensor([0.1, 0.0, -0.1]))
    K = torch.tensor([[30.0, 0, 16.0], [0, 30.0, 16.0], [0, 0, 1]])
    o, d = ray_origins_directions(c2w, K, H, W)
    for (i, j) in [(5, 27), (25, 3), (16, 16)]:
        mean = (o[i, j] + 2.7 * d[i, j])[None, None]
        out = rasterize_gaussians(
            mean, torch.tensor([[[0.3, 0.2, -0.5, 0.9]]]), torch.tensor([[[0.05, 0.02, 0.03]]]),
            torch.tensor([[0.9]]), torch.ones(1, 1, 3), world_to_camera(c2w)[None, None],
            K[None, None], W, H, backend="torch",
        )
        a = out.alpha[0, 0, ..., 0]
        assert divmod(int(a.argmax()), W) == (i, j)
        assert a[i, j].item() == pytest.approx(0.9, abs=1e-5)


@pytest.mark.parametrize("opacity", [0.9, 0.99])
def test_front_to_back_stop_rule_and_near_plane(opacity):
    c2w = look_at(torch.tensor([0.0, -3.0, 0.0]), torch.zeros(3))
    K = torch.tensor([[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]])  # axis through pixel (8, 8)
    means = torch.tensor([[[0.0, 0.5, 0.0], [0.0, -0.5, 0.0], [0.0, -3.5, 0.0]]])  # far, near, behind
    colors = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]], requires_grad=True)
    means.requires_grad_(True)
    out = rasterize_gaussians(
        means, torch.tensor([[[1.0, 0, 0, 0]] * 3]), torch.full((1, 3, 3), 0.2),
        torch.full((1, 3), opacity), colors, world_to_camera(c2w)[None, None], K[None, None],
        16, 16, background=torch.zeros(3), backend="torch",
    )
    px = out.rgb[0, 0, 8, 8]
    # Nearest (blue) in front, red behind it gets what is left, unless the transmittance would
    # drop to <= 1e-4 (0.01 * 0.01 for opacity 0.99): then compositing stops before it, as in
    # gsplat. The Gaussian behind the camera is culled.
    red = (1 - opacity) * opacity if opacity < 0.99 else 0.0
    torch.testing.assert_close(px, torch.tensor([red, 0.0, opacity]), atol=1e-6, rtol=0)
    (out.rgb.sum() + out.depth.sum()).backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(colors.grad).all()
    assert colors.grad[0, 2].abs().sum() == 0


def test_tiles_match_one_big_tile(monkeypatch):
    scene = _scene(40, seed=3, B=2, C=2, size=24, dtype=torch.float64)
    scene = [t.clone().requires_grad_(t.dim() == 3 and t.shape[-1] in (3, 4) and i < 5)
             for i, t in enumerate(scene)]
    outs = []
    for tile in (8, 1000):
        monkeypatch.setattr(rz, "TORCH_TILE", tile)
        for t in scene:
            t.grad = None
        o = rasterize_gaussians(*scene, 24, 24, background=torch.ones(3, dtype=torch.float64),
                                backend="torch")
        (o.rgb.square().sum() + o.depth.sum()).backward()
        outs.append((o.rgb.detach(), o.alpha.detach(), o.depth.detach(),
                     *[t.grad.clone() for t in scene[:5] if t.requires_grad]))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_gradients_match_finite_differences():
    means, quats, scales, opac, colors, viewmats, K = _scene(4, seed=1, dtype=torch.float64, size=10)
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    weights = torch.rand(1, 2, 10, 10, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(m, q, s, o, c):
        out = rasterize_gaussians(m, q, s, o, c, viewmats, K, 10, 10,
                                  background=torch.ones(3, dtype=torch.float64), backend="torch")
        return (torch.cat([out.rgb, out.alpha, out.depth], -1) * weights).sum()

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_validation_errors():
    m, q, s, o, c, v, K = _scene(3, seed=0)
    with pytest.raises(ValueError, match="quats"):
        rasterize_gaussians(m, q[..., :3], s, o, c, v, K, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        rasterize_gaussians(m, q, s, o, c, v, K, 8, 8, backend="cuda")


@pytest.mark.gpu
def test_gsplat_matches_torch():
    if not torch.cuda.is_available() or not rz.gsplat_available():
        pytest.skip("needs CUDA and gsplat")
    scene = [t.cuda() for t in _scene(300, seed=5, B=2, C=3, size=64)]
    grads = []
    images = []
    for backend in ("gsplat", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in scene[:5]]
        out = rasterize_gaussians(*leaves, *scene[5:], 64, 64, background=torch.ones(3, device="cuda"),
                                  backend=backend)
        torch.manual_seed(0)
        w = torch.rand(out.rgb.shape, device="cuda")
        (out.rgb * w).sum().backward()
        images.append((out.rgb.detach(), out.alpha.detach()))
        grads.append([leaves[i].grad for i in (0, 2, 3, 4)])  # means, scales, opacities, colors
    for a, b in zip(*images):
        # Isolated pixels may straddle the 1/255 alpha cut-off (__expf vs exp): up to ~1/255.
        assert (a - b).abs().max().item() < 5e-3
        assert ((a - b).abs() > 1e-3).float().mean().item() < 1e-3
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 2e-3 * b.abs().max().item() + 1e-5
