"""Train GS-LRM on rendered views; reads top to bottom (nanoGPT style).

    cfg = TrainConfig(root="data/zeroverse", out="runs/gslrm-small", preset="small", steps=80_000)
    result = train(cfg)                # single process
    # torchrun --nproc_per_node=8 -m ...   (WORLD_SIZE > 1: DDP, one process per GPU)

Each batch follows the dataset contract (zeroverse.data.ViewDataset, collated):
`images` [B, V, 3, H, W] in [0, 1] on white, `c2w` [B, V, 4, 4], `K` [B, V, 3, 3], ...; the
first `num_input_views` views go into the model, the others are rendered and supervised.

Loss: MSE + lpips_weight * perceptual (VGG16, weights from `perceptual_weights`), or, when no
weights are given, MSE + ssim_weight * (1 - SSIM) with a warning: random VGG weights are never
used. Outputs in `out`: run.json (configs), metrics.jsonl (always), TensorBoard events (when
tensorboard is installed), images/step-*.png (inputs / targets / predictions),
ckpt-<step>.pt and latest.pt (weights_only-loadable; `resume=True` continues from latest.pt
and reproduces the same next-step loss on CPU). What a run is beyond the model (run folder,
checkpoints, data order, logging) lives in run.py, shared with G3R; the config in config.py.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import losses, metrics
from .config import TrainConfig
from .gslrm import GSLRM, RUNTIME_FIELDS, GSLRMConfig
from .run import (
    RunLog,
    RunSampler,
    TrainResult,
    check_fits,
    check_same_config,
    clip_grad,
    is_due,
    loader_batches,
    perceptual_loss,
    prepare_run,
    resume_run,
    save_image_grid,
    save_run,
    setup_distributed,
    view_dataset,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> TrainResult:
    ctx = setup_distributed(cfg.device)
    device, rank, world, is_main = ctx.device, ctx.rank, ctx.world, ctx.is_main
    if dataset is None:
        dataset, collate_fn = view_dataset(cfg)  # before the run folder: a bad root leaves none
    else:
        collate_fn = None  # torch's default_collate for an injected dataset
    image_size = cfg.image_size or resolve_image_size(dataset)
    # Same seed on every rank: identical initial weights (DDP also broadcasts them).
    out, latest = prepare_run(cfg, device, is_main)
    model_cfg = GSLRMConfig.preset(
        cfg.preset,
        image_size=image_size,
        num_input_views=cfg.num_input_views,
        grad_checkpointing=cfg.grad_checkpointing,
        attention=cfg.attention,
        **cfg.model_options,
    )
    model = GSLRM(model_cfg).to(device)
    optimizer = _build_optimizer(model, cfg, device)
    clock = RunClock(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, clock.lr_factor)

    perceptual = perceptual_loss(cfg, device, warn=is_main)
    step = resume_run(cfg, latest, model, optimizer, scheduler, is_main,
                      check=lambda ckpt: _check_same_model(ckpt["model_config"], model_cfg, latest))
    if cfg.compile and device.type == "cuda":
        model.compile_blocks()

    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    batches, data_source = _batch_source(dataset, cfg, rank, world, step, device, collate_fn, is_main)

    runlog = RunLog(out, cfg.steps, step, enabled=is_main)
    runlog.write_run_info({
        "train_config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "num_params": model.num_params(),
        "perceptual": perceptual is not None,
        "world_size": world,
        "device": str(device),
        "data": data_source,
        "torch": torch.__version__,
        "start_step": step,
    })
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and device.type == "cuda") else nullcontext()
    background = torch.ones(3, device=device)  # the dataset composites on white

    result = TrainResult(step=step, metrics_path=runlog.metrics_path, perceptual=perceptual is not None)
    # Scalars stay on the device and are read once per log window: no host sync per step.
    window: list[Tensor] = []
    names: list[str] = []
    model.train()
    time_up = False
    while step < cfg.steps and not time_up:
        p = clock.progress(step)
        batch = runlog.next_batch(batches, device)
        size = cfg.low_res if (cfg.low_res and cfg.low_res < image_size and p < cfg.low_res_until) else image_size
        batch = downsample_batch(batch, size)
        inputs, targets = _split_views(batch, cfg.num_input_views, model_cfg.patch_size)

        with amp:
            gaussians = forward_step(ddp_model, model, inputs, is_main)
        seen = _concat_views(inputs, targets) if cfg.supervise_inputs else targets
        H, W = seen["images"].shape[-2:]
        render = GSLRM.render(gaussians, seen["c2w"], seen["K"], H, W, background, with_depth=False)
        pred = render.rgb.permute(0, 1, 4, 2, 3)  # [B, Vr, 3, H, W]
        target = seen["images"]
        terms = {"mse": losses.mse(pred, target)}
        if perceptual is not None:
            with amp:
                terms["perceptual"] = perceptual(pred, target)
            loss = terms["mse"] + cfg.lpips_weight * terms["perceptual"].float()
        else:
            terms["ssim"] = losses.ssim(pred, target)
            loss = terms["mse"] + cfg.ssim_weight * (1 - terms["ssim"])
        geometry = losses.geometry_terms(gaussians, render, inputs, seen,
                                         cfg.depth_weight > 0, cfg.alpha_weight > 0)
        weights = {"depth": clock.depth_weight(p), "alpha": cfg.alpha_weight}
        for name, value in geometry.items():
            terms[name] = value
            loss = loss + weights[name] * value

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad(model, cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
        # A non-finite gradient skips the update inside the fused optimizer (no host sync): one
        # bad batch should not end a long run; the schedule still advances.
        bad = (~torch.isfinite(grad_norm)).float()
        optimizer.found_inf = bad
        optimizer.step()
        scheduler.step()
        step += 1

        with torch.no_grad():
            named = {"loss": loss, "psnr": metrics.psnr(pred, target).mean(), "grad_norm": grad_norm,
                     "skipped": bad, **terms}
            names = list(named)
            window.append(torch.stack([v.detach().float() for v in named.values()]))
        runlog.stepped()

        if is_due(step, cfg.log_every, cfg):
            # The one sync of the window: every scalar of every step, and the clock for all ranks.
            per_step = torch.stack(window).cpu()
            elapsed_run = clock.sync_elapsed(device, world)
            time_up = cfg.max_minutes is not None and elapsed_run > cfg.max_minutes * 60
            values = dict(zip(names, per_step.mean(0).tolist()))
            skipped = int(per_step[:, names.index("skipped")].sum().item())
            result.skipped_steps += skipped
            if skipped and is_main:
                log.warning("%d update(s) skipped for a non-finite gradient norm before step %d", skipped, step)
            result.losses.extend(per_step[:, 0].tolist())
            record = _reduce_mean(values, world, device)
            record.update(step=step, lr=lr, resolution=size, depth_weight=weights["depth"], progress=p,
                          **runlog.window_rates(cfg.batch_size * world))
            runlog.write(record)
            if is_main:
                runlog.bar.set_postfix(loss=f"{values['loss']:.4f}", res=size)
            window = []
        result.step = step

        if is_main and (step == 1 or is_due(step, cfg.image_every, cfg, time_up)):
            save_image_grid(out / "images" / f"step-{step:07d}.png",
                            inputs["images"], target, pred.detach())

        if is_due(step, cfg.ckpt_every, cfg, time_up):
            if is_main:
                result.last_checkpoint = save_run(cfg, out, step, model, optimizer, scheduler, model_cfg)
            if world > 1:
                dist.barrier()

    if window:  # steps after the last log window
        per_step = torch.stack(window).cpu()
        result.losses.extend(per_step[:, 0].tolist())
        result.skipped_steps += int(per_step[:, names.index("skipped")].sum().item())
    runlog.close()
    if ctx.owns_group:
        dist.destroy_process_group()
    return result


# --------------------------------------------------------------------------------------------
# The recipe's schedules and batch shaping
# --------------------------------------------------------------------------------------------


def forward_step(ddp_model: nn.Module, model: GSLRM, inputs: dict, is_main: bool):
    """The model's forward; if torch.compile fails on this machine (no compiler, an unsupported
    op), the blocks fall back to eager mode with a warning instead of ending the run."""
    try:
        return ddp_model(inputs["images"], inputs["c2w"], inputs["K"])
    except Exception as err:
        if not model.blocks_compiled:
            raise
        if is_main:
            log.warning("torch.compile failed (%s: %s); training on without it", type(err).__name__, str(err)[:300])
        model.uncompile_blocks()
        return ddp_model(inputs["images"], inputs["c2w"], inputs["K"])


class RunClock:
    """Progress of a run in [0, 1] and what follows from it: the LR factor (linear warm-up,
    then cosine to 0), the depth weight (cosine from depth_weight to depth_weight_end over the
    first depth_decay) and, in the trainer, the resolution curriculum.

    schedule="steps": progress = step / steps (bit-reproducible, resumable).
    schedule="time": progress = max(step / steps, elapsed / max_minutes), the elapsed time
    agreed by all ranks at each log step (`sync_elapsed`), so DDP ranks never disagree."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.started = time.perf_counter()
        self.elapsed = 0.0  # seconds, as of the last sync

    def progress(self, step: int) -> float:
        p = step / self.cfg.steps
        if self.cfg.schedule == "time":
            p = max(p, self.elapsed / (self.cfg.max_minutes * 60))
        return min(1.0, p)

    def sync_elapsed(self, device: torch.device, world: int) -> float:
        elapsed = time.perf_counter() - self.started
        if world > 1:
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            elapsed = float(t.item())
        self.elapsed = elapsed
        return elapsed

    def lr_factor(self, step: int) -> float:
        warmup = self.cfg.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        p_warm = warmup / self.cfg.steps
        p = max(self.progress(step), p_warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (p - p_warm) / max(1e-9, 1 - p_warm))))

    def depth_weight(self, progress: float) -> float:
        cfg = self.cfg
        if cfg.depth_decay <= 0:
            return cfg.depth_weight_end
        f = 0.5 * (1 + math.cos(math.pi * min(1.0, progress / cfg.depth_decay)))
        return cfg.depth_weight_end + (cfg.depth_weight - cfg.depth_weight_end) * f


def downsample_batch(batch: dict, size: int) -> dict:
    """The batch at size x size (area filter; cameras scaled exactly, see data.decode), or the
    batch itself when it already is. Images are composited, so area-averaging them equals
    compositing the averaged premultiplied colour; depth goes through the loader's own
    edge-preserving resize (data.decode.resize_geometry), never blending across a silhouette."""
    H, W = batch["images"].shape[-2:]
    if (H, W) == (size, size):
        return batch
    if H % size or W % size:
        raise ValueError(f"cannot downsample {H}x{W} views to {size}²: use a size that divides both")
    from zeroverse.data.decode import resize_geometry, scale_intrinsics

    def area(x: Tensor) -> Tensor:  # [B, V, C, H, W]
        B, V = x.shape[:2]
        return F.avg_pool2d(x.flatten(0, 1), (H // size, W // size)).unflatten(0, (B, V))

    out = dict(batch)
    out["images"] = area(batch["images"])
    if "alphas" in batch:
        out["alphas"] = area(batch["alphas"])
    if "depths" in batch:
        B, V = batch["depths"].shape[:2]
        depth, _ = resize_geometry(batch["depths"].flatten(0, 1), (size, size))
        out["depths"] = depth.unflatten(0, (B, V))
    out["K"] = scale_intrinsics(batch["K"], size / W, size / H)
    return out


def _concat_views(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]], dim=1) for k in a if k in b}


def resolve_image_size(dataset: Dataset) -> int:
    """The stored resolution of a ViewDataset's views (its first shape), for image_size=None."""
    if not getattr(dataset, "entries", None):
        raise ValueError("image_size=None needs a ViewDataset to read the views' resolution; pass image_size")
    from zeroverse.data.resident import stored_size

    H, W = stored_size(dataset)
    if H != W:
        raise ValueError(f"views are {W}x{H}; GS-LRM trains on square views: pass image_size")
    return H


def _batch_source(dataset: Dataset, cfg: TrainConfig, rank: int, world: int, step: int,
                  device: torch.device, collate_fn, is_main: bool) -> tuple[Iterator[dict], str]:
    """Endless batches and a word on where they come from: GPU-resident views (data_on_gpu) or
    a DataLoader. Both give the same batch k for (seed, k) whatever `step` is."""
    use_resident = False
    if cfg.data_on_gpu != "off" and hasattr(dataset, "entries") and device.type == "cuda":
        from zeroverse.data.resident import resident_bytes

        need = resident_bytes(dataset)
        free, _ = torch.cuda.mem_get_info(device)
        use_resident = cfg.data_on_gpu == "on" or need < free // 2
        if is_main and cfg.data_on_gpu == "auto":
            log.info("views take %.1f GB decoded, %.1f GB GPU memory free: %s", need / 1e9, free / 1e9,
                     "resident on the GPU" if use_resident else "DataLoader")
    elif cfg.data_on_gpu == "on":
        if not hasattr(dataset, "entries"):
            raise ValueError("data_on_gpu='on' needs a ViewDataset (a dataset root)")
        use_resident = True  # e.g. tests on CPU: "resident" in host memory
    if use_resident:
        from zeroverse.data.resident import ResidentViews

        views = ResidentViews(dataset, device=device, num_workers=cfg.num_workers, progress=is_main)
        return _resident_batches(views, dataset, cfg, rank, world, step), f"resident ({views.nbytes / 1e9:.2f} GB on {device})"
    return loader_batches(dataset, cfg, rank, world, step, pin=device.type == "cuda", collate_fn=collate_fn), "DataLoader"


def _resident_batches(views, dataset, cfg: TrainConfig, rank: int, world: int, step: int) -> Iterator[dict]:
    n = check_fits(dataset, cfg.batch_size, world)
    keys = iter(RunSampler(n, cfg.seed, rank, world, cfg.batch_size, step))
    while True:
        yield views.batch([next(keys) for _ in range(cfg.batch_size)])


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _build_optimizer(model: GSLRM, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms (1-D weights) or the patch embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.startswith("patch_embed") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused on CPU and CUDA alike: its `found_inf` skips a non-finite update on the device.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)


def _check_same_model(saved: dict, cfg: GSLRMConfig, path: Path) -> None:
    """Refuses v1 checkpoints (another parameterisation) and other model configs."""
    try:
        GSLRMConfig.from_dict(saved)  # refuses other parameterisation versions by name
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    check_same_config(saved, cfg.to_dict(), RUNTIME_FIELDS, path)


def _split_views(batch: dict, num_inputs: int, patch: int) -> tuple[dict, dict]:
    for key in ("images", "c2w", "K"):
        if key not in batch:
            raise ValueError(f"batch lacks {key!r}; it has {sorted(batch)}")
    images = batch["images"]
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"batch['images'] must be [B, V, 3, H, W], got {tuple(images.shape)}")
    V, H, W = images.shape[1], images.shape[-2], images.shape[-1]
    if V <= num_inputs:
        raise ValueError(f"batch has {V} views; need num_input_views={num_inputs} plus targets")
    if H % patch or W % patch:
        raise ValueError(f"images are {H}x{W}; both must be multiples of patch_size {patch}")
    keys = [k for k in ("images", "c2w", "K", "depths", "alphas") if k in batch]
    inputs = {k: batch[k][:, :num_inputs].float() for k in keys}
    targets = {k: batch[k][:, num_inputs:].float() for k in keys}
    return inputs, targets


def _reduce_mean(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world <= 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}
