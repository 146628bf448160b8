"""Check the pure-PyTorch rasterizer against gsplat on random scenes (needs CUDA + gsplat).

    python bench/rasterizer_check.py [--scenes 4] [--gaussians 2000] [--size 64] [--cameras 3]

For each random scene (B scenes of N Gaussians inside the object cube, cameras on a sphere
around it), renders with backend="gsplat" and backend="torch" in float32 on the GPU, then
backpropagates the same random weighting of rgb, alpha and depth through both and prints the
largest differences:
- images: max |gsplat - torch| of rgb, alpha, and of depth where alpha > 0.5, and the share of
  rgb values that differ by more than 1e-3. A few isolated pixels may differ by up to ~1/255:
  a Gaussian whose alpha sits at the 1/255 cut-off (or a pixel at the 1e-4 transmittance stop)
  can fall on either side of it under gsplat's fast __expf versus torch's exp.
- gradients w.r.t. means, quats, scales, opacities, colours: max abs difference and the
  relative error max|Δ| / max|torch grad|.
Exits 1 when a difference exceeds the tolerances, 0 otherwise. Without CUDA or gsplat it says
so and exits 0 (nothing to compare).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zeroverse.lrm.camera_rays import look_at, world_to_camera  # noqa: E402
from zeroverse.lrm.rasterizer import gsplat_available, rasterize_gaussians  # noqa: E402

NAMES = ("means", "quats", "scales", "opacities", "colors")


def random_scene(seed: int, B: int, N: int, C: int, size: int, device: str):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(B, N, 3, generator=g) * 2 - 1) * 0.8
    quats = torch.randn(B, N, 4, generator=g)
    # log-uniform scales, ~0.3 to ~10 px at the cameras' distance: small and large splats
    scales = torch.exp(torch.empty(B, N, 3).uniform_(math.log(0.005), math.log(0.12), generator=g))
    opacities = torch.rand(B, N, generator=g) * 0.9 + 0.05
    colors = torch.rand(B, N, 3, generator=g)
    az = torch.rand(B, C, generator=g) * 2 * math.pi
    el = (torch.rand(B, C, generator=g) - 0.3) * 1.2
    r = torch.rand(B, C, generator=g) * 1.4 + 1.7
    eye = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], -1)
    viewmats = world_to_camera(look_at(eye, torch.zeros(3)))
    f = 0.5 * size / math.tan(math.radians(25))
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]).expand(B, C, 3, 3)
    to = lambda t: t.to(device).contiguous()  # noqa: E731
    return [to(t) for t in (means, quats, scales, opacities, colors)], to(viewmats), to(K)


def render_and_grad(backend: str, leaves_init, viewmats, K, size, weights):
    leaves = [t.clone().requires_grad_(True) for t in leaves_init]
    out = rasterize_gaussians(*leaves, viewmats, K, size, size,
                              background=torch.ones(3, device=viewmats.device), backend=backend)
    stacked = torch.cat([out.rgb, out.alpha, out.depth * out.alpha.detach()], -1)
    (stacked * weights).sum().backward()
    return out, [t.grad for t in leaves]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2, help="scenes per rasterize call (B)")
    ap.add_argument("--gaussians", type=int, default=2000)
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--image-tol", type=float, default=5e-3, help="max |Δ| of rgb and alpha")
    ap.add_argument("--pixel-share-tol", type=float, default=1e-3,
                    help="max share of rgb values differing by more than 1e-3")
    ap.add_argument("--grad-rel-tol", type=float, default=1e-2)
    args = ap.parse_args()

    if not torch.cuda.is_available() or not gsplat_available():
        why = "CUDA is not available" if not torch.cuda.is_available() else "gsplat is not installed"
        print(f"gsplat backend unavailable ({why}); nothing to compare. Run this on a CUDA machine "
              "with gsplat==1.5.3.")
        return 0

    import gsplat

    print(f"gsplat {gsplat.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{args.scenes} random scenes x {args.batch} x {args.gaussians} Gaussians, "
          f"{args.cameras} cameras, {args.size}x{args.size}, float32")
    worst = {}
    ok = True
    for s in range(args.scenes):
        leaves, viewmats, K = random_scene(s, args.batch, args.gaussians, args.cameras, args.size, "cuda")
        weights = torch.rand(args.batch, args.cameras, args.size, args.size, 5,
                             generator=torch.Generator(device="cuda").manual_seed(s), device="cuda")
        out_g, grad_g = render_and_grad("gsplat", leaves, viewmats, K, args.size, weights)
        out_t, grad_t = render_and_grad("torch", leaves, viewmats, K, args.size, weights)
        row = {
            "rgb": (out_g.rgb - out_t.rgb).abs().max().item(),
            "alpha": (out_g.alpha - out_t.alpha).abs().max().item(),
            "depth(a>0.5)": ((out_g.depth - out_t.depth).abs() * (out_t.alpha > 0.5)).max().item(),
            "px>1e-3": ((out_g.rgb - out_t.rgb).abs() > 1e-3).float().mean().item(),
        }
        for name, a, b in zip(NAMES, grad_g, grad_t):
            diff = (a - b).abs().max().item()
            row[f"d{name} abs"] = diff
            row[f"d{name} rel"] = diff / max(b.abs().max().item(), 1e-12)
        print(f"scene {s}: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()))
        for k, v in row.items():
            worst[k] = max(worst.get(k, 0.0), v)
    print("worst over scenes:")
    for k, v in worst.items():
        print(f"  {k:>16s}  {v:.3e}")
    if worst["rgb"] > args.image_tol or worst["alpha"] > args.image_tol:
        print(f"FAIL: image difference above {args.image_tol}")
        ok = False
    if worst["px>1e-3"] > args.pixel_share_tol:
        print(f"FAIL: more than {args.pixel_share_tol:.1e} of rgb values differ by > 1e-3")
        ok = False
    bad = [n for n in NAMES if worst[f"d{n} rel"] > args.grad_rel_tol]
    if bad:
        print(f"FAIL: relative gradient error above {args.grad_rel_tol} for {bad}")
        ok = False
    print("PASS" if ok else "see FAIL lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
