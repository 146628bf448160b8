"""GS-LRM and its training core (torch; gsplat on CUDA when installed).

    camera_rays  Plücker rays, ray origins/directions, look_at, world_to_camera
    rasterizer   rasterize_gaussians(): gsplat (CUDA) or a pure-PyTorch twin -> RenderOutput
    gslrm        GSLRMConfig, PRESETS, GSLRM, Gaussians, estimate_flops (no I/O)
    losses       mse, ssim, PerceptualLoss (VGG16 weights from a user-given path only)
    metrics      psnr, ssim, lpips (None without weights)
    train        TrainConfig, train() -> TrainResult
    checkpoint   atomic save, weights_only load, load_model
    ply          export_ply / read_ply (standard 3DGS layout)

`train` is not re-exported here so that `zeroverse.lrm.train` stays the module.
"""

from .camera_rays import plucker_rays, ray_origins_directions, world_to_camera
from .gslrm import GSLRM, PRESETS, Gaussians, GSLRMConfig, estimate_flops
from .rasterizer import RenderOutput, rasterize_gaussians

__all__ = [
    "GSLRM",
    "GSLRMConfig",
    "Gaussians",
    "PRESETS",
    "RenderOutput",
    "estimate_flops",
    "plucker_rays",
    "rasterize_gaussians",
    "ray_origins_directions",
    "world_to_camera",
]
