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


def _check_cameras(c2w: Tensor, K: Tensor) -> None:
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be [..., 4, 4], got {tuple(c2w.shape)}")
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be [..., 3, 3], got {tuple(K.shape)}")
    if c2w.shape[:-2] != K.shape[:-2]:
        raise ValueError(
            f"c2w {tuple(c2w.shape)} and K {tuple(K.shape)} must share their leading dims"
        )


def pixel_centres(H: int, W: int, device=None, dtype=torch.float32) -> Tensor:
    """Homogeneous pixel centres [H, W, 3] = (j + 0.5, i + 0.5, 1)."""
    v = torch.arange(H, device=device, dtype=dtype) + 0.5
    u = torch.arange(W, device=device, dtype=dtype) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv, torch.ones_like(uu)], dim=-1)


def ray_origins_directions(
    c2w: Tensor,  # [..., 4, 4]
    K: Tensor,  # [..., 3, 3]
    H: int,
    W: int,
) -> tuple[Tensor, Tensor]:
    """World-space ray origin and unit direction through every pixel centre.

    Returns (o [..., H, W, 3], d [..., H, W, 3]); |d| = 1, o is the camera centre.
    """
    _check_cameras(c2w, K)
    pix = pixel_centres(H, W, device=c2w.device, dtype=c2w.dtype)  # [H, W, 3]
    K_inv = torch.linalg.inv(K)  # general K (skew allowed); [..., 3, 3]
    rot = c2w[..., :3, :3] @ K_inv  # camera pixel -> world direction, [..., 3, 3]
    d = torch.einsum("...ij,hwj->...hwi", rot, pix)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[..., None, None, :3, 3].expand(d.shape)
    return o, d


def plucker_rays(
    c2w: Tensor,  # [..., 4, 4]
    K: Tensor,  # [..., 3, 3]
    H: int,
    W: int,
) -> Tensor:
    """Plücker coordinates (d, o x d) per pixel centre, world space: [..., 6, H, W].

    d is the unit ray direction and o x d its moment, which is the same for every point o on the
    ray, so the embedding does not depend on where along the ray the origin sits.
    """
    o, d = ray_origins_directions(c2w, K, H, W)
    m = torch.cross(o, d, dim=-1)
    return torch.cat([d, m], dim=-1).movedim(-1, -3)


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
