"""3D Gaussian rasterization behind one function: gsplat on CUDA, a pure-PyTorch twin elsewhere.

`rasterize_gaussians` renders B scenes of N Gaussians each into C cameras per scene. The
"gsplat" backend wraps `gsplat.rasterization(..., packed=False, render_mode="RGB+ED")`
(gsplat 1.5.3, classic mode); the "torch" backend reimplements the same maths in plain PyTorch
(8x8-pixel tiles against every Gaussian whose alpha >= 1/255 box touches them, autograd for the
gradients) so CPU tests can run and so the CUDA path has a reference to be checked against
(bench/rasterizer_check.py; on an H200 the two agree to ~2e-6 on most scenes, with isolated
pixels up to ~2e-3 where an alpha sits on the 1/255 cut-off, and gradients to < 1e-3 relative):

1. Covariance Σ = R S Sᵀ Rᵀ from a (normalised) wxyz quaternion and linear scales.
2. EWA projection: Σ' = J W Σ Wᵀ Jᵀ with W the world-to-camera rotation and J the Jacobian of
   the pinhole projection at the camera-space mean. Like gsplat, the mean used in J is clamped
   to 1.3x the field of view so Gaussians far outside the image do not blow up J.
3. Low-pass dilation Σ' += 0.3 I (gsplat's eps2d: every splat covers at least ~a pixel).
4. Gaussians whose camera-space depth z < 0.01 (near plane) are culled.
5. Per pixel centre (j + 0.5, i + 0.5): alpha = min(0.999, o · exp(-½ dᵀ Σ'⁻¹ d)), dropped below
   1/255; front-to-back compositing in order of z, stopping (exclusively) once the
   transmittance would fall to 1e-4. gsplat clamps alpha at 0.999 (the original 3DGS code used
   0.99); we follow gsplat because this twin exists to match it.
6. rgb = Σ wᵢ cᵢ + T·background; alpha = Σ wᵢ; depth = Σ wᵢ zᵢ / max(alpha, 1e-10) (expected
   z-depth, "ED"; the background contributes no depth).

Example:
    >>> out = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks,
    ...                           width=64, height=64, background=torch.ones(3))
    >>> out.rgb.shape  # [B, C, 64, 64, 3]
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3  # gsplat's low-pass filter added to the 2D covariance, in px²
ALPHA_MAX = 0.999  # gsplat's clamp (3DGS used 0.99)
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4  # compositing stops before transmittance would reach this
# The torch backend composites TORCH_TILE² pixels at a time against the Gaussians whose
# alpha >= 1/255 box touches the tile; above TORCH_CHUNK_ELEMENTS x 4 dense elements it
# recomputes tiles in the backward pass instead of keeping them.
TORCH_TILE = 8
TORCH_CHUNK_ELEMENTS = 1 << 23
TORCH_MEMORY_SHARE = 0.6  # of MemAvailable the torch backend may keep for backward (_MemoryGuard)

Backend = Literal["auto", "torch", "gsplat"]


@dataclass
class RenderOutput:
    rgb: Tensor  # [B, C, H, W, 3]
    alpha: Tensor  # [B, C, H, W, 1]
    depth: Tensor | None  # [B, C, H, W, 1] expected camera z-depth (0 where nothing was hit); None if not asked


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def rasterize_gaussians(
    means: Tensor,  # [B, N, 3] world space
    quats: Tensor,  # [B, N, 4] wxyz, need not be normalised
    scales: Tensor,  # [B, N, 3] linear, positive
    opacities: Tensor,  # [B, N] in [0, 1]
    colors: Tensor,  # [B, N, 3]
    viewmats: Tensor,  # [B, C, 4, 4] world-to-camera (OpenCV)
    Ks: Tensor,  # [B, C, 3, 3] pixels, pixel centres at +0.5
    width: int,
    height: int,
    background: Tensor | None = None,  # [3] (or broadcastable to [B, C, 3]); None = black
    backend: Backend = "auto",
    with_depth: bool = True,  # False: no depth channel (gsplat renders RGB only; depth None)
) -> RenderOutput:
    """Render B scenes of N Gaussians into C cameras each; see the module docstring.

    backend: "gsplat" (CUDA kernels), "torch" (dense reference, small scenes only) or "auto"
    (gsplat when it is importable and the tensors are on CUDA, else torch).
    Returns RenderOutput(rgb [B,C,H,W,3], alpha [B,C,H,W,1], depth [B,C,H,W,1]).
    """
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    if backend == "auto":
        backend = "gsplat" if (means.is_cuda and gsplat_available()) else "torch"
    if backend == "gsplat":
        if not gsplat_available():
            raise ImportError(
                "backend='gsplat' needs gsplat (pip install gsplat==1.5.3, CUDA only); "
                "use backend='torch' or 'auto' on machines without it"
            )
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, with_depth
        )
    if backend != "torch":
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    out = _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, background
    )
    return out if with_depth else RenderOutput(rgb=out.rgb, alpha=out.alpha, depth=None)


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height) -> None:
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ValueError(f"means must be [B, N, 3], got {tuple(means.shape)}")
    B, N, _ = means.shape
    expect = {
        "quats": (quats, (B, N, 4)),
        "scales": (scales, (B, N, 3)),
        "opacities": (opacities, (B, N)),
        "colors": (colors, (B, N, 3)),
    }
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} (B, N from means), got {tuple(t.shape)}")
    if viewmats.dim() != 4 or viewmats.shape[0] != B or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must be [B={B}, C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[1]
    if tuple(Ks.shape) != (B, C, 3, 3):
        raise ValueError(f"Ks must be [{B}, {C}, 3, 3], got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")


def _background(background: Tensor | None, B: int, C: int, ref: Tensor) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device)
    return bg.expand(B, C, 3)


# --------------------------------------------------------------------------------------------
# gsplat (CUDA)
# --------------------------------------------------------------------------------------------


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, with_depth=True
) -> RenderOutput:
    from gsplat import rasterization

    B, C = viewmats.shape[:2]
    f32 = [t.float().contiguous() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
    bg = _background(background, B, C, f32[0])
    # packed=False: intermediate tensors are [B, C, N, ...], faster when batching scenes.
    render, alphas, _ = rasterization(
        *f32,
        width=int(width),
        height=int(height),
        near_plane=NEAR_PLANE,
        far_plane=FAR_PLANE,
        eps2d=EPS2D,
        packed=False,
        backgrounds=None if bg is None else bg.contiguous(),
        render_mode="RGB+ED" if with_depth else "RGB",
        rasterize_mode="classic",
    )
    return RenderOutput(rgb=render[..., :3], alpha=alphas, depth=render[..., 3:4] if with_depth else None)


# --------------------------------------------------------------------------------------------
# Pure PyTorch reference
# --------------------------------------------------------------------------------------------


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:  # [..., 4], [..., 3] -> [..., 3, 3]
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R @ diag(s)
    return M @ M.transpose(-1, -2)


@dataclass
class Projected:
    means2d: Tensor  # [B, C, N, 2] pixels
    conics: Tensor  # [B, C, N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [B, C, N] camera z
    cov_diag: Tensor  # [B, C, N, 2] diagonal of the dilated 2D covariance (px²)
    valid: Tensor  # [B, C, N] bool: in front of the near plane, non-degenerate


def project_gaussians(
    means: Tensor,  # [B, N, 3]
    covars: Tensor,  # [B, N, 3, 3]
    viewmats: Tensor,  # [B, C, 4, 4]
    Ks: Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> Projected:
    """EWA splatting of 3D Gaussians to 2D, as gsplat's `persp_proj` (pinhole)."""
    Rw = viewmats[..., :3, :3]  # [B, C, 3, 3]
    tw = viewmats[..., :3, 3]  # [B, C, 3]
    mean_c = torch.einsum("bcij,bnj->bcni", Rw, means) + tw[:, :, None, :]
    cov_c = Rw[:, :, None] @ covars[:, None] @ Rw.transpose(-1, -2)[:, :, None]  # [B,C,N,3,3]
    x, y, z = mean_c.unbind(-1)
    valid = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians get a harmless depth so nothing below divides by ~0 (that would put NaNs
    # into the backward pass even though their contribution is masked out).
    zs = torch.where(valid, z, torch.ones_like(z))

    fx = Ks[..., 0, 0, None]  # [B, C, 1]
    fy = Ks[..., 1, 1, None]
    cx = Ks[..., 0, 2, None]
    cy = Ks[..., 1, 2, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / zs))
    ty = zs * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [
            torch.stack([fx / zs, zero, -fx * tx / zs**2], dim=-1),
            torch.stack([zero, fy / zs, -fy * ty / zs**2], dim=-1),
        ],
        dim=-2,
    )  # [B, C, N, 2, 3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    return Projected(means2d=means2d, conics=conics, depths=z,
                     cov_diag=torch.stack([a, c], dim=-1), valid=valid)


def available_memory_bytes() -> int | None:
    """MemAvailable of this machine (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _MemoryGuard:
    """Counts what the pure-PyTorch rasterizer keeps for the backward pass, tile by tile, and
    refuses (MemoryError naming the sizes and the fix) before it passes TORCH_MEMORY_SHARE of
    the machine's available memory: a too-large CPU batch used to be killed by the OOM killer
    (a 4-view 256² GS-LRM sample is 262k Gaussians against every touched tile)."""

    def __init__(self, B, C, N, H, W, itemsize: int, needs_grad: bool, ckpt: bool):
        self.sizes = (B, C, N, H, W)
        self.itemsize, self.needs_grad, self.ckpt = itemsize, needs_grad, ckpt
        available = available_memory_bytes()
        self.budget = None if available is None else TORCH_MEMORY_SHARE * available
        self.kept = 0.0

    def add_tile(self, k: int) -> None:
        B, C, N, H, W = self.sizes
        if not self.needs_grad or self.budget is None:
            return
        # Checkpointed: the tile's gathered inputs (means2d 2, conics 3, opacity 1, feats 5);
        # otherwise also ~8 [B, C, tile pixels, k] intermediates of the compositing.
        per_hit = 11 if self.ckpt else 11 + 8 * TORCH_TILE * TORCH_TILE
        self.kept += B * C * k * per_hit * self.itemsize
        if self.kept > self.budget:
            raise MemoryError(
                f"the pure-PyTorch rasterizer would keep over {self.kept / 1e9:.1f} GB for the backward pass "
                f"({B} scenes x {N} Gaussians into {C} views of {W}x{H}), more than {TORCH_MEMORY_SHARE:.0%} of "
                f"this machine's available memory ({self.budget / TORCH_MEMORY_SHARE / 1e9:.1f} GB). Lower the "
                "image size (train-lrm --image-size, --low-res) or the batch size, or train on a GPU with gsplat."
            )


def _composite_chunk(
    pix: Tensor,  # [P, 2] pixel centres (u, v)
    means2d: Tensor,  # [B, C, N, 2] sorted front to back
    conics: Tensor,  # [B, C, N, 3]
    opac: Tensor,  # [B, C, N] (0 for culled Gaussians)
    feats: Tensor,  # [B, C, N, F] features to composite (rgb, z, 1 -> accumulated alpha)
) -> Tensor:  # [B, C, P, F]
    dx = pix[:, 0, None] - means2d[..., None, :, 0]  # [B, C, P, N]
    dy = pix[:, 1, None] - means2d[..., None, :, 1]
    A, Bc, Cc = (t[..., None, :] for t in conics.unbind(-1))
    # sigma = ½ (A dx² + C dy²) + B dx dy, in as few full-size passes as possible.
    sigma = dx * (0.5 * A * dx + Bc * dy) + 0.5 * Cc * dy * dy
    alpha = torch.clamp_max(opac[..., None, :] * torch.exp(-sigma), ALPHA_MAX)
    with torch.no_grad():
        keep = (sigma >= 0) & (alpha >= ALPHA_MIN)
        # gsplat stops before the Gaussian that would take transmittance to <= T_MIN; the
        # inclusive product only decreases, so "still alive" is a prefix of the sorted list.
        keep &= torch.cumprod(1 - alpha * keep, dim=-1) > T_MIN
    alpha = alpha * keep
    trans = torch.cumprod(1 - alpha, dim=-1)
    trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)  # exclusive
    return (alpha * trans) @ feats


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, background
) -> RenderOutput:
    B, N, _ = means.shape
    C = viewmats.shape[1]
    H, W = int(height), int(width)
    proj = project_gaussians(means, covariance_3d(quats, scales), viewmats, Ks, W, H)
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    opac = torch.where(proj.valid, opacities[:, None, :].expand(B, C, N), zero)

    # Front-to-back order per image; culled Gaussians go last and carry zero opacity.
    key = torch.where(proj.valid, proj.depths, torch.full_like(proj.depths, float("inf")))
    order = torch.argsort(key.detach(), dim=-1)  # [B, C, N]

    def take(t: Tensor, idx: Tensor) -> Tensor:  # gather [B, C, N, k] along N
        return torch.gather(t, 2, idx[..., None].expand(-1, -1, -1, t.shape[-1]))

    means2d = take(proj.means2d, order)
    conics = take(proj.conics, order)
    opac = take(opac[..., None], order)
    # Composited together: colour, z (expected depth) and 1 (accumulated alpha).
    feats = torch.cat([colors[:, None].expand(B, C, N, 3), proj.depths[..., None],
                       torch.ones_like(proj.depths[..., None])], -1)
    feats = take(feats, order)
    with torch.no_grad():
        # Axis-aligned half-extent of the ellipse where alpha >= 1/255 (the box gsplat's tiles
        # use): a pixel centre outside it gets alpha < 1/255 and is skipped anyway, so culling
        # with it changes nothing but the cost.
        level = torch.log(opac.clamp_min(1e-30) / ALPHA_MIN).clamp_min(0)  # [B, C, N, 1]
        ext = torch.sqrt(2 * level * take(proj.cov_diag, order)) * (1 + 1e-4) + 1e-4
        lo, hi = means2d - ext, means2d + ext  # [B, C, N, 2]
        visible = opac[..., 0] > 0

    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, colors)
    )
    # Recompute tiles in the backward pass only for big scenes: memory stays bounded by one
    # tile, small scenes pay no recomputation.
    use_ckpt = needs_grad and B * C * H * W * N > 4 * TORCH_CHUNK_ELEMENTS
    dt, dev = means.dtype, means.device
    memory = _MemoryGuard(B, C, N, H, W, means.element_size(), needs_grad, use_ckpt)
    rows = []
    for y0 in range(0, H, TORCH_TILE):
        y1 = min(y0 + TORCH_TILE, H)
        tiles = []
        for x0 in range(0, W, TORCH_TILE):
            x1 = min(x0 + TORCH_TILE, W)
            with torch.no_grad():
                hit = (
                    visible
                    & (hi[..., 0] >= x0 + 0.5) & (lo[..., 0] <= x1 - 0.5)
                    & (hi[..., 1] >= y0 + 0.5) & (lo[..., 1] <= y1 - 0.5)
                )  # [B, C, N]
                k = int(hit.sum(-1).max())
            memory.add_tile(k)
            if k == 0:
                tiles.append(torch.zeros(B, C, y1 - y0, x1 - x0, 5, dtype=dt, device=dev))
                continue
            # Stable sort keeps the hits first and in depth order; padding entries (other
            # images' hits) get zero opacity.
            idx = torch.argsort((~hit).to(torch.int8), dim=-1, stable=True)[..., :k]
            o_t = torch.where(take(hit[..., None], idx), take(opac, idx), zero)[..., 0]
            vv, uu = torch.meshgrid(
                torch.arange(y0, y1, device=dev, dtype=dt) + 0.5,
                torch.arange(x0, x1, device=dev, dtype=dt) + 0.5,
                indexing="ij",
            )
            pix = torch.stack([uu, vv], dim=-1).reshape(-1, 2)  # (u, v)
            args = (pix, take(means2d, idx), take(conics, idx), o_t, take(feats, idx))
            if use_ckpt:
                o = checkpoint(_composite_chunk, *args, use_reentrant=False)
            else:
                o = _composite_chunk(*args)
            tiles.append(o.reshape(B, C, y1 - y0, x1 - x0, 5))
        rows.append(torch.cat(tiles, dim=3))
    img = torch.cat(rows, dim=2)  # [B, C, H, W, 5]
    acc = img[..., 4:5]
    rgb = img[..., :3]
    bg = _background(background, B, C, means)
    if bg is not None:
        rgb = rgb + (1 - acc) * bg[:, :, None, None, :]
    depth = img[..., 3:4] / acc.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, alpha=acc, depth=depth)
