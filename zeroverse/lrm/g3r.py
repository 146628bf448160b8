"""G3R (Chen et al., ECCV 2024): a learned optimizer that refines 3D neural Gaussians.

No I/O in this file (nanoGPT style): g3r_train.py reads data, trains and writes checkpoints.

State S [B, N, D], D = 14 + latent_dim, one row per Gaussian ("3D neural Gaussian"):

    0:3   position   world xyz
    3:6   log scale  (linear scale = exp, clamped to [min_scale, max_scale])
    6:10  rotation   quaternion wxyz, any norm (normalised when decoded)
    10:13 colour     logit of linear rgb in (0, 1)
    13:14 opacity    logit
    14:D  latent     free features, read only by the decoder

`G3R.decode` maps S to Gaussians with a small MLP and a skip connection on the explicit
channels: raw = S[..., :14] + MLP(S), then the activations above. The MLP's last layer starts at
zero, so a fresh model decodes the scaffold exactly.

One refinement step (`G3R.forward`), t = 0 .. T-1:

    ∇S   = d(source-view MSE)/dS, by torch.autograd.grad; an input, never differentiated through
    ĝ    = ∇S / RMS over points, per scene and channel        (normalize_gradient)
    S   <- S + γ(t) · G(S, ĝ, t)                              (gamma: decaying cosine)

G starts as normalised gradient descent, G = -step ⊙ (softplus(a) ĝ - head(...)), with a
learnable per-channel step (initialised from `update_scales`), a learnable gradient
coefficient softplus(a) (1 at init) and a zero-initialised head: an untrained model is already
a sensible optimizer, and training learns the correction (curvature, where to move points,
how to use the latents). The head sees, per point, S, ĝ, log10 of the gradient RMS relative to
step 0 (how far the optimisation has come; broadcast per scene) and a Fourier embedding of t/T.

Network choice: kNN point attention, not a dense voxel UNet. The Gaussians sit on surfaces
(a few percent of the object cube's voxels), so a dense 64³ UNet spends nearly all its
compute and memory on empty space and, at any affordable resolution, merges neighbouring
Gaussians into one voxel (it cannot give each point its own update). Attention over the k
nearest neighbours works on the points themselves, costs O(N k width) per layer, needs only
torch.cdist (chunked) and gather, and sees relative positions (translation invariant,
normalised by the scene's mean neighbour distance, so it does not care about point density).
The kNN graph is built once per step.

Initialisation (`init_from_depth`): back-project the source views' depth maps, pick num_points
of them (voxel grid with an adaptive cell and a seeded subset, or farthest-point sampling),
scale = distance to the 3rd-nearest other point, identity rotation, opacity 0.7, the pixel's
colour, a seeded random latent. `init_from_gaussians` starts from any Gaussians instead (e.g.
a GS-LRM prediction).

Example:
    >>> cfg = G3RConfig.preset("tiny")
    >>> model = G3R(cfg)
    >>> g = torch.Generator().manual_seed(0)
    >>> s0 = torch.stack([init_from_depth(img[b], dep[b], c2w[b], K[b], cfg, g) for b in range(B)])
    >>> res = refine(model, s0, img, c2w, K, background=torch.ones(3))   # T = cfg.steps
    >>> res.gaussians.means.shape   # [B, N, 3]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses
from .camera_rays import world_to_camera
from .g3r_ops import (  # noqa: F401  (re-exported: g3r.knn, g3r.unproject_depth, ...)
    DOWNSAMPLERS,
    downsample_points,
    farthest_point_sample,
    flatness,
    gamma,
    gather_points,
    grad_rms,
    knn,
    normalize_gradient,
    unproject_depth,
)
from .gslrm import Gaussians
from .rasterizer import Backend, RenderOutput, rasterize_gaussians

EXPLICIT_CHANNELS = 14
POS, SCALE, ROT, COLOR, OPAC = slice(0, 3), slice(3, 6), slice(6, 10), slice(10, 13), slice(13, 14)
# Fields that change speed or memory but not the function the weights compute.
RUNTIME_FIELDS = ("knn_chunk",)


@dataclass(frozen=True)
class G3RConfig:
    # Network
    latent_dim: int = 16
    width: int = 64
    layers: int = 4
    heads: int = 4
    knn: int = 16  # neighbours per point (the point itself included)
    decoder_hidden: int = 64
    time_freqs: int = 4
    # Refinement
    steps: int = 24  # T
    turbo_steps: int = 6  # the "turbo" schedule's T
    gamma_max: float = 1.0  # γ(0)
    gamma_min: float = 0.05  # γ(T); γ decays along a half cosine in between
    # Learnable per-channel step sizes start here, in world units / logits per unit of ĝ:
    # position, log scale, rotation, colour logit, opacity logit, latent.
    update_scales: tuple[float, ...] = (0.01, 0.05, 0.05, 0.2, 0.2, 0.1)
    grad_eps: float = 1e-12  # relative to each channel's largest |∇S| (normalize_gradient)
    # Initialisation
    num_points: int = 16_384
    downsample: str = "voxel"  # "voxel" | "fps"
    init_opacity: float = 0.7
    init_scale_factor: float = 1.0  # initial scale = factor x distance to the 3rd-nearest point
    latent_init_std: float = 0.5
    min_scale: float = 1e-3
    max_scale: float = 0.3
    # Runtime
    knn_chunk: int = 4096  # query points per torch.cdist call

    def __post_init__(self):
        for name in ("latent_dim", "width", "layers", "heads", "knn", "decoder_hidden", "steps",
                     "turbo_steps", "num_points", "knn_chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"G3RConfig.{name} must be a positive int, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.time_freqs < 0:
            raise ValueError(f"time_freqs must be >= 0, got {self.time_freqs}")
        if not 0 <= self.gamma_min <= self.gamma_max:
            raise ValueError(f"need 0 <= gamma_min ({self.gamma_min}) <= gamma_max ({self.gamma_max})")
        if len(self.update_scales) != 6 or any(s <= 0 for s in self.update_scales):
            raise ValueError(
                "update_scales must be 6 positive floats (position, log scale, rotation, colour, "
                f"opacity, latent), got {self.update_scales}"
            )
        if self.downsample not in DOWNSAMPLERS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLERS}, got {self.downsample!r}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not self.init_scale_factor > 0:
            raise ValueError(f"init_scale_factor must be positive, got {self.init_scale_factor}")
        if not 0 < self.min_scale < self.max_scale:
            raise ValueError(f"need 0 < min_scale ({self.min_scale}) < max_scale ({self.max_scale})")
        if self.knn < 2:
            raise ValueError(f"knn must be >= 2 (the point itself is one of them), got {self.knn}")

    @property
    def state_dim(self) -> int:
        return EXPLICIT_CHANNELS + self.latent_dim

    @classmethod
    def preset(cls, name: str, **overrides) -> "G3RConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown G3R preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["update_scales"] = list(self.update_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "G3RConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown G3RConfig keys {sorted(unknown)}")
        d = dict(d)
        if "update_scales" in d:
            d["update_scales"] = tuple(d["update_scales"])
        return cls(**d)


PRESETS: dict[str, dict] = {
    # CPU tests: a few hundred points, 32² images.
    "tiny": dict(latent_dim=8, width=32, layers=2, heads=2, knn=8, decoder_hidden=32,
                 num_points=256, time_freqs=2),
    # ~0.2M parameters; the network is cheap next to rendering 32 views per step.
    "small": dict(),
}


# --------------------------------------------------------------------------------------------
# Explicit channels <-> Gaussians
# --------------------------------------------------------------------------------------------


def activate(raw: Tensor, cfg: G3RConfig) -> Gaussians:
    """Explicit channels [..., N, 14] -> Gaussians [..., N] (the state's parameterisation)."""
    log_s = raw[..., SCALE].clamp(math.log(cfg.min_scale), math.log(cfg.max_scale))
    q = raw[..., ROT]
    return Gaussians(
        means=raw[..., POS],
        quats=q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8),
        scales=torch.exp(log_s),
        opacities=torch.sigmoid(raw[..., 13]),
        colors=torch.sigmoid(raw[..., COLOR]),
    )


def explicit_from_gaussians(g: Gaussians, cfg: G3RConfig) -> Tensor:
    """Inverse of `activate` (up to the clamps): Gaussians [..., N] -> [..., N, 14]."""
    eps = 1e-4
    return torch.cat([
        g.means,
        torch.log(g.scales.clamp(cfg.min_scale, cfg.max_scale)),
        g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-8),
        torch.logit(g.colors.clamp(eps, 1 - eps)),
        torch.logit(g.opacities.clamp(eps, 1 - eps))[..., None],
    ], dim=-1)


def render(
    g: Gaussians,  # leading dims [B, N]
    c2w: Tensor,  # [B, C, 4, 4]
    K: Tensor,  # [B, C, 3, 3]
    H: int,
    W: int,
    background: Tensor | None = None,  # [3] or [B, 3]
    backend: Backend = "auto",
) -> RenderOutput:
    """Render B scenes into C cameras each, fp32 (see rasterizer.rasterize_gaussians)."""
    if background is not None and background.dim() == 2:
        background = background[:, None, :]  # [B, 1, 3] broadcasts to the rasterizer's [B, C, 3]
    with torch.autocast(device_type=g.means.device.type, enabled=False):
        return rasterize_gaussians(
            g.means.float(), g.quats.float(), g.scales.float(), g.opacities.float(),
            g.colors.float(), world_to_camera(c2w.float()), K.float(), W, H,
            background=background, backend=backend,
        )


def images_of(out: RenderOutput) -> Tensor:  # -> [B, C, 3, H, W]
    return out.rgb.permute(0, 1, 4, 2, 3)


def supervision_loss(
    pred: Tensor,  # [B, V, 3, H, W]
    target: Tensor,  # [B, V, 3, H, W]
    g: Gaussians,
    perceptual: "losses.PerceptualLoss | None",
    lpips_weight: float,
    ssim_weight: float,
    flat_weight: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE + lpips_weight · perceptual (with weights) or + ssim_weight · (1 - SSIM) (without,
    as the GS-LRM trainer) + flat_weight · flatness. Returns (loss, terms)."""
    terms = {"mse": losses.mse(pred, target)}
    loss = terms["mse"]
    if perceptual is not None:
        terms["perceptual"] = perceptual(pred, target).float()
        loss = loss + lpips_weight * terms["perceptual"]
    elif ssim_weight > 0:
        terms["ssim"] = losses.ssim(pred, target)
        loss = loss + ssim_weight * (1 - terms["ssim"])
    if flat_weight > 0:
        terms["flat"] = flatness(g)
        loss = loss + flat_weight * terms["flat"]
    return loss, terms


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def _state_from_points(
    points: Tensor,  # [M, 3]
    colors: Tensor,  # [M, 3] in [0, 1]
    cfg: G3RConfig,
    generator: torch.Generator,
    scales: Tensor | None = None,  # [M, 3]: given (Gaussians) or None (3rd-NN distance)
    quats: Tensor | None = None,  # [M, 4]
    opacities: Tensor | None = None,  # [M]
) -> Tensor:
    """Pick cfg.num_points of the points and build their state rows [num_points, D]."""
    n = cfg.num_points
    idx = downsample_points(points, n, cfg.downsample, generator)
    pts, cols = points[idx], colors[idx]
    m = pts.shape[0]
    if scales is None:
        if m >= 4:
            d, _ = knn(pts[None], 4, cfg.knn_chunk)
            # The 3rd-nearest other point (index 0 is the point itself).
            s = cfg.init_scale_factor * d[0, :, 3]
        else:
            s = torch.full((m,), cfg.max_scale, device=pts.device)  # too few points to measure
        sc = s[:, None].expand(m, 3).clamp(cfg.min_scale, cfg.max_scale)
    else:
        sc = scales[idx].clamp(cfg.min_scale, cfg.max_scale)
    q = quats[idx] if quats is not None else pts.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(m, 4)
    op = opacities[idx] if opacities is not None else pts.new_full((m,), cfg.init_opacity)
    if m < n:
        # Too few points for a fixed-size state (scenes are batched): repeat seeded ones,
        # jittered by a tenth of their scale so that no two coincide.
        extra = torch.randint(m, (n - m,), generator=generator).to(pts.device)
        jitter = torch.randn(n - m, 3, generator=generator).to(pts.device) * 0.1 * sc[extra]
        pts = torch.cat([pts, pts[extra] + jitter])
        cols, sc, q, op = (torch.cat([x, x[extra]]) for x in (cols, sc, q, op))
    explicit = explicit_from_gaussians(
        Gaussians(means=pts, quats=q, scales=sc, opacities=op, colors=cols), cfg)
    latent = torch.randn(n, cfg.latent_dim, generator=generator).to(pts.device) * cfg.latent_init_std
    return torch.cat([explicit, latent.to(explicit.dtype)], dim=-1)


@torch.no_grad()
def init_from_depth(
    images: Tensor,  # [V, 3, H, W] in [0, 1]
    depths: Tensor,  # [V, 1, H, W] planar z, 0 where empty
    c2w: Tensor,  # [V, 4, 4]
    K: Tensor,  # [V, 3, 3]
    cfg: G3RConfig,
    generator: torch.Generator,  # CPU generator: every random choice comes from it
    alphas: Tensor | None = None,  # [V, 1, H, W]: pixels with alpha < 0.5 are skipped
) -> Tensor:  # [num_points, 14 + latent_dim]
    """State of one scene from its source views' depth maps (module docstring)."""
    if images.dim() != 4 or depths.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(
            f"need images [V, 3, H, W] and depths [V, 1, H, W], got {tuple(images.shape)} and "
            f"{tuple(depths.shape)}"
        )
    depth = depths[:, 0].float()
    valid = torch.isfinite(depth) & (depth > 0) & (depth < 1e9)  # Cycles' background is 1e10
    if alphas is not None:
        valid &= alphas[:, 0] >= 0.5
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    world = unproject_depth(depth, c2w.float(), K.float())  # [V, H, W, 3]
    points = world[valid]
    colors = images.float().permute(0, 2, 3, 1)[valid]
    if points.shape[0] == 0:
        raise ValueError("no source view has a pixel with depth > 0 (and alpha >= 0.5): "
                         "nothing to back-project; check the depth channel of the views")
    return _state_from_points(points, colors, cfg, generator)


@torch.no_grad()
def init_batch_from_depth(
    images: Tensor,  # [B, V, 3, H, W]
    depths: Tensor,  # [B, V, 1, H, W]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
    cfg: G3RConfig,
    generator: torch.Generator,
    alphas: Tensor | None = None,  # [B, V, 1, H, W]
) -> Tensor:  # [B, num_points, 14 + latent_dim]
    """init_from_depth per scene, in order, drawing from one generator; stacked."""
    return torch.stack([
        init_from_depth(images[b], depths[b], c2w[b], K[b], cfg, generator,
                        None if alphas is None else alphas[b])
        for b in range(images.shape[0])
    ])


@torch.no_grad()
def init_from_gaussians(
    g: Gaussians,  # one scene, [M, ...] (e.g. a GS-LRM prediction g[b])
    cfg: G3RConfig,
    generator: torch.Generator,
    min_opacity: float = 0.05,
) -> Tensor:  # [num_points, 14 + latent_dim]
    """State from existing Gaussians: near-transparent ones dropped (unless too few remain),
    cfg.num_points picked as in init_from_depth, their parameters kept, a random latent."""
    if g.means.dim() != 2:
        raise ValueError(f"init_from_gaussians takes one scene ([M, 3] means), got {tuple(g.means.shape)}")
    keep = g.opacities >= min_opacity
    if int(keep.sum()) < min(cfg.num_points, g.num):
        keep = torch.ones_like(keep)
    return _state_from_points(g.means[keep].float(), g.colors[keep].float(), cfg, generator,
                              scales=g.scales[keep].float(), quats=g.quats[keep].float(),
                              opacities=g.opacities[keep].float())


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """State [..., D] -> explicit channels [..., 14] = S[..., :14] + MLP(S) (skip connection)."""

    def __init__(self, cfg: G3RConfig):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(cfg.state_dim, cfg.decoder_hidden), nn.GELU(),
            nn.Linear(cfg.decoder_hidden, cfg.decoder_hidden), nn.GELU(),
            nn.Linear(cfg.decoder_hidden, EXPLICIT_CHANNELS),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, state: Tensor) -> Tensor:
        return state[..., :EXPLICIT_CHANNELS] + self.mlp(state)


class PointAttentionBlock(nn.Module):
    """Pre-LN block: multi-head attention over each point's k nearest neighbours, with a
    relative-position encoding added to keys and values, then an MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.pos = nn.Sequential(nn.Linear(4, width), nn.GELU(), nn.Linear(width, width))
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: Tensor, rel: Tensor, idx: Tensor) -> Tensor:
        # x [B, N, D], rel [B, N, k, 4] (normalised offset, length), idx [B, N, k]
        B, N, D = x.shape
        k, H = idx.shape[-1], self.heads
        q, key, val = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        pe = self.pos(rel)  # [B, N, k, D]
        key = (gather_points(key, idx) + pe).view(B, N, k, H, D // H)
        val = (gather_points(val, idx) + pe).view(B, N, k, H, D // H)
        att = (q.view(B, N, 1, H, D // H) * key).sum(-1) * (D // H) ** -0.5  # [B, N, k, H]
        att = att.softmax(dim=2)
        out = (att[..., None] * val).sum(2).reshape(B, N, D)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class UpdateNet(nn.Module):
    """G(S, ĝ, t): per-point update [B, N, D] in state units (before γ)."""

    def __init__(self, cfg: G3RConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.state_dim
        self.time_dim = 2 + 2 * cfg.time_freqs
        self.inp = nn.Linear(3 * D + self.time_dim, cfg.width)
        self.blocks = nn.ModuleList(PointAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, D)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        s = cfg.update_scales
        per_channel = [s[0]] * 3 + [s[1]] * 3 + [s[2]] * 4 + [s[3]] * 3 + [s[4]] + [s[5]] * cfg.latent_dim
        self.log_step = nn.Parameter(torch.log(torch.tensor(per_channel)))
        self.grad_coef = nn.Parameter(torch.full((D,), math.log(math.e - 1)))  # softplus -> 1

    def time_features(self, t: int, T: int, ref: Tensor) -> Tensor:  # [time_dim]
        tau = t / T
        feats = [tau, gamma(t, T, self.cfg.gamma_max, self.cfg.gamma_min) / max(self.cfg.gamma_max, 1e-8)]
        for f in range(self.cfg.time_freqs):
            feats += [math.sin(math.pi * 2**f * tau), math.cos(math.pi * 2**f * tau)]
        return ref.new_tensor(feats)

    def forward(self, state: Tensor, g_hat: Tensor, grad_level: Tensor, t: int, T: int) -> Tensor:
        # state, g_hat [B, N, D]; grad_level [B, D]
        B, N, D = state.shape
        cfg = self.cfg
        k = min(cfg.knn, N)
        pos = state[..., POS].detach()
        dist, idx = knn(pos, k, cfg.knn_chunk)
        scale = dist[..., 1:].mean(dim=(1, 2), keepdim=True).clamp_min(1e-6)[..., None]  # [B,1,1,1]
        offset = (gather_points(pos, idx) - pos[:, :, None]) / scale
        rel = torch.cat([offset, dist[..., None] / scale], dim=-1)  # [B, N, k, 4]
        feats = torch.cat([
            state,
            g_hat,
            grad_level[:, None, :].expand(B, N, D),
            self.time_features(t, T, state).expand(B, N, self.time_dim),
        ], dim=-1)
        x = self.inp(feats)
        for block in self.blocks:
            x = block(x, rel, idx)
        correction = self.head(self.norm(x))
        return torch.exp(self.log_step) * (correction - F.softplus(self.grad_coef) * g_hat)


class G3R(nn.Module):
    def __init__(self, cfg: G3RConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.net = UpdateNet(cfg)

    def decode(self, state: Tensor) -> Gaussians:  # [B, N, D] -> Gaussians [B, N]
        return activate(self.decoder(state), self.cfg)

    def gamma(self, t: int, T: int) -> float:
        return gamma(t, T, self.cfg.gamma_max, self.cfg.gamma_min)

    def forward(
        self,
        state: Tensor,  # [B, N, D]
        grad: Tensor,  # [B, N, D] ∇S of the source-view loss (detached)
        t: int,
        T: int,
        grad_rms0: Tensor,  # [B, D] grad_rms(∇S) at t = 0
    ) -> Tensor:  # [B, N, D] the next state
        """One update: S + γ(t) · G(S, normalize_gradient(∇S), t)."""
        if state.shape != grad.shape or state.shape[-1] != self.cfg.state_dim:
            raise ValueError(
                f"state {tuple(state.shape)} and grad {tuple(grad.shape)} must both be "
                f"[B, N, {self.cfg.state_dim}]"
            )
        grad = grad.detach()
        g_hat = normalize_gradient(grad, self.cfg.grad_eps)
        # How far the gradient has shrunk since step 0, per channel (log10, 0 at t = 0; 0 for
        # channels without gradient).
        tiny = torch.finfo(grad.dtype).tiny
        rms, rms0 = grad_rms(grad), grad_rms0.detach()
        level = torch.where((rms > 0) & (rms0 > 0),
                            torch.log10(rms.clamp_min(tiny)) - torch.log10(rms0.clamp_min(tiny)),
                            torch.zeros_like(rms))
        delta = self.net(state, g_hat, level.clamp(-5, 5), t, T)
        return state + self.gamma(t, T) * delta

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------------------------
# Refinement
# --------------------------------------------------------------------------------------------


def source_gradient(
    model: G3R,
    state: Tensor,  # [B, N, D]
    images: Tensor,  # [B, V, 3, H, W]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
    background: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """(∇S [B, N, D], per-scene source MSE [B]): one render + backward of the source views.

    The gradient is of Σ_b MSE_b (each scene's mean over its pixels), taken with respect to
    the state only (create_graph=False): it is an input to G, not differentiated through."""
    H, W = images.shape[-2:]
    with torch.enable_grad():
        s = state.detach().requires_grad_(True)
        pred = images_of(render(model.decode(s), c2w, K, H, W, background, backend))
        mse = (pred - images).square().mean(dim=(1, 2, 3, 4))
        (grad,) = torch.autograd.grad(mse.sum(), s)
    return grad, mse.detach()


@dataclass
class RefineResult:
    state: Tensor  # [B, N, D] after the last update
    gaussians: Gaussians  # decoded, leading dims [B, N]
    source_mse: list[Tensor] = field(default_factory=list)  # [B] before each update (+ final)
    render_passes: int = 0  # render + backward passes (one per update)


@torch.no_grad()
def refine(
    model: G3R,
    state: Tensor,  # [B, N, D] (init_from_depth / init_from_gaussians, stacked)
    images: Tensor,  # [B, V, 3, H, W] source views in [0, 1]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
    steps: int | None = None,  # T; None = model.cfg.steps
    background: Tensor | None = None,  # [3] or [B, 3]; None = black
    backend: Backend = "auto",
    final_loss: bool = True,  # one more forward render for the final source MSE
) -> RefineResult:
    """Run T learned updates (inference: the network needs no graph)."""
    T = model.cfg.steps if steps is None else int(steps)
    if T <= 0:
        raise ValueError(f"steps must be positive, got {T}")
    result = RefineResult(state=state, gaussians=model.decode(state))
    rms0 = None
    for t in range(T):
        grad, mse = source_gradient(model, state, images, c2w, K, background, backend)
        result.render_passes += 1
        result.source_mse.append(mse)
        if rms0 is None:
            rms0 = grad_rms(grad)
        state = model(state, grad, t, T, rms0)
    result.state = state
    result.gaussians = model.decode(state)
    if final_loss:
        pred = images_of(render(result.gaussians, c2w, K, images.shape[-2], images.shape[-1],
                                background, backend))
        result.source_mse.append((pred - images).square().mean(dim=(1, 2, 3, 4)))
    return result


__all__ = [
    "G3R",
    "G3RConfig",
    "PRESETS",
    "RefineResult",
    "activate",
    "explicit_from_gaussians",
    "flatness",
    "gamma",
    "grad_rms",
    "init_batch_from_depth",
    "init_from_depth",
    "init_from_gaussians",
    "knn",
    "normalize_gradient",
    "refine",
    "render",
    "source_gradient",
    "supervision_loss",
    "unproject_depth",
]
