"""Per-scene 3DGS baseline: Adam on the Gaussians' parameters, from G3R's initialisation.

The comparison G3R is measured against (bench/g3r.py): the same initial Gaussians (the 14
explicit channels of `g3r.init_from_depth`; the latent is unused), the same parameterisation
(g3r.activate: position, log scale, quaternion, colour logit, opacity logit), the same
rendering and the same supervision loss on the source views (g3r.supervision_loss: MSE +
perceptual or SSIM + flatness), optimised by Adam for N steps. One step = one render +
backward of all the source views (full batch, as one G3R step), unless `views_per_step` picks
a seeded subset (3DGS itself uses one view per step).

Learning rates follow the 3DGS reference (Kerbl et al. 2023): positions 1.6e-4 × scene extent
decaying exponentially to 1.6e-6 × extent over the run, log scales 5e-3, rotations 1e-3,
opacity logits 0.05, colour 2.5e-3 on the SH DC coefficient, i.e. ~2.8e-3 on our colour logit
(d colour = 0.282 d f_dc = 0.25 d logit at 0.5). Scene extent = 1.1 × the largest distance of
a camera from the cameras' centroid, as 3DGS. `lr_scale` multiplies them all. No densification
or pruning: the point count stays fixed, as in G3R.

Example:
    >>> s0 = init_batch_from_depth(images, depths, c2w, K, cfg, torch.Generator().manual_seed(0))
    >>> res = optimize_adam(s0[..., :14], images, c2w, K, AdamConfig(steps=100), g3r_cfg=cfg,
    ...                     generator=torch.Generator().manual_seed(0), background=torch.ones(3))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import g3r, losses
from .g3r import COLOR, EXPLICIT_CHANNELS, OPAC, POS, ROT, SCALE, G3RConfig
from .gslrm import Gaussians
from .rasterizer import Backend


@dataclass(frozen=True)
class AdamConfig:
    steps: int = 1000
    lr_means: float = 1.6e-4  # × scene extent
    lr_means_final: float = 1.6e-6  # × scene extent, reached at the last step
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_colors: float = 2.8e-3
    lr_opacities: float = 0.05
    lr_scale: float = 1.0  # multiplies every learning rate
    views_per_step: int | None = None  # None: all source views every step
    lpips_weight: float = 0.5
    ssim_weight: float = 0.2  # used only without a perceptual loss
    flat_weight: float = 0.1

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {self.lr_scale}")
        if self.views_per_step is not None and self.views_per_step <= 0:
            raise ValueError(f"views_per_step must be positive or None, got {self.views_per_step}")


@dataclass
class AdamResult:
    explicit: Tensor  # [B, N, 14] optimised parameters
    gaussians: Gaussians  # activated, leading dims [B, N]
    losses: list[float] = field(default_factory=list)  # loss at each step (before its update)
    source_mse: list[Tensor] = field(default_factory=list)  # [B] per step (before its update)
    render_passes: int = 0  # render + backward passes


def scene_extent(c2w: Tensor) -> Tensor:  # [B, V, 4, 4] -> [B]
    """3DGS's spatial_lr_scale: 1.1 × the largest camera distance from the cameras' centroid."""
    centres = c2w[..., :3, 3]
    return 1.1 * (centres - centres.mean(dim=1, keepdim=True)).norm(dim=-1).amax(dim=1)


def optimize_adam(
    explicit: Tensor,  # [B, N, 14] initial parameters (g3r state[..., :14])
    images: Tensor,  # [B, V, 3, H, W] source views in [0, 1]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
    cfg: AdamConfig,
    g3r_cfg: G3RConfig,  # for the activations' scale clamps
    generator: torch.Generator,  # draws the views of each step when views_per_step is set
    background: Tensor | None = None,  # [3] or [B, 3]
    backend: Backend = "auto",
    perceptual: "losses.PerceptualLoss | None" = None,
) -> AdamResult:
    """Optimise every scene of the batch independently (its own learning-rate scale) for
    cfg.steps Adam steps; returns the final parameters and per-step losses."""
    if explicit.dim() != 3 or explicit.shape[-1] != EXPLICIT_CHANNELS:
        raise ValueError(f"explicit must be [B, N, {EXPLICIT_CHANNELS}], got {tuple(explicit.shape)}")
    B, V = images.shape[:2]
    H, W = images.shape[-2:]
    # One leaf per parameter group; the extent is per scene, so positions are stored divided
    # by it (Adam's step is scale-free: lr × extent on the raw positions = lr on these).
    extent = scene_extent(c2w.float()).view(B, 1, 1)
    parts = {
        "means": explicit[..., POS] / extent,
        "scales": explicit[..., SCALE],
        "quats": explicit[..., ROT],
        "colors": explicit[..., COLOR],
        "opacities": explicit[..., OPAC],
    }
    leaves = {k: v.detach().clone().float().requires_grad_(True) for k, v in parts.items()}
    s = cfg.lr_scale
    lrs = {"means": cfg.lr_means * s, "scales": cfg.lr_scales * s, "quats": cfg.lr_quats * s,
           "colors": cfg.lr_colors * s, "opacities": cfg.lr_opacities * s}
    opt = torch.optim.Adam([{"params": [leaves[k]], "lr": lrs[k], "name": k} for k in leaves],
                           eps=1e-15)
    decay = math.log(cfg.lr_means_final / cfg.lr_means)
    result = AdamResult(explicit=explicit, gaussians=g3r.activate(explicit, g3r_cfg))

    def assemble() -> Tensor:
        return torch.cat([leaves["means"] * extent, leaves["scales"], leaves["quats"],
                          leaves["colors"], leaves["opacities"]], dim=-1)

    for step in range(cfg.steps):
        frac = step / max(1, cfg.steps - 1)
        for group in opt.param_groups:
            if group["name"] == "means":
                group["lr"] = lrs["means"] * math.exp(decay * frac)  # 3DGS's log-linear decay
        if cfg.views_per_step is not None and cfg.views_per_step < V:
            pick = torch.randperm(V, generator=generator)[: cfg.views_per_step].to(images.device)
        else:
            pick = None
        img = images if pick is None else images[:, pick]
        cams, Ks = (c2w, K) if pick is None else (c2w[:, pick], K[:, pick])
        gauss = g3r.activate(assemble(), g3r_cfg)
        pred = g3r.images_of(g3r.render(gauss, cams, Ks, H, W, background, backend))
        loss, _ = g3r.supervision_loss(pred, img, gauss, perceptual, cfg.lpips_weight,
                                       cfg.ssim_weight, cfg.flat_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.render_passes += 1
        result.losses.append(float(loss.detach()))
        result.source_mse.append((pred.detach() - img).square().mean(dim=(1, 2, 3, 4)))

    with torch.no_grad():
        result.explicit = assemble().detach()
        result.gaussians = g3r.activate(result.explicit, g3r_cfg)
    return result


__all__ = ["AdamConfig", "AdamResult", "optimize_adam", "scene_extent"]
