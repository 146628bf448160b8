"""G3R vs per-scene Adam (3DGS): held-out PSNR/SSIM, render+backward passes, wall time.

    python bench/g3r.py --root data/zv-eval --checkpoint runs/g3r/latest.pt
    python bench/g3r.py --root data/zv-eval --checkpoint runs/g3r/latest.pt --shapes 16 \\
        --adam-steps 24,100,1000 --perceptual-weights vgg16.pth --json g3r.json

Protocol. For each of the first --shapes shapes of --root (a views root rendered with at
least --source-views + --heldout-views views per shape, e.g. `zeroverse render --views 40`),
ViewDataset picks that many views (seeded by --seed): the first --source-views are the source
views, the rest are held out. The source views' depth maps build ONE initial state per shape
(g3r.init_from_depth, seeded), shared by every method:
  init       the scaffold's Gaussians (g3r.activate of the explicit channels), not optimised
  G3R T      the checkpoint's learned optimizer, T updates (its T = 24, and its turbo T = 6)
  Adam N     baseline_3dgs.optimize_adam: Adam on the Gaussians, 3DGS learning rates, N steps
Every method sees only the source views; all are scored on the held-out views only: PSNR,
SSIM, and LPIPS when --perceptual-weights is given (skipped otherwise, never random weights).
Passes = render + backward passes over all source views (one per G3R update or Adam step).
Time = wall seconds per shape of the method alone (CUDA-synchronised, after a warm-up shape);
the init row's time is the shared initialisation's.

On CPU it runs tiny sizes to exercise the script (a synthetic root and a briefly trained tiny
G3R when --root / --checkpoint are not given): absolute times there are meaningless, and a
model trained for seconds says nothing about G3R's quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zeroverse.lrm import g3r, losses, metrics  # noqa: E402
from zeroverse.lrm.baseline_3dgs import AdamConfig, optimize_adam  # noqa: E402
from zeroverse.lrm.g3r_train import G3RTrainConfig, load_g3r, train_g3r  # noqa: E402
from zeroverse.lrm.run import resolve_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_defaults(args, workdir: Path) -> None:
    """Tiny synthetic root and a briefly trained tiny model when none are given (CPU smoke)."""
    if args.root is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic_views import write_view_shards

        args.root = workdir / "views"
        n = args.source_views + args.heldout_views
        write_view_shards(args.root, num_shapes=max(args.shapes, 4), views_per_shape=n,
                          resolution=args.image_size, seed=args.seed)
        print(f"no --root: wrote {max(args.shapes, 4)} synthetic shapes to {args.root}")
    if args.checkpoint is None:
        out = workdir / "g3r"
        steps = args.train_steps or 20
        cfg = G3RTrainConfig(root=str(args.root), out=str(out), preset="tiny", steps=steps,
                             batch_size=2, lr=3e-3, warmup_steps=3,
                             num_input_views=args.source_views,
                             num_target_views=args.heldout_views, image_size=args.image_size,
                             unroll_steps=6, turbo_steps=3, unroll_warmup=steps // 2,
                             truncate_every=3, log_every=steps, image_every=10**9,
                             ckpt_every=steps, num_workers=0, seed=args.seed,
                             device=args.device)
        logging.getLogger("zeroverse.lrm.g3r_train").setLevel(logging.ERROR)
        t0 = time.perf_counter()
        train_g3r(cfg)
        args.checkpoint = out / "latest.pt"
        print(f"no --checkpoint: trained a tiny G3R for {steps} iterations "
              f"({time.perf_counter() - t0:.0f} s; T = 6, turbo 3) -> {args.checkpoint}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="views root (ViewDataset)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="G3R checkpoint (latest.pt)")
    ap.add_argument("--shapes", type=int, default=None,
                    help="shapes scored; default 8 (CUDA), 2 (CPU)")
    ap.add_argument("--source-views", type=int, default=None, help="default 32 (CUDA), 8 (CPU)")
    ap.add_argument("--heldout-views", type=int, default=None, help="default 8 (CUDA), 4 (CPU)")
    ap.add_argument("--image-size", type=int, default=None, help="default 256 (CUDA), 32 (CPU)")
    ap.add_argument("--adam-steps", default=None,
                    help="comma list; default 24,100,1000 (CUDA), 24,100 (CPU)")
    ap.add_argument("--adam-lr-scale", type=float, default=1.0, help="multiplies the 3DGS learning rates")
    ap.add_argument("--g3r-steps", default=None, help="comma list of T; default the model's T and turbo T")
    ap.add_argument("--num-points", type=int, default=None,
                    help="Gaussians per shape; default the model's")
    ap.add_argument("--perceptual-weights", default=None,
                    help="VGG16 state dict: LPIPS column and the perceptual term of Adam's loss")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="without --checkpoint: train a G3R for this many iterations first (CPU default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto", choices=["auto", "gsplat", "torch"])
    ap.add_argument("--json", type=Path, default=None, help="also write per-shape results here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    args.device = str(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        from zeroverse.lrm.rasterizer import gsplat_available

        renderer = "gsplat" if gsplat_available() and args.backend != "torch" else "torch"
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, renderer {renderer}")
    else:
        print("device: CPU. Tiny sizes to exercise the script: absolute times on CPU are "
              "meaningless, and so is a G3R trained for seconds.")
    big = device.type == "cuda"
    args.shapes = args.shapes or (8 if big else 2)
    args.source_views = args.source_views or (32 if big else 8)
    args.heldout_views = args.heldout_views or (8 if big else 4)
    args.image_size = args.image_size or (256 if big else 32)
    adam_steps = [int(s) for s in (args.adam_steps or ("24,100,1000" if big else "24,100")).split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="bench-g3r-"))
    if big and args.checkpoint is None and args.train_steps is None:
        print("--checkpoint is required on CUDA (or --train-steps N to train one here first)")
        return 2
    _cpu_defaults(args, workdir)

    from zeroverse.data import ViewDataset

    model, mcfg, _ = load_g3r(args.checkpoint)
    if args.num_points:
        mcfg = g3r.G3RConfig.from_dict({**mcfg.to_dict(), "num_points": args.num_points})
    model = model.to(device)
    g3r_steps = ([int(s) for s in args.g3r_steps.split(",")] if args.g3r_steps
                 else [mcfg.steps, mcfg.turbo_steps])
    perceptual = None
    if args.perceptual_weights:
        perceptual = losses.PerceptualLoss(args.perceptual_weights).to(device)
    else:
        print("LPIPS skipped: no --perceptual-weights (pretrained VGG16 weights are never "
              "replaced by random ones); Adam's loss uses SSIM instead")
    ds = ViewDataset(args.root, num_input_views=args.source_views,
                     num_target_views=args.heldout_views, resolution=args.image_size, seed=args.seed)
    n_shapes = min(args.shapes, len(ds))
    print(f"{n_shapes} shapes of {args.root}: {args.source_views} source + {args.heldout_views} "
          f"held-out views at {args.image_size}², {mcfg.num_points} Gaussians, "
          f"G3R {model.num_params() / 1e6:.3g}M params")

    methods = ([("init", 0)] + [("G3R", T) for T in g3r_steps] + [("Adam", N) for N in adam_steps])
    rows: dict[tuple[str, int], list[dict]] = {m: [] for m in methods}

    def run_shape(i: int, record: bool, adam_cap: int | None = None) -> None:
        item = ds[i]
        b = {k: (v[None].to(device) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
        vs = args.source_views
        src = {k: b[k][:, :vs].float() for k in ("images", "depths", "alphas", "c2w", "K")}
        held = {k: b[k][:, vs:].float() for k in ("images", "c2w", "K")}
        bg = b["background"].float()
        H, W = src["images"].shape[-2:]

        def score(gauss, seconds, passes, method):
            with torch.no_grad():
                pred = g3r.images_of(g3r.render(gauss, held["c2w"], held["K"], H, W, bg, args.backend))
                out = {"shape_id": int(item["shape_id"]), "seconds": seconds, "passes": passes,
                       "psnr": float(metrics.psnr(pred, held["images"]).mean()),
                       "ssim": float(metrics.ssim(pred, held["images"]).mean())}
                lp = metrics.lpips(pred, held["images"], perceptual)
                out["lpips"] = None if lp is None else float(lp.mean())
            if record:
                rows[method].append(out)

        _sync(device)
        t0 = time.perf_counter()
        state = g3r.init_batch_from_depth(src["images"], src["depths"], src["c2w"], src["K"], mcfg,
                                          torch.Generator().manual_seed(args.seed), src["alphas"])
        _sync(device)
        # The scaffold itself (what Adam starts from); G3R's decoder is part of G3R.
        score(g3r.activate(state[..., :g3r.EXPLICIT_CHANNELS], mcfg), time.perf_counter() - t0, 0,
              ("init", 0))
        for T in g3r_steps:
            _sync(device)
            t0 = time.perf_counter()
            res = g3r.refine(model, state, src["images"], src["c2w"], src["K"], steps=T,
                             background=bg, backend=args.backend, final_loss=False)
            _sync(device)
            score(res.gaussians, time.perf_counter() - t0, res.render_passes, ("G3R", T))
        for N in adam_steps:
            n = min(N, adam_cap) if adam_cap else N
            _sync(device)
            t0 = time.perf_counter()
            res = optimize_adam(state[..., :g3r.EXPLICIT_CHANNELS], src["images"], src["c2w"],
                                src["K"], AdamConfig(steps=n, lr_scale=args.adam_lr_scale),
                                g3r_cfg=mcfg, generator=torch.Generator().manual_seed(args.seed),
                                background=bg, backend=args.backend, perceptual=perceptual)
            _sync(device)
            score(res.gaussians, time.perf_counter() - t0, res.render_passes, ("Adam", N))

    run_shape(0, record=False, adam_cap=3)  # warm-up: kernels, allocator, caches
    for i in range(n_shapes):
        run_shape(i, record=True)
        print(f"shape {i + 1}/{n_shapes} done", flush=True)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    print()
    print("| method | steps | render+bwd passes | PSNR ↑ | SSIM ↑ | LPIPS ↓ | s / shape |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for (name, steps) in methods:
        r = rows[(name, steps)]
        lp = mean([x["lpips"] for x in r])
        s = {"method": name, "steps": steps, "passes": mean([x["passes"] for x in r]),
             "psnr": mean([x["psnr"] for x in r]), "ssim": mean([x["ssim"] for x in r]),
             "lpips": lp, "seconds": mean([x["seconds"] for x in r])}
        summary.append(s)
        label = {"init": "init (depth scaffold)", "G3R": "G3R", "Adam": "Adam (3DGS)"}[name]
        if name == "G3R" and steps == mcfg.turbo_steps and steps != mcfg.steps:
            label = "G3R turbo"
        print(f"| {label} | {steps} | {s['passes']:.0f} | {s['psnr']:.2f} | {s['ssim']:.4f} "
              f"| {'skipped' if lp is None else f'{lp:.4f}'} | {s['seconds']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "per_shape": {
            f"{k[0]}-{k[1]}": v for k, v in rows.items()}, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
