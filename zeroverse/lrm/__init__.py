"""GS-LRM, G3R and their training core (torch; gsplat on CUDA when installed).

    camera_rays  Plücker rays, ray origins/directions, look_at, world_to_camera
    rasterizer   rasterize_gaussians(): gsplat (CUDA) or a pure-PyTorch twin -> RenderOutput
    gslrm        GSLRMConfig, PRESETS, GSLRM, Gaussians, estimate_flops (no I/O)
    g3r          G3RConfig, G3R, refine (the learned optimizer; no I/O)
    losses       mse, ssim, PerceptualLoss (VGG16 weights from a user-given path only)
    metrics      psnr, ssim, lpips (None without weights)
    config       RunConfig, TrainConfig, G3RTrainConfig (torch-free: the CLI's flags)
    run          what both trainers share: run folder, checkpoints, schedule, batches, logging
    train        train() -> TrainResult (GS-LRM);  g3r_train: train_g3r(), refine_shape()
    evaluate     score an eval-rig views root (metrics.json/md, grid.png); eval_report formats
    checkpoint   atomic save, weights_only load, load_model
    ply          export_ply / read_ply (standard 3DGS layout)

The names below load on first use, so `import zeroverse.lrm.config` (the CLI) needs no torch.
`train` is not re-exported here so that `zeroverse.lrm.train` stays the module.
"""

from importlib import import_module

_WHERE = {
    "plucker_rays": "camera_rays",
    "ray_origins_directions": "camera_rays",
    "world_to_camera": "camera_rays",
    "GSLRM": "gslrm",
    "PRESETS": "gslrm",
    "Gaussians": "gslrm",
    "GSLRMConfig": "gslrm",
    "estimate_flops": "gslrm",
    "RenderOutput": "rasterizer",
    "rasterize_gaussians": "rasterizer",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)


__all__ = sorted(_WHERE)
