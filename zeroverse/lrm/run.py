"""What a training run is, whatever the model: the GS-LRM (train.py) and G3R (g3r_train.py)
trainers both build on this module, so they keep one behaviour (run folder, data order,
checkpoints, logging) and neither reaches into the other.

    setup_distributed    device, rank and world size (torchrun's environment, or one process)
    prepare_run          the run folder, TF32, every RNG seeded
    perceptual_loss      VGG16 perceptual loss or None (MSE + SSIM, with a warning)
    save_run / resume_run  ckpt-<step>.pt + latest.pt, and continuing from latest.pt
    warmup_cosine        linear warm-up then cosine LR factor
    view_dataset, loader_batches, RunSampler, EpochItems   batch k depends only on (seed, k)
    RunLog               run.json, metrics.jsonl, TensorBoard, progress bar, timing windows
    save_image_grid      inputs / targets / predictions PNG

Checkpoint keys are those `checkpoint.py` documents; old runs resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import losses
from .checkpoint import load_checkpoint, rng_state, save_training_checkpoint, set_rng_state
from .config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    step: int  # the step the run reached
    losses: list[float] = field(default_factory=list)  # per step run by this call
    last_checkpoint: Path | None = None
    metrics_path: Path | None = None
    perceptual: bool = False  # whether the perceptual term was used
    skipped_steps: int = 0  # updates skipped for a non-finite gradient


# --------------------------------------------------------------------------------------------
# Devices, run folder, losses, checkpoints, schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this run initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> Distributed:
    """One process, or torchrun's (WORLD_SIZE > 1): one GPU per local rank, NCCL (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(resolve_device(device_arg))
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
    return Distributed(device, rank, world, owns)


def resolve_device(device_arg: str | torch.device) -> torch.device:
    if str(device_arg) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device_arg)!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def prepare_run(cfg: RunConfig, device: torch.device, is_main: bool = True) -> tuple[Path, Path]:
    """The run folder (refusing to overwrite one unless resuming), TF32 on CUDA, and every RNG
    seeded from cfg.seed. Returns (out, out/latest.pt)."""
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


def perceptual_loss(cfg: RunConfig, device: torch.device, warn: bool = True):
    """The perceptual loss when cfg.perceptual_weights is given; otherwise None, with a warning
    (main process) that MSE + SSIM is used instead."""
    if cfg.perceptual_weights:
        return losses.PerceptualLoss(cfg.perceptual_weights).to(device)
    if warn:
        log.warning(
            "perceptual loss skipped: no perceptual_weights given (pretrained VGG16 weights "
            "cannot be downloaded here and random ones are never used); training with "
            "MSE + %g * (1 - SSIM), and LPIPS will not be reported", cfg.ssim_weight,
        )
    return None


def save_run(cfg: RunConfig, out: Path, step: int, model: nn.Module, optimizer, scheduler, model_cfg,
             **extra) -> Path:
    """ckpt-<step>.pt and latest.pt holding everything `resume_run` restores (`extra`: e.g.
    G3R's model_kind)."""
    state = {
        "step": step,
        **extra,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "model_config": model_cfg.to_dict(),
        "train_config": cfg.to_dict(),
        "zeroverse_version": version(),
    }
    return save_training_checkpoint(state, out, step)


def resume_run(cfg: RunConfig, latest: Path, model: nn.Module, optimizer, scheduler, is_main: bool,
               check: Callable[[dict], None]) -> int:
    """With cfg.resume and `latest` present: weights, optimizer, schedule and RNG state from it
    (after `check(ckpt)` refuses another model's checkpoint); returns the step to continue from,
    0 otherwise."""
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


def check_same_config(saved: dict, now: dict, runtime_fields, path: Path) -> None:
    """Refuses to resume a run whose model config differs; runtime fields (gradient
    checkpointing, attention kernel, chunk sizes) do not change the weights."""
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in runtime_fields and saved.get(k) != v}
    if diff:
        raise ValueError(f"{path} was trained with a different model config (saved, now): {diff}")


def warmup_cosine(cfg: RunConfig) -> Callable[[int], float]:
    """LR factor: linear warm-up to cfg.lr over warmup_steps, then cosine decay to 0 at cfg.steps."""
    warmup, total = cfg.warmup_steps, cfg.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def clip_grad(model: nn.Module, max_norm: float) -> Tensor:
    """The global gradient norm, clipped to max_norm when max_norm > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def version() -> str:
    """What checkpoints and reports record: the package version plus the git commit
    (zeroverse.code_version), as shards do."""
    try:
        from zeroverse import code_version

        return code_version()
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# Batches: batch k of a run depends only on (seed, k), so a resumed run sees the same data
# --------------------------------------------------------------------------------------------


def view_dataset(cfg: RunConfig):
    """(ViewDataset of cfg.root, its collate function)."""
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


def check_fits(dataset: Dataset, batch_size: int, world: int) -> int:
    """len(dataset), refusing one too small for a single batch per process."""
    n = len(dataset)
    if (n // world) // batch_size == 0:
        raise ValueError(
            f"dataset of {n} samples is too small for batch_size {batch_size} x {world} "
            "processes"
        )
    return n


def loader_batches(dataset: Dataset, cfg: RunConfig, rank: int, world: int, step: int,
                   pin: bool, collate_fn=None) -> Iterator[dict]:
    """Endless batches from one DataLoader; batch k of the run depends only on (seed, k),
    whatever `step` is (datasets must not draw from the workers' global RNGs)."""
    n = check_fits(dataset, cfg.batch_size, world)
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


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device`; host tensors go through pinned memory so the copy never waits for
    the GPU to finish queued work (a pageable copy would: one host sync per batch)."""
    def move(v):
        if not isinstance(v, Tensor) or v.device == device:
            return v
        if device.type == "cuda" and v.device.type == "cpu" and not v.is_pinned():
            v = v.pin_memory()
        return v.to(device, non_blocking=True)

    return {k: move(v) for k, v in batch.items()}


def is_due(step: int, every: int, cfg: RunConfig, time_up: bool = False) -> bool:
    """Whether a periodic action (log, image, checkpoint) runs after `step`: every `every`
    steps, and at the run's last step (its end or the time limit)."""
    return step % every == 0 or step == cfg.steps or time_up


# --------------------------------------------------------------------------------------------
# What a run writes: run.json, metrics.jsonl, TensorBoard, progress, image grids
# --------------------------------------------------------------------------------------------


class RunLog:
    """The main process's record of a run (other ranks pass enabled=False and write nothing):
    run.json, metrics.jsonl (always), TensorBoard events (when installed), a progress bar, and
    the timing of the current log window (step time, data time, samples per second)."""

    def __init__(self, out: Path, steps: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.metrics_path = out / "metrics.jsonl"
        self.out = out
        self.writer = _tensorboard(out) if enabled else None
        self.bar = _progress(steps, start, disable=not enabled)
        self.restart_window()

    def write_run_info(self, info: dict) -> None:
        if self.enabled:
            (self.out / "run.json").write_text(json.dumps(info, indent=2))

    def restart_window(self) -> None:
        self.t_window, self.data_time, self.n_window = time.perf_counter(), 0.0, 0

    def next_batch(self, batches: Iterator[dict], device: torch.device) -> dict:
        """The next batch on `device`, its wait counted as data time."""
        t0 = time.perf_counter()
        batch = to_device(next(batches), device)
        self.data_time += time.perf_counter() - t0
        return batch

    def stepped(self) -> None:
        self.n_window += 1
        self.bar.update(1)

    def window_rates(self, samples_per_step: int) -> dict[str, float]:
        """Timing of the window that ends now (and a new window starts)."""
        elapsed = time.perf_counter() - self.t_window
        n = max(self.n_window, 1)
        rates = {"step_time": elapsed / n, "data_time": self.data_time / n,
                 "samples_per_s": self.n_window * samples_per_step / max(elapsed, 1e-9)}
        self.restart_window()
        return rates

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(out / "tb"))
    except Exception as e:  # tensorboard is optional; metrics.jsonl is always written
        log.info("TensorBoard unavailable (%s); metrics go to metrics.jsonl only", e)
        return None


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=disable, dynamic_ncols=True, desc="train")


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
