"""plucker_rays: unit directions through pixel centres, moments o x d, world space, any batch shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_views import perspective_intrinsics
from zeroverse.scene.cameras import look_at, spherical_eye
from zeroverse.data import plucker_rays


def cameras(n: int, H: int, W: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    c2w = []
    for _ in range(n):
        radius, el, az = rng.uniform(1.7, 3.1), rng.uniform(-30, 70), rng.uniform(0, 360)
        c2w.append(look_at(spherical_eye(radius, az, el), rng.uniform(-0.3, 0.3, 3)))
    c2w = np.stack(c2w)
    fx, fy, cx, cy = perspective_intrinsics(H, W)
    K = np.tile(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), (n, 1, 1))
    K[:, 0, 0] *= rng.uniform(0.8, 1.2, n)  # non-square pixels and off-centre principal points too
    K[:, 1, 2] += rng.uniform(-3, 3, n)
    return torch.from_numpy(c2w), torch.from_numpy(K)


@pytest.mark.parametrize("seed", range(4))
def test_rays_pass_through_pixel_centres(seed):
    H, W = 12, 20
    c2w, K = cameras(6, H, W, seed)
    rays = plucker_rays(c2w.reshape(2, 3, 4, 4), K.reshape(2, 3, 3, 3), H, W).reshape(6, 6, H, W)
    assert rays.shape == (6, 6, H, W) and rays.dtype == torch.float64
    d, m = rays[:, :3], rays[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(6, H, W, dtype=torch.float64))
    assert torch.allclose((d * m).sum(1), torch.zeros(6, H, W, dtype=torch.float64), atol=1e-12)
    o = c2w[:, :3, 3]
    for t in (0.5, 2.0):  # any point on the ray has the same moment and projects to the pixel centre
        X = o[:, :, None, None] + t * d
        assert torch.allclose(torch.linalg.cross(X, d, dim=1), m, atol=1e-12)
        cam = torch.einsum("nji,njhw->nihw", c2w[:, :3, :3], X - o[:, :, None, None])
        uv = torch.einsum("nij,njhw->nihw", K, cam)
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        assert torch.allclose(u, (torch.arange(W, dtype=torch.float64) + 0.5).expand(6, H, W))
        assert torch.allclose(v, (torch.arange(H, dtype=torch.float64) + 0.5)[:, None].expand(6, H, W))
        assert (cam[:, 2] > 0).all()  # OpenCV: forward is +z


def test_float32_and_errors():
    c2w, K = cameras(2, 4, 4)
    assert plucker_rays(c2w.float(), K.float(), 4, 4).dtype == torch.float32
    with pytest.raises(ValueError):
        plucker_rays(c2w[:, :3], K, 4, 4)
    with pytest.raises(ValueError):
        plucker_rays(c2w, K[:1], 4, 4)


def test_matches_the_trainers_twin():
    twin = pytest.importorskip("zeroverse.lrm.camera_rays")
    c2w, K = cameras(3, 8, 10)
    assert torch.allclose(plucker_rays(c2w, K, 8, 10), twin.plucker_rays(c2w, K, 8, 10), atol=1e-10)
