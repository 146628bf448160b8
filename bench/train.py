"""GS-LRM training throughput: samples/s, MFU and the renderer's share of a step.

    python bench/train.py                      # CUDA: presets small and base, 256², 4 + 4 views
    python bench/train.py --presets base --batch-size 16 --grad-checkpointing on --attention cudnn
    python bench/train.py --peak-tflops 989    # the H100/H200 bf16 dense datasheet figure

One step = the trainer's step on a synthetic batch (random images; cameras on a sphere of
radius 1.67-3.11 looking at the object cube, 50° fov): transformer forward in bf16 autocast
(compiled blocks with --compile on, the trainer's default on CUDA), render the input and target
views (fp32, gsplat, RGB only), MSE + 0.2 (1 - SSIM), backward, grad clipping, fused AdamW that
skips non-finite updates on the device: no host synchronisation inside the step, as in the
trainer.

FLOPs are analytic (gslrm.estimate_flops): matmuls of the patch embedding, transformer and
head, x3 for forward + backward; rendering, norms and the optimizer are not counted, and
neither is gradient checkpointing's recomputation (model FLOPs). MFU = FLOPs/s / peak. The
default peak, 790 TFLOP/s, is the bf16 matmul rate measured on this project's H200 (an
8192³ product); NVIDIA's datasheet gives 989 dense for both H100 SXM and H200.

Renderer share: CUDA events around the render call inside the step (forward only), plus a
separate forward + backward of the same render on the step's Gaussians.

On CPU it runs the tiny preset at 32² so the script itself can be checked; absolute times there
are not meaningful.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zeroverse.lrm import losses  # noqa: E402
from zeroverse.lrm.camera_rays import intrinsics_from_fov, look_at  # noqa: E402
from zeroverse.lrm.gslrm import GSLRM, GSLRMConfig, estimate_flops  # noqa: E402


def synthetic_batch(B: int, V: int, size: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(B, V, generator=g) * 2 * math.pi
    el = torch.rand(B, V, generator=g) * 1.2 - 0.3
    r = torch.rand(B, V, generator=g) * 1.44 + 1.67
    eye = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], -1)
    return {
        "images": torch.rand(B, V, 3, size, size, generator=g).to(device),
        "c2w": look_at(eye, torch.zeros(3)).to(device),
        "K": intrinsics_from_fov(50.0, size, size).expand(B, V, 3, 3).contiguous().to(device),
    }


class Timer:
    """CUDA events on GPU (asynchronous, exact), perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def start(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1000


def bench_preset(preset: str, args, device) -> dict:
    cuda = device.type == "cuda"
    size = args.image_size
    vin, vt = args.input_views, args.target_views
    gc = args.grad_checkpointing == "on"
    cfg = GSLRMConfig.preset(preset, image_size=size, num_input_views=vin, grad_checkpointing=gc,
                             attention=args.attention)
    torch.manual_seed(0)
    model = GSLRM(cfg).to(device)
    if args.compile == "on" and cuda:
        model.compile_blocks()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    batch = synthetic_batch(args.batch_size, vin + vt, size, device)
    ins = {k: v[:, :vin] for k, v in batch.items()}
    tgt = batch if args.supervise_inputs == "on" else {k: v[:, vin:] for k, v in batch.items()}
    bg = torch.ones(3, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    timer = Timer(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    step_ms, render_ms = [], []
    gaussians = None
    for i in range(args.warmup + args.steps):
        t0 = timer.start()
        with amp:
            gaussians = model(ins["images"], ins["c2w"], ins["K"])
        r0 = timer.start()
        out = GSLRM.render(gaussians, tgt["c2w"], tgt["K"], size, size, bg, with_depth=False)
        r1 = timer.start()
        pred = out.rgb.permute(0, 1, 4, 2, 3)
        loss = losses.mse(pred, tgt["images"]) + 0.2 * (1 - losses.ssim(pred, tgt["images"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.found_inf = (~torch.isfinite(norm)).float()
        opt.step()
        t1 = timer.start()
        if i >= args.warmup:
            step_ms.append(timer.elapsed_ms(t0, t1))
            render_ms.append(timer.elapsed_ms(r0, r1))

    # Render forward + backward on its own, on the last step's Gaussians.
    g = gaussians.detach()
    leaves = [t.requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)]
    rb_ms = []
    for i in range(args.warmup + args.steps):
        for t in leaves:
            t.grad = None
        r0 = timer.start()
        out = GSLRM.render(g, tgt["c2w"], tgt["K"], size, size, bg, with_depth=False)
        out.rgb.mean().backward()
        r1 = timer.start()
        if i >= args.warmup:
            rb_ms.append(timer.elapsed_ms(r0, r1))

    step = sorted(step_ms)[len(step_ms) // 2]  # median
    render = sorted(render_ms)[len(render_ms) // 2]
    render_fb = sorted(rb_ms)[len(rb_ms) // 2]
    flops = estimate_flops(cfg, vin, size, size)
    samples_s = args.batch_size / (step / 1000)
    return {
        "preset": preset,
        "params_M": model.num_params() / 1e6,
        "tokens": int(flops["tokens"]),
        "gaussians_per_sample": vin * size * size,
        "batch": args.batch_size,
        "grad_ckpt": gc,
        "image_size": size,
        "compile": args.compile == "on" and cuda,
        "rendered_views": tgt["c2w"].shape[1],
        "attention": args.attention,
        "step_ms": step,
        "samples_per_s": samples_s,
        "train_TFLOP_per_sample": flops["train"] / 1e12,
        "achieved_TFLOPs": flops["train"] * samples_s / 1e12,
        "MFU": flops["train"] * samples_s / (args.peak_tflops * 1e12),
        "render_fwd_ms": render,
        "render_fwd_share": render / step,
        "render_fwd_bwd_ms": render_fb,
        "render_fwd_bwd_share": render_fb / step,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=None, help="comma list; default small,base (CUDA), tiny (CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="per GPU; default 8 (CUDA), 2 (CPU)")
    ap.add_argument("--image-size", type=int, default=None, help="default 256 (CUDA), 32 (CPU)")
    ap.add_argument("--input-views", type=int, default=4)
    ap.add_argument("--target-views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--grad-checkpointing", choices=["on", "off"], default="off")
    ap.add_argument("--compile", choices=["on", "off"], default="on", help="torch.compile the blocks (CUDA)")
    ap.add_argument("--supervise-inputs", choices=["on", "off"], default="on", help="render inputs + targets")
    ap.add_argument("--attention", choices=["auto", "cudnn", "flash", "efficient", "math"],
                    default="auto", help="SDPA kernel tried first (GSLRMConfig.attention)")
    ap.add_argument("--peak-tflops", type=float, default=790.0,
                    help="bf16 peak for MFU: 790 = measured H200 matmul; 989 = H100/H200 datasheet")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        from zeroverse.lrm.rasterizer import gsplat_available

        renderer = "gsplat" if gsplat_available() else "torch (gsplat not installed!)"
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, renderer {renderer}")
    else:
        print("device: CPU. Running the tiny preset only to exercise the script: absolute "
              "times on CPU are not meaningful, and MFU is computed against the GPU peak.")
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    presets = (args.presets or ("small,base" if cuda else "tiny")).split(",")
    args.batch_size = args.batch_size or (8 if cuda else 2)
    args.image_size = args.image_size or (256 if cuda else 32)
    print(f"{args.image_size}², {args.input_views} input + {args.target_views} target views, "
          f"batch {args.batch_size}, bf16 autocast={cuda}, peak {args.peak_tflops:g} TFLOP/s")

    results = []
    for preset in presets:
        try:
            r = bench_preset(preset, args, device)
        except torch.cuda.OutOfMemoryError:
            print(f"{preset}: out of memory at batch {args.batch_size}; try --grad-checkpointing on "
                  "or a smaller --batch-size")
            torch.cuda.empty_cache()
            continue
        results.append(r)
        print(json.dumps(r))
        if cuda:
            torch.cuda.empty_cache()

    if results:
        print()
        print("| preset | size | params | batch | ckpt | compile | attention | step ms | samples/s | TFLOP/s | MFU | render fwd | render fwd+bwd | mem GiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['preset']} | {r['image_size']}² | {r['params_M']:.3g}M | {r['batch']} | {'on' if r['grad_ckpt'] else 'off'} "
                  f"| {'on' if r['compile'] else 'off'} "
                  f"| {r['attention']} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | {r['achieved_TFLOPs']:.0f} "
                  f"| {100 * r['MFU']:.1f}% | {r['render_fwd_ms']:.1f} ms ({100 * r['render_fwd_share']:.0f}%) "
                  f"| {r['render_fwd_bwd_ms']:.1f} ms ({100 * r['render_fwd_bwd_share']:.0f}%) "
                  f"| {r['peak_mem_GiB']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
