"""Image losses: MSE, SSIM and an LPIPS-style VGG16 perceptual loss (plain torch).

Images are [..., 3, H, W] floats in [0, 1].

The perceptual loss needs pretrained VGG16 weights, which cannot be downloaded on the machines
this project trains on: `PerceptualLoss` loads them from a path the user gives and refuses to
build without one. Random VGG weights would give a loss that looks fine and means nothing, so
they are never used. Accepted files (`torch.load(..., weights_only=True)`):
- torchvision's VGG16 state dict (`vgg16-397923af.pth`: keys `features.<i>.weight|bias`),
- the `lpips` package's full state dict (`net.slice<k>.<i>.weight|bias` and the learned
  per-channel weights `lin<k>.model.1.weight`), or a dict merging the two.
Without the `lin` weights every channel counts equally (LPIPS's "baseline" variant).

Example:
    >>> loss = mse(pred, target) + 0.2 * (1 - ssim(pred, target))
    >>> perceptual = PerceptualLoss("/data/weights/vgg16-397923af.pth")
    >>> loss = loss + 0.5 * perceptual(pred, target)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred, target)


def ray_distance_error(
    means: Tensor,  # [B, V*H*W, 3] one Gaussian per input pixel, row-major per view
    c2w: Tensor,  # [B, V, 4, 4] OpenCV
    K: Tensor,  # [B, V, 3, 3]
    depth: Tensor,  # [B, V, 1, H, W] planar camera z, 0 where nothing was hit
    alpha: Tensor,  # [B, V, 1, H, W] coverage in [0, 1]
) -> Tensor:
    """Mean |t_pred - t_true| over covered input pixels (alpha > 0.5 and depth > 0), where t is
    the distance from the camera along the pixel's unit ray: t_true = depth / cos(angle to the
    optical axis), t_pred the Gaussian centre's projection on the ray. 0 if nothing is covered."""
    from zeroverse.data.rays import pixel_rays  # data -> model direction, as camera_rays does

    B, V, _, H, W = depth.shape
    o, d = pixel_rays(c2w, K, H, W)  # [B, V, H, W, 3]
    t_pred = ((means.view(B, V, H, W, 3) - o) * d).sum(-1)
    cos = (d * c2w[:, :, None, None, :3, 2]).sum(-1)  # camera z axis
    t_true = depth[:, :, 0] / cos.clamp_min(1e-6)
    covered = ((alpha[:, :, 0] > 0.5) & (depth[:, :, 0] > 0)).to(t_pred.dtype)
    return ((t_pred - t_true).abs() * covered).sum() / covered.sum().clamp_min(1.0)


def geometry_terms(gaussians, render, inputs: dict, targets: dict, depth: bool, alpha: bool) -> dict[str, Tensor]:
    """The trainer's optional geometry supervision (see TrainConfig.depth_weight/alpha_weight):
    'depth' needs the inputs' depths and alphas, 'alpha' the targets' alphas; a term whose data
    the batch lacks is left out."""
    terms = {}
    if depth and "depths" in inputs and "alphas" in inputs:
        terms["depth"] = ray_distance_error(gaussians.means, inputs["c2w"], inputs["K"],
                                            inputs["depths"], inputs["alphas"])
    if alpha and "alphas" in targets:
        terms["alpha"] = F.mse_loss(render.alpha.permute(0, 1, 4, 2, 3), targets["alphas"])
    return terms


def _gaussian_window(size: int, sigma: float, channels: int, ref: Tensor) -> Tensor:
    x = torch.arange(size, dtype=ref.dtype, device=ref.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    pred: Tensor,  # [..., C, H, W] in [0, 1]
    target: Tensor,  # [..., C, H, W]
    window_size: int = 11,
    sigma: float = 1.5,
    reduction: str = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004): Gaussian window 11, σ 1.5, data range 1.

    Only windows that fit inside the image are used (no padding). reduction="none" returns one
    value per image ([...]); "mean" their mean. Differentiable.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    *lead, C, H, W = pred.shape
    if H < window_size or W < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}px, got {H}x{W}")
    x = pred.reshape(-1, C, H, W)
    y = target.reshape(-1, C, H, W).to(x.dtype)
    win = _gaussian_window(window_size, sigma, C, x)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, win, groups=C)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    per_image = s.mean(dim=(-3, -2, -1)).reshape(lead)
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------------
# VGG16 perceptual loss
# --------------------------------------------------------------------------------------------

# torchvision's vgg16().features: conv indices and widths; the loss taps the ReLU after
# conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3 (torchvision indices 3, 8, 15, 22, 29).
VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256),
                (12, 256, 256), (14, 256, 256), (17, 256, 512), (19, 512, 512),
                (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
_POOL_BEFORE = {5, 10, 17, 24}
_TAP_AFTER = {2, 7, 14, 21, 28}
_TAP_CHANNELS = [64, 128, 256, 512, 512]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_vgg_state(path: str | Path) -> tuple[dict[int, dict[str, Tensor]], dict[int, Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual-loss weights not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    convs: dict[int, dict[str, Tensor]] = {}
    lins: dict[int, Tensor] = {}
    conv_re = re.compile(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$")
    lin_re = re.compile(r"(?:^|\.)lin(\d)\.model\.1\.weight$")
    for key, value in sd.items():
        if m := conv_re.search(key):
            convs.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif m := lin_re.search(key):
            lins[int(m.group(1))] = value
    missing = [i for i, _, _ in VGG16_CONVS if set(convs.get(i, {})) != {"weight", "bias"}]
    if missing:
        raise ValueError(
            f"{path} is not a VGG16 state dict: no weight/bias for conv layers at torchvision "
            f"indices {missing} (expected keys like 'features.0.weight' from torchvision's "
            "vgg16-397923af.pth, or the lpips package's 'net.slice1.0.weight')"
        )
    return convs, lins


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features; loads weights only from `weights_path`.

    d(x, y) = Σ_layers mean_hw Σ_c w_c (x̂_c - ŷ_c)², x̂ = features normalised over channels,
    w = LPIPS's learned weights when the file has them, else 1. Returns one value per image
    with reduction="none", else the mean. Inputs [..., 3, H, W] in [0, 1].
    """

    def __init__(self, weights_path: str | Path | None):
        super().__init__()
        if weights_path is None or str(weights_path) == "":
            raise ValueError(
                "PerceptualLoss needs pretrained VGG16 weights: pass the path of a torch state "
                "dict (e.g. torchvision's vgg16-397923af.pth). Random weights are never used; "
                "train without the perceptual term (MSE + SSIM) if you have none."
            )
        convs, lins = _read_vgg_state(weights_path)
        self.weights_path = str(weights_path)
        self.convs = nn.ModuleList()
        for idx, cin, cout in VGG16_CONVS:
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            w, b = convs[idx]["weight"], convs[idx]["bias"]
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise ValueError(
                    f"VGG16 conv {idx}: expected weight {tuple(conv.weight.shape)}, "
                    f"got {tuple(w.shape)} in {weights_path}"
                )
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)
            self.convs.append(conv)
        self.has_lin = len(lins) == 5
        lin = [lins[k].reshape(-1) if self.has_lin else torch.ones(c)
               for k, c in enumerate(_TAP_CHANNELS)]
        for k, w in enumerate(lin):
            if w.numel() != _TAP_CHANNELS[k]:
                raise ValueError(f"lin{k} has {w.numel()} weights, expected {_TAP_CHANNELS[k]}")
            self.register_buffer(f"lin{k}", w.float().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # frozen feature extractor, always in eval mode

    def features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        taps = []
        for (idx, _, _), conv in zip(VGG16_CONVS, self.convs):
            if idx in _POOL_BEFORE:
                x = F.max_pool2d(x, 2)
            x = F.relu(conv(x))
            if idx in _TAP_AFTER:
                taps.append(x)
        return taps

    def forward(self, pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        *lead, C, H, W = pred.shape
        x = pred.reshape(-1, C, H, W)
        y = target.reshape(-1, C, H, W).to(x.dtype)
        total = 0
        for k, f in enumerate(self.features(torch.cat([x, y]))):
            a, b = f.float().chunk(2)
            a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
            d = ((a - b).square() * getattr(self, f"lin{k}").view(1, -1, 1, 1)).sum(1)
            total = total + d.mean(dim=(-2, -1))
        per_image = total.reshape(lead)
        if reduction == "none":
            return per_image
        if reduction == "mean":
            return per_image.mean()
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
