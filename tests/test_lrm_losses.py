import pytest
import torch

from zeroverse.lrm import losses, metrics


def test_ssim_identity_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 32, 32, generator=g)
    assert losses.ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    very = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s1, s2 = losses.ssim(noisy, x).item(), losses.ssim(very, x).item()
    assert 1 > s1 > s2
    per = losses.ssim(noisy, x, reduction="none")
    assert per.shape == (2, 3)
    y = noisy.clone().requires_grad_(True)
    (1 - losses.ssim(y, x)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_ssim_constant_images():
    # Two flat images: only the luminance term differs.
    a = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    b = torch.full((1, 3, 16, 16), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    expect = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert losses.ssim(a, b).item() == pytest.approx(expect, rel=1e-9)


def test_psnr():
    x = torch.zeros(4, 3, 8, 8)
    y = torch.full((4, 3, 8, 8), 0.1)
    torch.testing.assert_close(metrics.psnr(y, x), torch.full((4,), 20.0))
    assert metrics.lpips(x, y, None) is None  # no weights: skipped, never a made-up number
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(x, y)


def _ring_camera(size=16):
    from zeroverse.lrm.camera_rays import intrinsics_from_fov, look_at

    c2w = look_at(torch.tensor([[2.0, 1.0, 0.8]]), torch.zeros(1, 3))  # [1, 4, 4]
    K = intrinsics_from_fov(50.0, size, size)[None]
    return c2w, K


def test_ray_distance_error_is_zero_on_the_true_surface_and_ignores_uncovered_pixels():
    from zeroverse.data.rays import pixel_rays
    from zeroverse.lrm.losses import ray_distance_error

    size = 16
    c2w, K = _ring_camera(size)
    g = torch.Generator().manual_seed(0)
    depth = 1.5 + torch.rand(1, 1, 1, size, size, generator=g)  # planar z
    alpha = (torch.rand(1, 1, 1, size, size, generator=g) > 0.3).float()
    o, d = pixel_rays(c2w[None], K[None], size, size)  # [1, 1, H, W, 3]
    cos = (d * c2w[0, :3, 2]).sum(-1)
    t = depth[:, :, 0] / cos
    means = (o + t[..., None] * d).reshape(1, -1, 3)
    exact = ray_distance_error(means, c2w[None], K[None], depth, alpha)
    assert exact.item() < 1e-5
    # 0.1 further along every ray: error 0.1 (on covered pixels only).
    shifted = (o + (t[..., None] + 0.1) * d).reshape(1, -1, 3)
    assert abs(ray_distance_error(shifted, c2w[None], K[None], depth, alpha).item() - 0.1) < 1e-5
    # Moving only the uncovered pixels' Gaussians changes nothing.
    moved = means.clone().view(1, size, size, 3)
    moved[0][alpha[0, 0, 0] == 0] += 5.0
    assert ray_distance_error(moved.view(1, -1, 3), c2w[None], K[None], depth, alpha).item() < 1e-5
    # Nothing covered: 0, not NaN.
    none = ray_distance_error(shifted, c2w[None], K[None], depth, torch.zeros_like(alpha))
    assert none.item() == 0.0
