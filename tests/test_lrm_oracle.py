"""The trainer's conventions against real renders: Gaussians placed from the input views' depth
maps, rendered by the model's renderer into the target views, must reproduce the target images.

This ties together the renderer (Blender), the stored cameras and depth, the dataset's decoding
and resizing, the pixel-ray convention and the Gaussian rasterizer: a flipped axis, a half-pixel
shift or a wrong depth convention anywhere makes the oracle fall to the level of a blank image.
"""

import pytest
import torch

from zeroverse.data import ViewDataset, collate
from zeroverse.lrm import metrics
from zeroverse.lrm.g3r import unproject_depth
from zeroverse.lrm.gslrm import GSLRM, Gaussians

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def _oracle_psnr(item: dict, n_in: int, flip: bool = False) -> tuple[float, float]:
    b = collate([item])
    img, c2w, K = b["images"][0], b["c2w"][0], b["K"][0]
    depth, alpha = b["depths"][0, :, 0], b["alphas"][0, :, 0]
    H, W = img.shape[-2:]
    c2w_in = c2w[:n_in].clone()
    if flip:  # an OpenGL-style camera read as OpenCV: y and z axes reversed
        c2w_in[:, :3, 1:3] *= -1
    pts = unproject_depth(depth[:n_in], c2w_in, K[:n_in])
    covered = (depth[:n_in] > 0) & (alpha[:n_in] > 0.5)
    means, colors = pts[covered], img[:n_in].permute(0, 2, 3, 1)[covered]
    n = means.shape[0]
    # About one pixel wide at its own depth, opaque: a surfel per covered input pixel.
    size = (depth[:n_in][covered] / K[0, 0, 0])[:, None].expand(n, 3)
    g = Gaussians(means=means[None], quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4),
                  scales=size[None], opacities=torch.full((1, n), 0.99),
                  colors=colors[None].clamp(1e-3, 1 - 1e-3))
    out = GSLRM.render(g, c2w[None, n_in:], K[None, n_in:], H, W, torch.ones(3))
    pred = out.rgb.permute(0, 1, 4, 2, 3)
    target = img[None, n_in:]
    return metrics.psnr(pred, target).mean().item(), metrics.psnr(torch.ones_like(target), target).mean().item()


def test_depth_placed_gaussians_reproduce_target_views(small_root):
    ds = ViewDataset(small_root, num_input_views=2, num_target_views=2, channels=("rgb", "alpha", "depth"), seed=0)
    oracle, blank, flipped = [], [], []
    for i in range(len(ds)):
        item = ds[i]
        o, b = _oracle_psnr(item, 2)
        f, _ = _oracle_psnr(item, 2, flip=True)
        oracle.append(o), blank.append(b), flipped.append(f)
    oracle, blank, flipped = (torch.tensor(x).mean().item() for x in (oracle, blank, flipped))
    # Two inputs leave parts of the targets unseen, so the oracle is far from perfect; but it must
    # beat a white image by a wide margin, and a wrong camera convention must lose that margin.
    assert oracle > blank + 5.0, (oracle, blank)
    assert flipped < oracle - 4.0, (flipped, oracle)
