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
    """OpenCV camera-to-world [..., 4, 4] for cameras at `eye` [..., 3] looking at `target`.

    The world is Z-up, so the image's "up" (-y) points along +Z where possible.
    """
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(z, up.expand_as(z), dim=-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.cross(z, x, dim=-1)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = x
    c2w[..., :3, 1] = y
    c2w[..., :3, 2] = z
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def intrinsics_from_fov(fov_deg: float, H: int, W: int, dtype=torch.float32) -> Tensor:
    """Pinhole K [3, 3] with a horizontal field of view and the principal point at the centre."""
    f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=dtype)
