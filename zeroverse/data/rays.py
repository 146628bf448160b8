"""Plücker ray embedding of posed views (pure torch).

Conventions (zeroverse/scene/conventions.py): OpenCV cameras (x right, y down, z forward), `c2w`
camera-to-world 4x4, `K` 3x3 intrinsics in pixels, pixel centres at +0.5: pixel (row i, column j)
is the point u = j + 0.5, v = i + 0.5 of the image plane.

zeroverse/lrm/camera_rays.py re-exports these: the model and the dataset share one implementation.

Example:
    >>> c2w = torch.eye(4)[None]
    >>> K = torch.tensor([[[32.0, 0.0, 16.0], [0.0, 32.0, 16.0], [0.0, 0.0, 1.0]]])
    >>> plucker_rays(c2w, K, 32, 32).shape
    torch.Size([1, 6, 32, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_rays(
    c2w: Tensor,  # [..., 4, 4]
    K: Tensor,  # [..., 3, 3]
    H: int,
    W: int,
) -> tuple[Tensor, Tensor]:
    """World-space (origin [..., H, W, 3], unit direction [..., H, W, 3]) through every pixel centre."""
    if c2w.shape[-2:] != (4, 4) or K.shape[-2:] != (3, 3):
        raise ValueError(f"plucker_rays takes c2w [..., 4, 4] and K [..., 3, 3], got {tuple(c2w.shape)} and {tuple(K.shape)}")
    if c2w.shape[:-2] != K.shape[:-2]:
        raise ValueError(f"c2w {tuple(c2w.shape)} and K {tuple(K.shape)} need the same leading dimensions")
    dtype = torch.promote_types(c2w.dtype, torch.float32)
    c2w, K = c2w.to(dtype), K.to(dtype)
    u = torch.arange(W, device=c2w.device, dtype=dtype) + 0.5
    v = torch.arange(H, device=c2w.device, dtype=dtype) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1)  # [H, W, 3] homogeneous pixel centres
    # World direction R K^-1 [u, v, 1]: one 3x3 per camera, then a matmul over all pixels.
    rot = c2w[..., :3, :3] @ torch.linalg.inv(K)  # [..., 3, 3]
    world = pix @ rot[..., None, :, :].transpose(-1, -2)  # [..., H, W, 3]
    d = world / world.norm(dim=-1, keepdim=True)
    o = c2w[..., :3, 3][..., None, None, :].expand_as(d)
    return o, d


def plucker_rays(
    c2w: Tensor,  # [..., 4, 4]
    K: Tensor,  # [..., 3, 3]
    H: int,
    W: int,
) -> Tensor:  # [..., 6, H, W]
    """Per-pixel Plücker coordinates (d, o x d), world space: [..., 6, H, W].

    Channels 0-2: unit ray direction d through the pixel centre; 3-5: moment o x d, with o the
    camera centre (the moment is the same for any point on the ray). Same dtype as c2w (at least
    float32), same device.
    """
    o, d = pixel_rays(c2w, K, H, W)
    m = torch.linalg.cross(o, d, dim=-1)
    return torch.cat([d, m], dim=-1).movedim(-1, -3)
