"""Per-pixel camera rays and Plücker coordinates (pure torch).

Conventions (docs/architecture.md): OpenCV cameras (x right, y down, z forward), `c2w` is the
4x4 camera-to-world matrix, `K` the 3x3 intrinsics in pixels, and pixel (i, j) (row i, column j)
has its centre at u = j + 0.5, v = i + 0.5.

Example:
    >>> c2w = torch.eye(4)[None]; K = torch.tensor([[[32., 0, 16], [0, 32., 16], [0, 0, 1]]])
    >>> plucker_rays(c2w, K, 32, 32).shape
    torch.Size([1, 6, 32, 32])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zeroverse.data.rays import pixel_rays, plucker_rays  # noqa: F401  (re-exported)


# One implementation of pixel rays serves the dataset and the model (data -> model: the model
# imports the dataset's, never the other way round).
ray_origins_directions = pixel_rays


def world_to_camera(c2w: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """Rigid inverse of camera-to-world matrices (the `viewmats` a rasterizer takes)."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world [..., 4, 4] for cameras at `eye` [..., 3] looking at `target`:
    zeroverse.scene.cameras.look_at (the one implementation, world Z-up) over a batch."""
    import numpy as np

    from zeroverse.scene.cameras import look_at as look_at_np

    eye, target = torch.broadcast_tensors(eye, target)
    eyes = eye.detach().cpu().double().reshape(-1, 3).numpy()
    targets = target.detach().cpu().double().reshape(-1, 3).numpy()
    up_np = None if up is None else up.detach().cpu().double().numpy()
    c2w = np.stack([look_at_np(e, t, up_np) for e, t in zip(eyes, targets)])
    return torch.from_numpy(c2w).to(dtype=eye.dtype, device=eye.device).reshape(eye.shape[:-1] + (4, 4))


def intrinsics_from_fov(fov_deg: float, H: int, W: int, dtype=torch.float32) -> Tensor:
    """Pinhole K [3, 3] with a horizontal field of view and the principal point at the centre."""
    f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=dtype)
