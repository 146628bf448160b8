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
and reproduces the same next-step loss on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import losses, metrics
from .checkpoint import load_checkpoint, rng_state, save_training_checkpoint, set_rng_state
from .gslrm import GSLRM, PRESETS, RUNTIME_FIELDS, GSLRMConfig

log = logging.getLogger(__name__)

MODELS = ("gs-lrm",)


@dataclass(frozen=True)
class TrainConfig:
    root: str  # dataset root (ViewDataset); unused when a dataset object is passed to train()
    out: str  # run folder
    model: str = "gs-lrm"
    preset: str = "small"  # GS-LRM size: tiny | small | base (gslrm.PRESETS)
    # GSLRMConfig fields over the preset's, e.g. {"distance": "camera", "qk_norm": False}
    # (ablations of the parameterisation; train-lrm --model-option KEY=VALUE).
    model_options: dict = field(default_factory=dict)
    steps: int = 100_000
    batch_size: int = 8  # per process
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 2_000
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    bf16: bool = True  # autocast the transformer to bf16 (CUDA only; rendering stays fp32)
    grad_checkpointing: bool = False
    attention: str = "auto"  # SDPA kernel preference (gslrm.ATTENTION_BACKENDS), speed only
    num_input_views: int = 4
    num_target_views: int = 4
    image_size: int | None = None  # None: the views' stored resolution (resolve_image_size)
    # Resolution curriculum (GS-LRM trains low resolution first): until `low_res_until` of the
    # run (by progress, see `schedule`) batches are downsampled on the fly to `low_res`, about
    # 4x cheaper per step at 128² vs 256². None or >= image_size: full resolution throughout.
    low_res: int | None = 128
    low_res_until: float = 0.7
    # Render and supervise the input views as well as the novel ones (GS-LRM-style).
    supervise_inputs: bool = True
    # Input cameras: "random" views, or "mixed": a `layout_share` of the samples take the views
    # a random rig rendered in the evaluation layout (RigConfig.layout_views) as inputs; shapes
    # without such views stay random. Held-out evaluation stays on its own rigs.
    view_sampling: str = "mixed"
    layout_share: float = 0.25
    # "steps": progress (LR cosine, curriculum, depth schedule) = step / steps. "time": with
    # max_minutes, progress = max(step / steps, elapsed / max_minutes), so a run bounded by a
    # machine lease still decays its LR and reaches full resolution (not bit-reproducible; a
    # resumed run's clock starts again at its own start: use "steps" for runs that resume).
    schedule: str = "steps"
    compile: bool = True  # torch.compile the transformer blocks (CUDA only)
    # Decode the whole set once into GPU memory and gather batches there (zeroverse.data.
    # resident): "auto" when it fits in half the free GPU memory, "on", "off" (DataLoader).
    data_on_gpu: str = "auto"
    log_every: int = 10
    image_every: int = 1_000
    ckpt_every: int = 5_000
    seed: int = 0
    resume: bool = False
    perceptual_weights: str | None = None  # VGG16 state dict (see losses.PerceptualLoss)
    lpips_weight: float = 0.5
    ssim_weight: float = 0.2  # used only when there are no perceptual weights
    # Geometry supervision from the renders' own depth and alpha (synthetic data carries both;
    # evaluation never uses them). depth: L1 between each input pixel's predicted distance along
    # its ray and the true one, on covered pixels; alpha: MSE between the rendered and the true
    # coverage of the rendered views. They teach where surfaces are far sooner than colour alone
    # (a batch without depths/alphas skips the term). 0 disables. The depth weight is strong
    # early and decays (cosine) to depth_weight_end over the first depth_decay of the run.
    depth_weight: float = 1.0
    depth_weight_end: float = 0.1
    depth_decay: float = 0.5
    alpha_weight: float = 0.1
    num_workers: int = 4
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: the local rank's GPU)
    # Stop (with a checkpoint) after this many minutes even if `steps` is not reached: for runs
    # that must fit a fixed machine lease. Keep `steps` near what fits so the cosine decays.
    max_minutes: float | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is not trained here; choose one of {MODELS}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} unknown; choose one of {sorted(PRESETS)}")
        for name in ("steps", "batch_size", "num_input_views", "num_target_views",
                     "log_every", "image_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("image_size", "low_res"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)}")
        for name in ("low_res_until", "layout_share", "depth_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.view_sampling not in ("random", "mixed"):
            raise ValueError(f"view_sampling must be 'random' or 'mixed', got {self.view_sampling!r}")
        if self.schedule not in ("steps", "time"):
            raise ValueError(f"schedule must be 'steps' or 'time', got {self.schedule!r}")
        if self.schedule == "time" and self.max_minutes is None:
            raise ValueError("schedule='time' follows the clock of max_minutes: set max_minutes too")
        if self.data_on_gpu not in ("auto", "on", "off"):
            raise ValueError(f"data_on_gpu must be 'auto', 'on' or 'off', got {self.data_on_gpu!r}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("warmup_steps and num_workers must be >= 0")
        for name in ("lpips_weight", "ssim_weight", "depth_weight", "depth_weight_end", "alpha_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        from dataclasses import fields as _fields

        known = {f.name for f in _fields(GSLRMConfig)} - {"image_size", "num_input_views", "param_version"}
        unknown = set(self.model_options) - known
        if unknown:
            raise ValueError(f"model_options {sorted(unknown)} are not GS-LRM settings; choose from {sorted(known)}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two floats, got {self.betas}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class TrainResult:
    step: int  # the step the run reached
    losses: list[float] = field(default_factory=list)  # per step run by this call
    last_checkpoint: Path | None = None
    metrics_path: Path | None = None
    perceptual: bool = False  # whether the perceptual term was used
    skipped_steps: int = 0  # updates skipped for a non-finite gradient


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> TrainResult:
    ctx = _setup_distributed(cfg.device)
    device, rank, world = ctx["device"], ctx["rank"], ctx["world"]
    is_main = rank == 0
    if dataset is None:
        dataset, collate_fn = _view_dataset(cfg)  # before the run folder: a bad root leaves none
    else:
        collate_fn = None  # torch's default_collate for an injected dataset
    image_size = cfg.image_size or resolve_image_size(dataset)
    # Same seed on every rank: identical initial weights (DDP also broadcasts them).
    out, latest = _prepare_run(cfg, device, is_main)
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

    perceptual = _perceptual_loss(cfg, device, warn=is_main)
    step = _resume(cfg, latest, model, optimizer, scheduler, is_main,
                   check=lambda ckpt: _check_same_model(ckpt["model_config"], model_cfg, latest))
    if cfg.compile and device.type == "cuda":
        model.compile_blocks()

    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    batches, data_source = _batch_source(dataset, cfg, rank, world, step, device, collate_fn, is_main)

    writer = _tensorboard(out) if is_main else None
    metrics_path = out / "metrics.jsonl"
    if is_main:
        run_info = {
            "train_config": cfg.to_dict(),
            "model_config": model_cfg.to_dict(),
            "num_params": model.num_params(),
            "perceptual": perceptual is not None,
            "world_size": world,
            "device": str(device),
            "data": data_source,
            "torch": torch.__version__,
            "start_step": step,
        }
        (out / "run.json").write_text(json.dumps(run_info, indent=2))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and device.type == "cuda") else nullcontext()
    background = torch.ones(3, device=device)  # the dataset composites on white

    result = TrainResult(step=step, metrics_path=metrics_path, perceptual=perceptual is not None)
    # Scalars stay on the device and are read once per log window: no host sync per step.
    window: list[Tensor] = []
    names: list[str] = []
    t_window, data_time, n_window = time.perf_counter(), 0.0, 0
    progress = _progress(cfg.steps, step, disable=not is_main)
    model.train()
    time_up = False
    while step < cfg.steps and not time_up:
        p = clock.progress(step)
        t0 = time.perf_counter()
        batch = _to_device(next(batches), device)
        data_time += time.perf_counter() - t0
        size = cfg.low_res if (cfg.low_res and cfg.low_res < image_size and p < cfg.low_res_until) else image_size
        batch = downsample_batch(batch, size)
        inputs, targets = _split_views(batch, cfg.num_input_views, model_cfg.patch_size)

        with amp:
            gaussians = _forward(ddp_model, model, inputs, is_main)
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
        grad_norm = _clip_grad(model, cfg.grad_clip)
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
        n_window += 1
        progress.update(1)

        if step % cfg.log_every == 0 or step == cfg.steps:
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
            elapsed = time.perf_counter() - t_window
            record.update(
                step=step,
                lr=lr,
                resolution=size,
                depth_weight=weights["depth"],
                progress=p,
                step_time=elapsed / n_window,
                data_time=data_time / n_window,
                samples_per_s=n_window * cfg.batch_size * world / max(elapsed, 1e-9),
            )
            if is_main:
                _write_metrics(metrics_path, writer, record)
                progress.set_postfix(loss=f"{values['loss']:.4f}", res=size)
            window, t_window, data_time, n_window = [], time.perf_counter(), 0.0, 0
        result.step = step

        if is_main and (step == 1 or step % cfg.image_every == 0 or step == cfg.steps or time_up):
            save_image_grid(out / "images" / f"step-{step:07d}.png",
                            inputs["images"], target, pred.detach())

        if step % cfg.ckpt_every == 0 or step == cfg.steps or time_up:
            if is_main:
                result.last_checkpoint = _save(cfg, out, step, model, optimizer, scheduler, model_cfg)
            if world > 1:
                dist.barrier()

    if window:  # steps after the last log window
        per_step = torch.stack(window).cpu()
        result.losses.extend(per_step[:, 0].tolist())
        result.skipped_steps += int(per_step[:, names.index("skipped")].sum().item())
    progress.close()
    if writer is not None:
        writer.close()
    if ctx["owns_group"]:
        dist.destroy_process_group()
    return result


# --------------------------------------------------------------------------------------------
# The recipe's schedules and batch shaping
# --------------------------------------------------------------------------------------------


def _forward(ddp_model: nn.Module, model: GSLRM, inputs: dict, is_main: bool):
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
    return _batches(dataset, cfg, rank, world, step, pin=device.type == "cuda", collate_fn=collate_fn), "DataLoader"


def _resident_batches(views, dataset, cfg: TrainConfig, rank: int, world: int, step: int) -> Iterator[dict]:
    n = _check_fits(dataset, cfg, world)
    keys = iter(RunSampler(n, cfg.seed, rank, world, cfg.batch_size, step))
    while True:
        yield views.batch([next(keys) for _ in range(cfg.batch_size)])


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _prepare_run(cfg, device: torch.device, is_main: bool = True) -> tuple[Path, Path]:
    """The run folder (refusing to overwrite one unless resuming), TF32 on CUDA, and every RNG
    seeded from cfg.seed. Shared by the GS-LRM and G3R trainers. Returns (out, out/latest.pt)."""
    out = Path(cfg.out)
    latest = out / "latest.pt"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if latest.exists() and not cfg.resume:
        raise ValueError(f"{out} already holds checkpoints; pass resume=True or choose another out")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    return out, latest


def _perceptual_loss(cfg, device: torch.device, warn: bool = True):
    """The perceptual loss when cfg.perceptual_weights is given; otherwise None, with a warning
    (main process) that MSE + SSIM is used instead. Shared by the GS-LRM and G3R trainers."""
    if cfg.perceptual_weights:
        return losses.PerceptualLoss(cfg.perceptual_weights).to(device)
    if warn:
        log.warning(
            "perceptual loss skipped: no perceptual_weights given (pretrained VGG16 weights "
            "cannot be downloaded here and random ones are never used); training with "
            "MSE + %g * (1 - SSIM), and LPIPS will not be reported", cfg.ssim_weight,
        )
    return None


def _save(cfg, out: Path, step: int, model: nn.Module, optimizer, scheduler, model_cfg, **extra) -> Path:
    """ckpt-<step>.pt and latest.pt holding everything `_resume` restores. Shared by the GS-LRM
    and G3R trainers (`extra`: e.g. G3R's model_kind)."""
    state = {
        "step": step,
        **extra,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "model_config": model_cfg.to_dict(),
        "train_config": cfg.to_dict(),
        "zeroverse_version": _version(),
    }
    return save_training_checkpoint(state, out, step)


def _resume(cfg, latest: Path, model: nn.Module, optimizer, scheduler, is_main: bool, check) -> int:
    """With cfg.resume and `latest` present: weights, optimizer, schedule and RNG state from it
    (after `check(ckpt)` refuses another model's checkpoint); returns the step to continue from,
    0 otherwise. Shared by the GS-LRM and G3R trainers."""
    if not cfg.resume:
        return 0
    if not latest.exists():
        if is_main:
            log.info("resume=True but %s does not exist: starting from step 0", latest)
        return 0
    ckpt = load_checkpoint(latest, map_location="cpu")
    check(ckpt)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    step = int(ckpt["step"])
    if is_main:
        log.info("resumed from %s at step %d", latest, step)
    return step


def _setup_distributed(device_arg: str) -> dict[str, Any]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return {"device": _resolve_device(device_arg), "rank": 0, "world": 1, "owns_group": False}
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return {"device": device, "rank": rank, "world": world, "owns_group": owns}


def _resolve_device(device_arg: str) -> torch.device:
    if device_arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device_arg!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


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


def _lr_lambda(cfg: TrainConfig):
    """Linear warm-up to cfg.lr over warmup_steps, then cosine decay to 0 at cfg.steps."""
    warmup, total = cfg.warmup_steps, cfg.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _clip_grad(model: nn.Module, max_norm: float) -> Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def _check_same_model(saved: dict, cfg: GSLRMConfig, path: Path) -> None:
    try:
        GSLRMConfig.from_dict(saved)  # refuses other parameterisation versions by name
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    now = cfg.to_dict()
    # Runtime fields (gradient checkpointing, attention kernel) do not change the weights.
    diff = {k: (saved.get(k), v) for k, v in now.items()
            if k not in RUNTIME_FIELDS and saved.get(k) != v}
    if diff:
        raise ValueError(f"{path} was trained with a different model config (saved, now): {diff}")


def _view_dataset(cfg: TrainConfig):
    try:
        from zeroverse.data import ViewDataset, collate
    except ImportError as e:
        raise ImportError(
            "zeroverse.data.ViewDataset is needed to train from a dataset root; "
            "pass dataset=... to train() instead"
        ) from e
    dataset = ViewDataset(
        cfg.root,
        num_input_views=cfg.num_input_views,
        num_target_views=cfg.num_target_views,
        resolution=cfg.image_size,
        seed=cfg.seed,
        # G3R's config has neither: random views.
        view_sampling=getattr(cfg, "view_sampling", "random"),
        layout_share=getattr(cfg, "layout_share", 0.0),
    )
    return dataset, collate


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's share of a seeded permutation of the dataset for one epoch. Depends only on
    (seed, epoch, rank, world), so a resumed run sees the same samples in the same order as an
    uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)[: (n // world) * world]
    return perm[rank::world].tolist()


class RunSampler(Sampler[tuple[int, int]]):
    """Endless (epoch, index) pairs of one rank, from batch `step` on: epoch after epoch of
    `epoch_indices`, each cut to whole batches."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch_size: int, step: int):
        self.n, self.seed, self.rank, self.world, self.batch_size = n, seed, rank, world, batch_size
        self.per_epoch = (n // world) // batch_size  # batches per epoch
        self.step = step

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.step, self.per_epoch)
        while True:
            indices = epoch_indices(self.n, self.seed, epoch, self.rank, self.world)
            for i in indices[offset * self.batch_size: self.per_epoch * self.batch_size]:
                yield epoch, i
            epoch, offset = epoch + 1, 0


class EpochItems(Dataset):
    """`dataset[i]` as of epoch e for the key (e, i): the epoch travels with each index, so one
    long-lived DataLoader serves the whole run (its workers never restart at an epoch boundary,
    which stalled the H200 run for ~1.5 s every 125 steps: 10% of its time) and a dataset with
    `set_epoch` (ViewDataset: which views of each shape are used) still sees the right epoch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.has_epochs = hasattr(dataset, "set_epoch")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.has_epochs:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _worker_init(worker_id: int) -> None:
    # Each worker's torch seed comes from the loader's own generator; derive the others.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _check_fits(dataset: Dataset, cfg, world: int) -> int:
    """len(dataset), refusing one too small for a single batch per process."""
    n = len(dataset)
    if (n // world) // cfg.batch_size == 0:
        raise ValueError(
            f"dataset of {n} samples is too small for batch_size {cfg.batch_size} x {world} "
            "processes"
        )
    return n


def _batches(dataset: Dataset, cfg: TrainConfig, rank: int, world: int, step: int,
             pin: bool, collate_fn=None) -> Iterator[dict]:
    """Endless batches from one DataLoader; batch k of the run depends only on (seed, k),
    whatever `step` is (datasets must not draw from the workers' global RNGs)."""
    n = _check_fits(dataset, cfg, world)
    loader = DataLoader(
        EpochItems(dataset),
        batch_size=cfg.batch_size,
        sampler=RunSampler(n, cfg.seed, rank, world, cfg.batch_size, step),
        collate_fn=collate_fn,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=pin,
        worker_init_fn=_worker_init,
        # Own generator: worker seeds must not draw from (and shift) the global RNG.
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + step * 104_729 + rank),
    )
    yield from loader


def _to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device`; host tensors go through pinned memory so the copy never waits for
    the GPU to finish queued work (a pageable copy would: one host sync per batch)."""
    def move(v):
        if not isinstance(v, Tensor) or v.device == device:
            return v
        if device.type == "cuda" and v.device.type == "cpu" and not v.is_pinned():
            v = v.pin_memory()
        return v.to(device, non_blocking=True)

    return {k: move(v) for k, v in batch.items()}


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


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(out / "tb"))
    except Exception as e:  # tensorboard is optional; metrics.jsonl is always written
        log.info("TensorBoard unavailable (%s); metrics go to metrics.jsonl only", e)
        return None


def _write_metrics(path: Path, writer, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(f"train/{k}", v, record["step"])


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=disable, dynamic_ncols=True, desc="train")


def _version() -> str:
    """What checkpoints record: the package version plus the git commit (zeroverse.code_version),
    as shards and evaluation reports do."""
    try:
        from zeroverse import code_version

        return code_version()
    except Exception:  # noqa: BLE001
        return "unknown"


def save_image_grid(
    path: Path,
    inputs: Tensor,  # [B, Vin, 3, H, W]
    targets: Tensor,  # [B, Vt, 3, H, W]
    preds: Tensor,  # [B, Vt, 3, H, W]
    max_samples: int = 2,
) -> Path:
    """PNG with three rows per sample: input views, target views, predicted target views."""
    from PIL import Image

    B, Vin, _, H, W = inputs.shape
    cols = max(Vin, targets.shape[1])
    rows = []
    for b in range(min(B, max_samples)):
        for views in (inputs[b], targets[b], preds[b]):
            row = torch.ones(3, H, cols * W)
            for v in range(views.shape[0]):
                row[:, :, v * W:(v + 1) * W] = views[v].detach().float().cpu().clamp(0, 1)
            rows.append(row)
    grid = torch.cat(rows, dim=1)
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
