"""G3R's tensor operations that need no config: gradient normalisation, exact k nearest
neighbours, depth unprojection and seeded point subsampling (voxel grid or farthest points).
g3r.py builds the model and its initialisation on them (and re-exports them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gslrm import Gaussians

DOWNSAMPLERS = ("voxel", "fps")


def gamma(t: int, T: int, gamma_max: float, gamma_min: float) -> float:
    """Step size of update t of T: γ(t) = γ_min + (γ_max - γ_min) · ½ (1 + cos(π t / T)).

    γ(0) = γ_max, strictly decreasing for 0 <= t <= T, γ(T) = γ_min (never used: the last
    update is t = T - 1)."""
    if T <= 0 or not 0 <= t <= T:
        raise ValueError(f"need 0 <= t <= T and T > 0, got t={t}, T={T}")
    return gamma_min + (gamma_max - gamma_min) * 0.5 * (1.0 + math.cos(math.pi * t / T))


def flatness(g: Gaussians) -> Tensor:
    """Mean over Gaussians of the smallest scale (world units): pushes splats to be flat discs
    lying on the surface."""
    return g.scales.min(dim=-1).values.mean()


def grad_rms(grad: Tensor) -> Tensor:  # [B, N, D] -> [B, D]
    """Root mean square over the points, per scene and channel.

    Computed on grad / max|grad| so that squaring cannot underflow: gradients of a mean MSE
    over millions of pixels reach 1e-12 and below, whose squares float32 flushes to zero."""
    peak = grad.abs().amax(dim=-2, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    return (grad / peak).square().mean(dim=-2).sqrt() * peak.squeeze(-2)


def normalize_gradient(grad: Tensor, eps: float = 1e-12) -> Tensor:  # [B, N, D] -> [B, N, D]
    """ĝ = ∇ / RMS over the points, per scene and channel: every channel with a gradient has
    RMS 1, whatever the loss scale, image size or number of points; a channel without one
    stays 0. eps is relative to the channel's largest |∇| (so it does not depend on the loss
    scale either)."""
    peak = grad.abs().amax(dim=-2, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    unit = grad / peak  # in [-1, 1]
    return unit / (unit.square().mean(dim=-2, keepdim=True).sqrt() + eps)


@torch.no_grad()
def knn(points: Tensor, k: int, chunk: int = 4096, margin: int = 4) -> tuple[Tensor, Tensor]:
    """k nearest neighbours (the point itself first, at distance 0), exact.

    points [B, N, 3] -> (distances [B, N, k] ascending, indices [B, N, k] into N).
    Candidates come from the matmul form |a|² + |b|² - 2ab (one GEMM per chunk: torch.cdist's
    exact-difference kernel took ~0.3 s per 4096 x 16384 block on an H200, 97% of a G3R
    iteration); its rounding (~1e-4) can reorder close neighbours, so the k + margin best
    candidates are re-ranked by exact differences. Memory: one [B, chunk, N] block at a time.
    """
    B, N, _ = points.shape
    if not 1 <= k <= N:
        raise ValueError(f"knn needs 1 <= k <= N, got k={k}, N={N}")
    dists, idxs = [], []
    p = points.float()
    sq = (p * p).sum(-1)  # [B, N]
    m = min(N, k + margin)
    for s in range(0, N, chunk):
        q = p[:, s:s + chunk]
        with torch.no_grad():
            d2 = sq[:, s:s + chunk, None] + sq[:, None, :] - 2 * q @ p.transpose(1, 2)
            cand = torch.topk(d2, m, dim=-1, largest=False, sorted=False).indices  # [B, c, m]
        exact = (gather_points(p, cand) - q[:, :, None]).norm(dim=-1)  # [B, c, m]
        v, order = torch.sort(exact, dim=-1)
        dists.append(v[..., :k])
        idxs.append(torch.gather(cand, -1, order[..., :k]))
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def gather_points(x: Tensor, idx: Tensor) -> Tensor:  # [B, N, C], [B, M, k] -> [B, M, k, C]
    B, N, C = x.shape
    offset = (torch.arange(B, device=x.device) * N).view(B, 1, 1)
    return x.reshape(B * N, C)[idx + offset]


def unproject_depth(
    depth: Tensor,  # [V, H, W] planar z, 0 where empty
    c2w: Tensor,  # [V, 4, 4] OpenCV camera-to-world
    K: Tensor,  # [V, 3, 3] pixels, centres at +0.5
) -> Tensor:  # [V, H, W, 3] world xyz (0 where depth is 0)
    """Torch twin of zeroverse.scene.cameras.unproject_depth (perspective), batched over views."""
    V, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5,
                          indexing="ij")
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    cam = torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], dim=-1)
    world = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3].to(depth.dtype), cam)
    world = world + c2w[:, None, None, :3, 3].to(depth.dtype)
    return torch.where(depth[..., None] > 0, world, torch.zeros_like(world))


def _voxel_representatives(points: Tensor, voxel: float, rank: Tensor) -> Tensor:
    """One point per occupied voxel: the one with the lowest `rank` (a seeded permutation)."""
    cell = torch.floor((points - points.min(0).values) / voxel).long()
    dims = cell.max(0).values + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    _, inverse = torch.unique(key, return_inverse=True)
    best = torch.full((int(inverse.max()) + 1,), points.shape[0], dtype=torch.long,
                      device=points.device)
    best = best.scatter_reduce(0, inverse, rank, reduce="amin")
    order = torch.empty_like(rank)
    order[rank] = torch.arange(rank.numel(), device=rank.device)
    return order[best]  # rank -> index


def _voxel_subset(points: Tensor, n: int, generator: torch.Generator, at_most: float) -> Tensor:
    """Indices of one point per voxel, with the voxel size searched so the count lands in
    [n, at_most * n] where possible (cells shrink by √ of the count ratio: a surface's count
    grows as 1 / size²)."""
    M = points.shape[0]
    rank = torch.randperm(M, generator=generator).to(points.device)
    extent = float((points.max(0).values - points.min(0).values).max().clamp_min(1e-6))
    voxel = extent / math.sqrt(n)
    best = None
    for _ in range(24):
        idx = _voxel_representatives(points, voxel, rank)
        count = idx.numel()
        if count >= n and (best is None or count < best.numel()):
            best = idx
        if n <= count <= at_most * n:
            break
        voxel *= min(2.0, max(0.5, math.sqrt(count / (0.5 * (1 + at_most) * n))))
    return best if best is not None else torch.arange(M, device=points.device)


def farthest_point_sample(points: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Indices [n] of n points [M, 3] by farthest-point sampling from a seeded start."""
    M = points.shape[0]
    idx = torch.empty(n, dtype=torch.long, device=points.device)
    dist = torch.full((M,), float("inf"), device=points.device)
    cur = torch.randint(M, (1,), generator=generator).to(points.device)[0]
    for i in range(n):
        idx[i] = cur
        dist = torch.minimum(dist, (points - points[cur]).square().sum(-1))
        cur = torch.argmax(dist)
    return idx


def downsample_points(points: Tensor, n: int, method: str, generator: torch.Generator) -> Tensor:
    """Indices of min(n, M) of the points [M, 3], deterministic given the generator.

    "voxel": one point per cell of an adaptive grid, then a seeded subset of n (even density
    over the surface, whatever the views' overlap). "fps": farthest-point sampling over such a
    grid's representatives (at most 4 n of them, so the O(n M) loop stays cheap).
    """
    M = points.shape[0]
    if M <= n:
        return torch.arange(M, device=points.device)
    if method == "voxel":
        idx = _voxel_subset(points, n, generator, at_most=2.0)
        keep = torch.randperm(idx.numel(), generator=generator)[:n].to(points.device)
        return idx[keep]
    if method == "fps":
        idx = _voxel_subset(points, n, generator, at_most=4.0)
        if idx.numel() <= n:
            return idx
        return idx[farthest_point_sample(points[idx], n, generator)]
    raise ValueError(f"downsample must be one of {DOWNSAMPLERS}, got {method!r}")
