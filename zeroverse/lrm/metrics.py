"""Evaluation metrics per image: PSNR, SSIM and (only with user-given VGG weights) LPIPS.

Images are [..., 3, H, W] in [0, 1]; every metric returns one value per image, shape [...].
LPIPS needs pretrained weights that cannot be downloaded here: without them `lpips` returns
None and callers report that it was skipped, never a number from random weights.

Example:
    >>> psnr(pred, target).mean(), ssim(pred, target).mean()
    >>> lpips(pred, target, None)  # -> None: skipped
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from . import losses


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor, max_val: float = 1.0) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float().clamp(0, 1) - target.float()).square().mean(dim=(-3, -2, -1))
    return 10 * torch.log10(max_val**2 / err.clamp_min(1e-10))


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> Tensor:
    return losses.ssim(pred.float().clamp(0, 1), target.float(), reduction="none")


@torch.no_grad()
def lpips(
    pred: Tensor,
    target: Tensor,
    weights: "str | Path | losses.PerceptualLoss | None",
) -> Tensor | None:
    """LPIPS-style distance per image, or None when no weights are given.

    `weights` is a path (the VGG16 state dict, see losses.PerceptualLoss; building it costs a
    load, so pass a built PerceptualLoss when evaluating many batches) or a PerceptualLoss.
    """
    if weights is None:
        return None
    model = weights if isinstance(weights, losses.PerceptualLoss) else losses.PerceptualLoss(weights)
    model = model.to(pred.device)
    return model(pred.float().clamp(0, 1), target.float(), reduction="none")
