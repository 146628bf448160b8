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
