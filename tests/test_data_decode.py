"""Resizing primitives: no colour bleeding from empty pixels, no depths between surfaces, exact K scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroverse.data.decode import composite, decode_depth, resize_geometry, resize_rgba, scale_intrinsics


def test_empty_pixels_colour_never_leaks():
    rgba = torch.zeros(1, 4, 32, 32)
    rgba[:, 0] = 1.0  # straight alpha: empty pixels may hold any colour (here red)
    rgba[:, :3, 8:24, 8:24] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    rgba[:, 3, 8:24, 8:24] = 1.0
    for size in [(16, 16), (12, 20), (64, 64)]:
        premult, alpha = resize_rgba(rgba, size)
        image = composite(premult, alpha, torch.ones(3))
        # only blue and the white background mix: red = green everywhere
        assert torch.allclose(image[:, 0], image[:, 1], atol=1e-6), size
        assert alpha.min() >= 0 and alpha.max() <= 1


@pytest.mark.parametrize("size", [(16, 16), (10, 14), (64, 64)])
def test_depth_edges_take_real_samples(size):
    H = W = 32
    depth = torch.zeros(1, 1, H, W)
    depth[..., 4:28, 4:28] = 3.0  # far square
    depth[..., 10:20, 10:20] = 2.0  # near square in front: an occlusion edge
    normals = torch.zeros(1, 3, H, W)
    normals[:, 2][depth[0] > 0] = 1.0
    out, others = resize_geometry(depth, size, {"normals": normals})
    values = set(np.round(out.unique().numpy(), 6).tolist())
    assert values <= {0.0, 2.0, 3.0}, values  # never halfway to the background or between squares
    n = others["normals"].norm(dim=1)
    assert torch.allclose(n[out[:, 0] > 0], torch.ones(()))


def test_smooth_surfaces_are_filtered_at_the_new_pixel_centres():
    H, W = 40, 40
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    depth = (2.0 + 0.01 * u + 0.005 * v)[None, None]  # a gently sloping surface, linear in pixels
    for h, w in [(20, 20), (16, 24), (80, 80)]:
        out, _ = resize_geometry(depth, (h, w))
        vv, uu = torch.meshgrid((torch.arange(h) + 0.5) * H / h, (torch.arange(w) + 0.5) * W / w, indexing="ij")
        expected = 2.0 + 0.01 * uu + 0.005 * vv
        inner = (slice(2, -2), slice(2, -2))  # borders: the filter is clipped at the image edge
        err = (out[0, 0][inner] - expected[inner]).abs().max()
        # integer reductions: exact; other factors: the bilinear kernel's centring (< 0.1 input
        # pixel, slope 0.015 per pixel); upsampling: bilinear inside one smooth surface
        bound = 1e-5 if H % h == 0 and W % w == 0 else 0.1 * 0.015
        assert err < bound, (h, w, err)


def test_scale_intrinsics_keeps_pixel_centre_convention():
    K = torch.tensor([[100.0, 0, 64], [0, 90.0, 48], [0, 0, 1]])
    half = scale_intrinsics(K, 0.5, 0.25)
    # the image corner (0, 0) and far corner (W, H) map to the new corners
    assert torch.allclose(half @ torch.tensor([0.0, 0, 1]), torch.tensor([32.0, 12, 1]))
    assert half[0, 0] == 50 and half[1, 1] == 22.5


def test_decode_depth_treats_far_and_invalid_as_empty():
    raw = np.array([[1.5, 1e10], [np.inf, -1.0]], "<f4").tobytes()
    assert decode_depth(raw, 2, 2).tolist() == [[1.5, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="bytes"):
        decode_depth(raw[:-1], 2, 2)
