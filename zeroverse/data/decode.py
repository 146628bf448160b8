"""Decoding view-shard cells and resizing views without breaking their cameras (numpy + torch).

Cell encodings (docs/architecture.md, zeroverse/scene/conventions.py):
    rgba      PNG, RGBA8, straight (not premultiplied) alpha, sRGB
    depth     float32 little-endian [H, W], planar z in world units, 0 where empty
    normal    float16 little-endian [H, W, 3], world space, 0 where empty
    position  float32 little-endian [H, W, 3], world xyz, 0 where empty (optional column)

Resizing keeps two promises:
- cameras stay exact: with pixel centres at +0.5, continuous pixel coordinates scale linearly
  (u' = u * W'/W), so fx, fy, cx, cy all scale by the same factor per axis, no half-pixel term;
- nothing blends across an edge: colour is resampled premultiplied (antialiased), so the
  background never bleeds into the object's rim; depth, normals and positions are averaged only
  over footprints that lie entirely on one smooth surface and are point-sampled elsewhere, so a
  silhouette never produces depths halfway to the empty background.

Example:
    >>> rgba = decode_rgba(png_bytes)                  # [H, W, 4] uint8
    >>> depth = decode_depth(depth_bytes, H, W)         # [H, W] float32, 0 = empty
    >>> rgb, alpha = resize_rgba(torch.rand(2, 4, 64, 64), (32, 32))
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

# An output pixel whose filter support spans depths (max - min) above this fraction of the
# nearest one straddles a discontinuity (one surface in front of another): filtering would
# invent a floating surface, so it takes the input pixel under its centre instead.
SMOOTH_DEPTH_TOLERANCE = 0.05

# Cycles writes 1e10 on the background; the shards store 0, but a reader that sees a huge or
# non-finite depth treats it as empty too (the conventions allow +inf as documented "empty").
_EMPTY_DEPTH_ABOVE = 1e9


def decode_rgba(data: bytes) -> np.ndarray:  # -> [H, W, 4] uint8
    """PNG bytes -> straight-alpha RGBA8 array [H, W, 4]. Raises ValueError on undecodable bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGBA":
                # RGB / L / LA / P PNGs are accepted (alpha 1 where absent); 16-bit is reduced.
                im = im.convert("RGBA")
            return np.array(im, dtype=np.uint8)  # a writable copy (asarray of a PIL image is read-only)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken PNGs
        raise ValueError(f"rgba cell is not a decodable PNG ({type(err).__name__}: {err})") from err


def _raw(data: bytes | None, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if data is None:
        raise ValueError(f"{what} cell is null")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(
            f"{what} cell has {len(data)} bytes, expected {expected} for {np.dtype(dtype).name} {list(shape)}"
        )
    # frombuffer shares the (read-only) Arrow buffer; astype makes a writable native copy.
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)


def decode_depth(data: bytes, height: int, width: int) -> np.ndarray:  # -> [H, W] float32
    """Raw float32 LE planar depth -> [H, W] float32 with 0 wherever the pixel is empty."""
    depth = _raw(data, "<f4", (height, width), "depth")
    depth[~np.isfinite(depth) | (depth <= 0) | (depth > _EMPTY_DEPTH_ABOVE)] = 0.0
    return depth


def decode_normal(data: bytes, height: int, width: int) -> np.ndarray:  # -> [H, W, 3] float32
    """Raw float16 LE world-space normals -> [H, W, 3] float32 (0 where empty)."""
    normal = _raw(data, "<f2", (height, width, 3), "normal")
    normal[~np.isfinite(normal)] = 0.0
    return normal


def decode_position(data: bytes | None, height: int, width: int) -> np.ndarray:  # -> [H, W, 3] float32
    """Raw float32 LE world positions -> [H, W, 3] float32 (0 where empty)."""
    position = _raw(data, "<f4", (height, width, 3), "position")
    position[~np.isfinite(position)] = 0.0
    return position


def intrinsics_matrix(intrinsics: np.ndarray) -> np.ndarray:  # [..., 4] -> [..., 3, 3]
    """(fx, fy, cx, cy) -> pinhole K in float32 (the scene's matrix, at the dataset's precision)."""
    from zeroverse.scene.cameras import intrinsics_matrix as k_matrix

    return k_matrix(intrinsics).astype(np.float32)


def scale_intrinsics(K: Tensor, sx: float, sy: float) -> Tensor:  # [..., 3, 3] -> [..., 3, 3]
    """K of the same camera after resizing the image by (sx, sy) = (W'/W, H'/H).

    Pixel centres sit at +0.5, so the image spans u in [0, W] continuously and resizing maps
    u -> u * sx exactly: fx and cx scale by sx, fy and cy by sy (no -0.5 correction, which
    would be right only for the centre-at-integer convention)."""
    out = K.clone()
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    return out


def resize_rgba(rgba: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Straight-alpha RGBA [V, 4, H, W] in [0, 1] -> (premultiplied rgb [V, 3, h, w], alpha [V, 1, h, w]).

    Resampled premultiplied (colour times alpha), antialiased (a triangle filter widened by the
    scale factor when downsampling, as PIL does), so the colour of empty pixels never leaks into
    the object; composite with `composite`."""
    rgb, alpha = rgba[:, :3], rgba[:, 3:4]
    premult = torch.cat([rgb * alpha, alpha], dim=1)
    if tuple(size) != tuple(rgba.shape[-2:]):
        premult = F.interpolate(premult, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        premult = premult.clamp_(0.0, 1.0)
    alpha = premult[:, 3:4]
    return torch.minimum(premult[:, :3], alpha), alpha


def composite(premult_rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """over-composite [V, 3, H, W] premultiplied colour on a background colour [3] (sRGB space,
    as every LRM codebase does, so a renderer with the same background reproduces it)."""
    return (premult_rgb + background.view(1, 3, 1, 1) * (1.0 - alpha)).clamp_(0.0, 1.0)


def _kernel_windows(n_in: int, n_out: int) -> Tensor:  # -> [n_out, K] int64
    """Input indices each output index's antialiased bilinear kernel reads, as torch computes them
    (aten UpSample.h: support = scale when downsampling else 1, window [trunc(c - support + 0.5),
    trunc(c + support + 0.5)) around c = scale * (i + 0.5)); short windows repeat their last index."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    centres = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum(np.trunc(centres - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc(centres + support + 0.5).astype(np.int64), n_in)
    idx = lo[:, None] + np.arange(int((hi - lo).max()))[None]
    return torch.from_numpy(np.minimum(idx, hi[:, None] - 1))


def resize_geometry(
    depth: Tensor,  # [V, 1, H, W], 0 = empty
    size: tuple[int, int],
    others: dict[str, Tensor] | None = None,  # name -> [V, C, H, W] (normals, positions)
    tolerance: float = SMOOTH_DEPTH_TOLERANCE,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Resizes depth (and per-pixel geometry sharing its mask) to `size` without blending edges.

    An output pixel whose filter support lies wholly on one smooth surface (every input pixel
    non-empty, max - min depth within `tolerance` of the min) gets the filtered value: a box over
    the block for integer reductions (exactly centred on the output pixel, so back-projection
    through the rescaled K is exact for planar patches), otherwise the same antialiased bilinear
    kernel as the colour (centred to within 0.1 input pixel, a property of that kernel, as in
    PIL). Any other output pixel (silhouette, occlusion edge) takes the input pixel under its
    centre ("nearest-exact"): a real sample, never a depth halfway to the empty background or
    between two surfaces. Normals are renormalised after filtering.
    """
    others = dict(others or {})
    size = (int(size[0]), int(size[1]))
    H, W = depth.shape[-2:]
    if size == (H, W):
        return depth, others

    if H % size[0] == 0 and W % size[1] == 0:
        block = (H // size[0], W // size[1])

        def smooth_filter(x: Tensor) -> Tensor:
            return F.avg_pool2d(x, kernel_size=block)

        def support_max(x: Tensor) -> Tensor:  # the box's support is the block itself
            return F.max_pool2d(x, kernel_size=block)
    else:
        rows, cols = _kernel_windows(H, size[0]), _kernel_windows(W, size[1])

        def smooth_filter(x: Tensor) -> Tensor:
            return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

        def support_max(x: Tensor) -> Tensor:  # max over each output pixel's kernel support
            return x[..., cols].amax(-1)[..., rows, :].amax(-2)

    def nearest(x: Tensor) -> Tensor:
        return F.interpolate(x, size=size, mode="nearest-exact")

    # Filtered values are used only where the whole support is non-empty (coverage 1), so they
    # need no masking; an empty pixel in the support makes `low` 0 and fails the test anyway.
    coverage = smooth_filter((depth > 0).to(depth.dtype))
    high = support_max(depth)
    low = -support_max(-depth)
    smooth = (coverage >= 1.0 - 1e-4) & (high - low <= tolerance * low)

    out_depth = torch.where(smooth, smooth_filter(depth), nearest(depth))
    out_others = {}
    for name, value in others.items():
        filtered = smooth_filter(value)
        if name == "normals":
            filtered = filtered / filtered.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out_others[name] = torch.where(smooth, filtered, nearest(value))
    return out_depth, out_others
