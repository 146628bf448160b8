"""GS-LRM (Zhang et al. 2024): posed images in, one 3D Gaussian per input pixel out.

    input view v: concat(RGB (3), Plücker ray (6)) = 9 channels, H x W
    -> 8x8 patches, linear -> tokens of all input views concatenated (B, V*H*W/64, width)
    -> pre-LN transformer, no biases anywhere (LayerNorm(bias=False), Linear(bias=False)), SDPA
    -> LayerNorm, per-token linear "unpatchify" to 12 numbers per pixel (fp32 by default):
       rgb 3 | scale 3 | rotation 4 | opacity 1 | distance along the ray 1
    -> Gaussians: mean = ray origin + t * ray direction, with (parameterisation v2, default)
       t = t0 + spread * tanh(x) around t0 = -o.d, the point of the ray closest to the object
       centre, positions clamped to the object's cube; scale = min(exp(s + ln 0.1), 0.3) and
       opacity = sigmoid(x - 2) as in GS-LRM. At initialisation every Gaussian therefore lies
       in the cube near the plane through the centre, ~0.1 wide: colour gradients reach the
       positions from the first step, and no view's camera distance has to be learnt first.
       `distance="camera"`, `scale_activation="sigmoid"` restore the v1 behaviour (ablations).

No I/O in this file (nanoGPT style): the trainer (train.py) reads data and writes checkpoints.

Example:
    >>> cfg = GSLRMConfig.preset("tiny")
    >>> model = GSLRM(cfg)
    >>> g = model(images, c2w, K)  # images [B, V, 3, 32, 32] -> g.means [B, V*32*32, 3]
    >>> out = model.render(g, c2w_t, K_t, 32, 32, background=torch.ones(3))
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from .camera_rays import plucker_rays, ray_origins_directions, world_to_camera
from .rasterizer import Backend, RenderOutput, rasterize_gaussians

GAUSSIAN_CHANNELS = 12  # rgb 3, scale 3, rotation 4, opacity 1, distance 1
# Version of the config's meaning. v1 (zeroverse <= 0.1.0) had no version key and other
# defaults (distance from the camera, sigmoid scales from 0.01); its checkpoints are refused.
PARAM_VERSION = 2
DISTANCES = ("object", "camera")
SCALE_ACTIVATIONS = ("exp", "sigmoid")
_SDPA = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
ATTENTION_BACKENDS = ("auto", *_SDPA)
# Fields that change speed or memory but not the function the weights compute.
RUNTIME_FIELDS = ("grad_checkpointing", "attention")


@dataclass(frozen=True)
class GSLRMConfig:
    image_size: int = 256
    patch_size: int = 8
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_input_views: int = 4
    grad_checkpointing: bool = False
    # SDPA kernel preference: "auto" (PyTorch's choice) or one of "cudnn", "flash",
    # "efficient", "math" tried first, the others as fallbacks. Speed only; same weights.
    attention: str = "auto"
    # Gaussian parameterisation (module docstring). World units: objects lie in [-1, 1]^3 and
    # the rig puts cameras 1.67-3.11 from the origin.
    param_version: int = PARAM_VERSION
    distance: str = "object"  # "object": t0 + spread*tanh(x) about the centre; "camera": v1
    object_spread: float = 1.7320508  # sqrt(3): a ray's chord through the cube is within t0 +- this
    object_bound: float = 1.0  # positions clamped to [-bound, bound]^3 (distance="object")
    scale_activation: str = "exp"  # "exp": min(exp(s) * init_scale, max_scale) (GS-LRM); "sigmoid": v1
    max_scale: float = 0.3  # GS-LRM's 0.3 cap
    init_scale: float = 0.1003  # GS-LRM's exp(-2.3); v1 used 0.01 (~1 px)
    init_opacity: float = 0.1192  # GS-LRM's sigmoid(-2); v1 used 0.2
    near: float = 0.1  # distance="camera" only: t in [near, far]
    far: float = 5.0
    qk_norm: bool = True  # RMS-normalise queries and keys per head (stable attention logits)
    fp32_head: bool = True  # output norm + head outside autocast: distances not quantised by bf16

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if not 0 < self.init_scale < self.max_scale:
            raise ValueError(f"need 0 < init_scale ({self.init_scale}) < max_scale ({self.max_scale})")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < near ({self.near}) < far ({self.far})")
        if self.param_version != PARAM_VERSION:
            raise ValueError(f"param_version {self.param_version}: this zeroverse builds v{PARAM_VERSION} GS-LRMs")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.scale_activation not in SCALE_ACTIVATIONS:
            raise ValueError(f"scale_activation must be one of {SCALE_ACTIVATIONS}, got {self.scale_activation!r}")
        if not (self.object_spread > 0 and self.object_bound > 0):
            raise ValueError(f"need object_spread ({self.object_spread}) and object_bound ({self.object_bound}) > 0")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {sorted(ATTENTION_BACKENDS)}, got {self.attention!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GSLRMConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown GS-LRM preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GSLRMConfig":
        known = {f.name for f in fields(cls)}
        version = d.get("param_version", 1)
        if version != PARAM_VERSION:
            raise ValueError(
                f"this GS-LRM was saved with parameterisation v{version} (v1: zeroverse 0.1.0, distance "
                f"along the ray from the camera and 0.01-wide sigmoid scales); this zeroverse reads "
                f"v{PARAM_VERSION} only. Retrain it with `zeroverse train-lrm`, or score it with the "
                "zeroverse version that trained it."
            )
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GSLRMConfig keys {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict] = {
    # CPU tests: 16 tokens per 32x32 view.
    "tiny": dict(image_size=32, patch_size=8, width=64, depth=2, heads=2),
    "small": dict(width=768, depth=12, heads=12),
    # The paper's size.
    "base": dict(width=1024, depth=24, heads=16),
}


@dataclass
class Gaussians:
    """3D Gaussians, leading dims [...] (GS-LRM gives [B, N]; a .ply holds one scene, [N])."""

    means: Tensor  # [..., N, 3] world space
    quats: Tensor  # [..., N, 4] wxyz, unit norm
    scales: Tensor  # [..., N, 3] linear
    opacities: Tensor  # [..., N] in (0, 1)
    colors: Tensor  # [..., N, 3] in (0, 1)

    def __getitem__(self, idx) -> "Gaussians":
        return Gaussians(*(getattr(self, f.name)[idx] for f in fields(self)))

    def detach(self) -> "Gaussians":
        return Gaussians(*(getattr(self, f.name).detach() for f in fields(self)))

    def to(self, *args, **kwargs) -> "Gaussians":
        return Gaussians(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))

    @property
    def num(self) -> int:
        return self.means.shape[-2]


def _sdpa_context(attention: str):
    if attention == "auto":
        return nullcontext()
    first = _SDPA[attention]
    order = [first] + [b for b in _SDPA.values() if b != first]
    return sdpa_kernel(order, set_priority=True)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, attention: str = "auto", qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        # QK-norm: attention logits stay bounded whatever the residual stream's scale.
        self.q_norm = nn.RMSNorm(width // heads) if qk_norm else None
        self.k_norm = nn.RMSNorm(width // heads) if qk_norm else None

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D]
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        with _sdpa_context(self.attention):
            y = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, D/heads]
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden, bias=False)
        self.proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block without biases."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, attention: str = "auto", qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, bias=False)
        self.attn = Attention(width, heads, attention, qk_norm)
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.mlp = MLP(width, int(round(width * mlp_ratio)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GSLRM(nn.Module):
    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        self.patch_embed = nn.Linear(9 * p * p, cfg.width, bias=False)
        self.norm_in = nn.LayerNorm(cfg.width, bias=False)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.attention, cfg.qk_norm) for _ in range(cfg.depth)
        )
        self.norm_out = nn.LayerNorm(cfg.width, bias=False)
        self.head = nn.Linear(cfg.width, GAUSSIAN_CHANNELS * p * p, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = 0.02
                if name.endswith("attn.proj") or name.endswith("mlp.proj"):
                    std = 0.02 / math.sqrt(2 * self.cfg.depth)  # GPT-2 residual scaling
                nn.init.normal_(m.weight, std=std)
        # The head's output is ~N(0, 0.1²) at init (the features are layer-normed), so the
        # activations below sit at their init_* offsets: small splats, low opacity, t mid-range.
        nn.init.normal_(self.head.weight, std=0.1 / math.sqrt(self.cfg.width))

    # ---------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,  # [B, V, 3, H, W] in [0, 1]
        c2w: Tensor,  # [B, V, 4, 4]
        K: Tensor,  # [B, V, 3, 3]
    ) -> Gaussians:
        """Predict one Gaussian per input pixel: Gaussians with leading dims [B, V*H*W]."""
        B, V, _, H, W = images.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be a multiple of patch_size {p}")
        if c2w.shape != (B, V, 4, 4) or K.shape != (B, V, 3, 3):
            raise ValueError(
                f"c2w {tuple(c2w.shape)} / K {tuple(K.shape)} must be [{B}, {V}, 4, 4] / [{B}, {V}, 3, 3]"
            )
        h, w = H // p, W // p
        rays = plucker_rays(c2w.float(), K.float(), H, W).to(images.dtype)  # [B, V, 6, H, W]
        x = torch.cat([images * 2 - 1, rays], dim=2)  # [B, V, 9, H, W]
        x = x.view(B, V, 9, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6)  # B V h w 9 p p
        x = x.reshape(B, V * h * w, 9 * p * p)
        x = self.norm_in(self.patch_embed(x))
        for block in self.blocks:
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.cfg.fp32_head:
            # Outside autocast: bf16 would quantise each pixel's distance to ~1/128 of its range.
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = self.head(self.norm_out(x.float()))  # [B, V*h*w, 12*p*p]
        else:
            x = self.head(self.norm_out(x))
        x = x.view(B, V, h, w, p, p, GAUSSIAN_CHANNELS).permute(0, 1, 2, 4, 3, 5, 6)
        raw = x.reshape(B, V * H * W, GAUSSIAN_CHANNELS).float()
        o, d = ray_origins_directions(c2w.float(), K.float(), H, W)  # [B, V, H, W, 3]
        return self.activate(raw, o.reshape(B, -1, 3), d.reshape(B, -1, 3))

    def activate(self, raw: Tensor, origins: Tensor, dirs: Tensor) -> Gaussians:
        """Map raw per-pixel outputs [B, N, 12] to Gaussians along the pixel rays [B, N, 3]."""
        cfg = self.cfg
        rgb, scale, rot, opac, dist = raw.split([3, 3, 4, 1, 1], dim=-1)
        if cfg.scale_activation == "exp":
            # GS-LRM: min(exp(s - 2.3), 0.3); the clamp's gradient is 0 only above the cap.
            scales = torch.exp(scale + math.log(cfg.init_scale)).clamp(max=cfg.max_scale)
        else:
            # v1: max_scale * sigmoid(.), equal to init_scale at raw = 0.
            r = cfg.init_scale / cfg.max_scale
            scales = cfg.max_scale * torch.sigmoid(scale + math.log(r / (1 - r)))
        q = rot + rot.new_tensor([1.0, 0.0, 0.0, 0.0])  # identity rotation at raw = 0
        quats = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        a = cfg.init_opacity
        opacities = torch.sigmoid(opac[..., 0] + math.log(a / (1 - a)))
        if cfg.distance == "object":
            # Around the point of each ray closest to the object centre (the origin).
            t0 = -(origins * dirs).sum(-1, keepdim=True) / (dirs * dirs).sum(-1, keepdim=True)
            t = t0 + cfg.object_spread * torch.tanh(dist)
            means = (origins + t * dirs).clamp(-cfg.object_bound, cfg.object_bound)
        else:
            t = cfg.near + (cfg.far - cfg.near) * torch.sigmoid(dist)
            means = origins + t * dirs
        return Gaussians(means=means, quats=quats, scales=scales, opacities=opacities,
                         colors=torch.sigmoid(rgb))

    @staticmethod
    def render(
        gaussians: Gaussians,  # leading dims [B, N]
        c2w: Tensor,  # [B, C, 4, 4]
        K: Tensor,  # [B, C, 3, 3]
        H: int,
        W: int,
        background: Tensor | None = None,  # [3]
        backend: Backend = "auto",
        with_depth: bool = True,
    ) -> RenderOutput:
        """Render at the given cameras; always float32 (gsplat's kernels are fp32 only).
        with_depth=False skips the depth channel (training never reads it; out.depth is None)."""
        g = gaussians
        with torch.autocast(device_type=g.means.device.type, enabled=False):
            return rasterize_gaussians(
                g.means.float(), g.quats.float(), g.scales.float(), g.opacities.float(),
                g.colors.float(), world_to_camera(c2w.float()), K.float(), W, H,
                background=background, backend=backend, with_depth=with_depth,
            )

    def compile_blocks(self) -> None:
        """torch.compile each transformer block (one graph serves them all: same code, weights
        passed as inputs); fuses the norms, GELU and residual adds around the matmuls."""
        for block in self.blocks:
            block.compile(dynamic=False)

    @property
    def blocks_compiled(self) -> bool:
        return any(getattr(b, "_compiled_call_impl", None) is not None for b in self.blocks)

    def uncompile_blocks(self) -> None:
        for block in self.blocks:
            block._compiled_call_impl = None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def estimate_flops(cfg: GSLRMConfig, num_input_views: int, H: int, W: int) -> dict[str, float]:
    """Analytic matmul FLOPs of one GS-LRM forward pass for one sample (a multiply-add = 2).

    Counts the patch embedding, every transformer matmul (qkv, attention scores, attention
    values, output projection, MLP) and the head; norms, activations and rendering are left
    out. Training (forward + backward) is 3x the forward count; gradient checkpointing's
    recomputation is not counted (model FLOPs, as in MFU).
    """
    p, D = cfg.patch_size, cfg.width
    T = num_input_views * (H // p) * (W // p)
    hidden = int(round(D * cfg.mlp_ratio))
    per_layer = 2 * T * (3 * D * D + D * D + 2 * D * hidden) + 2 * 2 * T * T * D
    embed = 2 * T * 9 * p * p * D
    head = 2 * T * D * GAUSSIAN_CHANNELS * p * p
    fwd = cfg.depth * per_layer + embed + head
    return {"tokens": float(T), "forward": float(fwd), "train": float(3 * fwd)}


__all__ = [
    "GSLRM",
    "GSLRMConfig",
    "Gaussians",
    "PARAM_VERSION",
    "PRESETS",
    "estimate_flops",
]
