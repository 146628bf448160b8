"""Train the G3R learned optimizer on rendered views; reads top to bottom (like train.py).

    cfg = G3RTrainConfig(root="data/zeroverse", out="runs/g3r", preset="small", steps=20_000)
    result = train_g3r(cfg)

Each batch follows the dataset contract (zeroverse.data.ViewDataset, collated): the first
`num_input_views` views of a shape are its source views (their depth maps build the
initial state; their images give the gradients G3R reads), the other `num_target_views` are
novel views, used only for supervision.

One training iteration unrolls the refinement over a batch of shapes:

    S_0 = init_from_depth(source views)              seeded by (seed, iteration)
    ∇_0 = d MSE_source / dS_0                        one render + backward
    for t in 0 .. n-1:                               n grows from 1 to T (unroll_warmup)
        S_t+1 = S_t + γ(t) G(S_t, ĝ_t, t)
        render S_t+1 at source + novel views: loss_t = L(source) + L(novel) + flat
        ∇_t+1 = d MSE_source / dS_t+1                from the same render (no extra pass)
        every truncate_every steps: backward the losses so far, detach S (truncated BPTT)
    loss = mean_t loss_t; AdamW step on G and the decoder

L = MSE + lpips_weight * perceptual (VGG16 weights from `perceptual_weights`) or, without
weights, MSE + ssim_weight * (1 - SSIM) with a warning, as train.py; flat = flat_weight *
mean smallest scale. A fraction `turbo_fraction` of the iterations unrolls the turbo schedule
(T = turbo_steps), so one model serves both (G sees t / T).

Outputs in `out`, as train.py: run.json, metrics.jsonl, TensorBoard events (when installed),
images/step-*.png (source views / novel targets / final novel renders), ckpt-<step>.pt and
latest.pt (weights_only-loadable, `model_kind: "g3r"`; `resume=True` continues from latest.pt and
reproduces the same next-iteration loss on CPU). Single process (WORLD_SIZE > 1 is refused).

`refine_shape` is the I/O wrapper behind `zeroverse refine`: load a checkpoint, read one shape
of a views root, initialise from depth, refine, report PSNR, write a .ply.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import g3r, losses, metrics
from .checkpoint import load_checkpoint
from .config import MODEL_KIND, G3RTrainConfig
from .g3r import G3R, G3RConfig
from .run import (
    RunLog,
    TrainResult,
    check_same_config,
    clip_grad,
    is_due,
    loader_batches,
    perceptual_loss,
    prepare_run,
    resolve_device,
    resume_run,
    save_image_grid,
    save_run,
    view_dataset,
    warmup_cosine,
)

log = logging.getLogger(__name__)




# Same fields as a GS-LRM run's result: one type, so callers treat both trainers alike.
G3RTrainResult = TrainResult


def unroll_length(step: int, T: int, warmup: int) -> int:
    """Steps unrolled at iteration `step` (0-based): 1 at the start, T from `warmup` on."""
    if warmup <= 0:
        return T
    return min(T, 1 + (T - 1) * step // warmup)


def iteration_generator(seed: int, step: int) -> torch.Generator:
    """The generator of iteration `step`'s random choices (turbo or not, init subsets and
    latents): a function of (seed, step) only, so a resumed run redraws the same ones."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def train_g3r(cfg: G3RTrainConfig, dataset: Dataset | None = None) -> G3RTrainResult:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train_g3r runs in one process (WORLD_SIZE > 1 is not supported); "
                         "the network is small, rendering dominates: raise batch_size instead")
    device = resolve_device(cfg.device)
    out, latest = prepare_run(cfg, device)
    model_cfg = cfg.model_config()
    model = G3R(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg))

    perceptual = perceptual_loss(cfg, device)
    step = resume_run(cfg, latest, model, optimizer, scheduler, True,
                      check=lambda ckpt: _check_same_model(ckpt, model_cfg, latest))

    collate_fn = None
    if dataset is None:
        dataset, collate_fn = view_dataset(cfg)
    batches = loader_batches(dataset, cfg, 0, 1, step, pin=device.type == "cuda", collate_fn=collate_fn)

    runlog = RunLog(out, cfg.steps, step)
    runlog.write_run_info({
        "train_config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "model_kind": MODEL_KIND,
        "num_params": model.num_params(),
        "perceptual": perceptual is not None,
        "device": str(device),
        "torch": torch.__version__,
        "start_step": step,
    })

    result = G3RTrainResult(step=step, metrics_path=runlog.metrics_path, perceptual=perceptual is not None)
    window: dict[str, float] = {}
    model.train()
    started = time.perf_counter()
    time_up = False
    while step < cfg.steps and not time_up:
        batch = runlog.next_batch(batches, device)

        optimizer.zero_grad(set_to_none=True)
        it = unroll_iteration(model, batch, cfg, step, perceptual)
        grad_norm = clip_grad(model, cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            result.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped", step + 1)
        scheduler.step()
        step += 1
        if cfg.max_minutes is not None:
            time_up = time.perf_counter() - started > cfg.max_minutes * 60

        values = {**it.scalars, "grad_norm": float(grad_norm)}
        result.losses.append(values["loss"])
        result.step = step
        runlog.stepped()
        runlog.bar.set_postfix(loss=f"{values['loss']:.4f}", T=it.unrolled)
        for k, v in values.items():
            window[k] = window.get(k, 0.0) + v

        if is_due(step, cfg.log_every, cfg, time_up):
            record = {k: v / runlog.n_window for k, v in window.items()}
            record.update(step=step, lr=lr, **runlog.window_rates(cfg.batch_size))
            runlog.write(record)
            window = {}

        if step == 1 or is_due(step, cfg.image_every, cfg, time_up):
            nin = min(4, cfg.num_input_views)
            save_image_grid(out / "images" / f"step-{step:07d}.png",
                            batch["images"][:, :nin].float(),
                            batch["images"][:, cfg.num_input_views:].float(), it.novel_pred)

        if is_due(step, cfg.ckpt_every, cfg, time_up):
            result.last_checkpoint = save_run(cfg, out, step, model, optimizer, scheduler, model_cfg,
                                              model_kind=MODEL_KIND)

    runlog.close()
    return result


# --------------------------------------------------------------------------------------------
# One unrolled iteration
# --------------------------------------------------------------------------------------------


@dataclass
class Iteration:
    scalars: dict[str, float]  # loss, per-term values at the last step, psnrs, unroll length
    novel_pred: Tensor  # [B, Vt, 3, H, W] final renders of the novel views (detached)
    unrolled: int
    turbo: bool


def split_batch(batch: dict, num_inputs: int) -> tuple[dict, dict]:
    """(source, novel) dicts of images / c2w / K (+ depths, alphas for the source views)."""
    for key in ("images", "depths", "c2w", "K"):
        if key not in batch:
            raise ValueError(f"batch lacks {key!r} (G3R needs depth maps: channels rgb + depth); "
                             f"it has {sorted(batch)}")
    images = batch["images"]
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"batch['images'] must be [B, V, 3, H, W], got {tuple(images.shape)}")
    V = images.shape[1]
    if V <= num_inputs:
        raise ValueError(f"batch has {V} views; need num_input_views={num_inputs} plus novel views")
    keys = ("images", "depths", "c2w", "K") + (("alphas",) if "alphas" in batch else ())
    source = {k: batch[k][:, :num_inputs].float() for k in keys}
    novel = {k: batch[k][:, num_inputs:].float() for k in ("images", "c2w", "K")}
    return source, novel


def unroll_iteration(
    model: G3R,
    batch: dict,
    cfg: G3RTrainConfig,
    step: int,
    perceptual: "losses.PerceptualLoss | None",
) -> Iteration:
    """Unroll the refinement on one batch and backpropagate its loss into model's .grad."""
    mcfg = model.cfg
    gen = iteration_generator(cfg.seed, step)
    turbo = bool(torch.rand((), generator=gen) < cfg.turbo_fraction)
    T = mcfg.turbo_steps if turbo else mcfg.steps
    n = unroll_length(step, T, cfg.unroll_warmup)
    src, nov = split_batch(batch, cfg.num_input_views)
    device = src["images"].device
    background = batch.get("background")
    background = (background.float().to(device) if isinstance(background, Tensor)
                  else torch.ones(3, device=device))
    H, W = src["images"].shape[-2:]
    Vs = src["images"].shape[1]
    c2w = torch.cat([src["c2w"], nov["c2w"]], 1)
    K = torch.cat([src["K"], nov["K"]], 1)

    state = g3r.init_batch_from_depth(src["images"], src["depths"], src["c2w"], src["K"], mcfg,
                                      gen, src.get("alphas"))
    grad, mse0 = g3r.source_gradient(model, state, src["images"], src["c2w"], src["K"],
                                     background, cfg.backend)
    rms0 = g3r.grad_rms(grad)
    render_passes = 1
    total, pending = 0.0, None
    every = cfg.truncate_every if cfg.truncate_every > 0 else n
    for t in range(n):
        state = model(state, grad, t, T, rms0)
        gauss = model.decode(state)
        pred = g3r.images_of(g3r.render(gauss, c2w, K, H, W, background, cfg.backend))
        render_passes += 1
        l_src, terms_src = g3r.supervision_loss(pred[:, :Vs], src["images"], gauss, perceptual,
                                                cfg.lpips_weight, cfg.ssim_weight, cfg.flat_weight)
        l_nov, terms_nov = g3r.supervision_loss(pred[:, Vs:], nov["images"], gauss, perceptual,
                                                cfg.lpips_weight, cfg.ssim_weight, 0.0)
        loss_t = (l_src + cfg.novel_weight * l_nov) / n
        pending = loss_t if pending is None else pending + loss_t
        if t + 1 < n:
            # Next step's ∇S from this render: the same function source_gradient evaluates.
            mse = (pred[:, :Vs] - src["images"]).square().mean(dim=(1, 2, 3, 4))
            (grad,) = torch.autograd.grad(mse.sum(), state, retain_graph=True)
        if (t + 1) % every == 0 or t + 1 == n:
            pending.backward()
            total += float(pending.detach())
            pending = None
            state = state.detach()  # truncated backpropagation through the steps

    with torch.no_grad():
        mse_src_final = (pred[:, :Vs] - src["images"]).square().mean()
        scalars = {
            "loss": total,
            "mse_source": float(mse_src_final),
            "mse_novel": float(terms_nov["mse"]),
            "psnr_source_init": float((-10 * torch.log10(mse0.clamp_min(1e-10))).mean()),
            "psnr_source": float(metrics.psnr(pred[:, :Vs], src["images"]).mean()),
            "psnr_novel": float(metrics.psnr(pred[:, Vs:], nov["images"]).mean()),
            "flat": float(g3r.flatness(gauss)),
            "unroll": float(n),
            "turbo": float(turbo),
            "render_passes": float(render_passes),
        }
        for name in ("ssim", "perceptual"):
            if name in terms_nov:
                scalars[f"{name}_novel"] = float(terms_nov[name])
    return Iteration(scalars=scalars, novel_pred=pred[:, Vs:].detach(), unrolled=n, turbo=turbo)


def _check_same_model(ckpt: dict, cfg: G3RConfig, path: Path) -> None:
    if ckpt.get("model_kind") != MODEL_KIND:
        raise ValueError(f"{path} is not a G3R checkpoint (model_kind={ckpt.get('model_kind')!r})")
    check_same_config(ckpt["model_config"], cfg.to_dict(), g3r.RUNTIME_FIELDS, path)


# --------------------------------------------------------------------------------------------
# Using a trained model
# --------------------------------------------------------------------------------------------


def load_g3r(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[G3R, G3RConfig, dict]:
    """(model in eval mode, its G3RConfig, the train config dict) from a G3R checkpoint."""
    ckpt = load_checkpoint(path, map_location)
    if ckpt.get("model_kind") != MODEL_KIND:
        raise ValueError(f"{path} is not a G3R checkpoint (model_kind={ckpt.get('model_kind')!r}); "
                         "GS-LRM checkpoints load with checkpoint.load_model")
    cfg = G3RConfig.from_dict(ckpt["model_config"])
    model = G3R(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg, dict(ckpt.get("train_config", {}))


@dataclass
class RefineReport:
    shape_id: int
    steps: int
    render_passes: int
    seconds: float  # init + refinement (synchronised on CUDA)
    source_psnr_init: float
    source_psnr: float
    heldout_psnr: float | None  # None without held-out views
    heldout_ssim: float | None
    gaussians: "g3r.Gaussians"  # one scene, tensors [N, ...] on the CPU
    ply: Path | None = None

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "gaussians"}
        d["ply"] = None if self.ply is None else str(self.ply)
        return d


def refine_shape(
    checkpoint: str | Path,
    root: str | Path,
    index: int,
    steps: int | None = None,  # None: the model's T (or its turbo T with turbo=True)
    out: str | Path | None = None,  # .ply path
    num_source_views: int | None = None,  # None: the run's num_input_views
    num_heldout_views: int = 0,  # extra views (never used for refinement) to report PSNR on
    image_size: int | None = None,  # None: the run's image_size
    seed: int = 0,  # view choice and init
    device: str = "auto",
    backend: str = "auto",
    turbo: bool = False,
) -> RefineReport:
    """Refine shape `index` (its position in the root's sorted shape list, not its shape_id)
    with a trained G3R: views chosen by ViewDataset(seed), state from the source views'
    depth, T updates, PSNR on the source views before / after and on held-out views."""
    from zeroverse.data import ViewDataset

    dev = resolve_device(device)
    model, mcfg, tcfg = load_g3r(checkpoint, "cpu")
    model = model.to(dev)
    vs = num_source_views or int(tcfg.get("num_input_views", 32))
    size = image_size or int(tcfg.get("image_size", 256))
    ds = ViewDataset(root, num_input_views=vs, num_target_views=num_heldout_views,
                     resolution=size, seed=seed)
    item = ds[index]
    batch = {k: (v[None].to(dev) if isinstance(v, Tensor) else v) for k, v in item.items()}
    src = {k: batch[k][:, :vs].float() for k in ("images", "depths", "alphas", "c2w", "K")}
    bg = batch["background"].float()
    T = steps or (mcfg.turbo_steps if turbo else mcfg.steps)
    _sync(dev)
    t0 = time.perf_counter()
    state = g3r.init_batch_from_depth(src["images"], src["depths"], src["c2w"], src["K"], mcfg,
                                      torch.Generator().manual_seed(seed), src["alphas"])
    res = g3r.refine(model, state, src["images"], src["c2w"], src["K"], steps=T, background=bg,
                     backend=backend)
    _sync(dev)
    seconds = time.perf_counter() - t0
    psnr = [float((-10 * torch.log10(m.clamp_min(1e-10)))[0]) for m in res.source_mse]
    held_psnr = held_ssim = None
    if num_heldout_views > 0:
        with torch.no_grad():
            H, W = src["images"].shape[-2:]
            pred = g3r.images_of(g3r.render(res.gaussians, batch["c2w"][:, vs:].float(),
                                            batch["K"][:, vs:].float(), H, W, bg, backend))
            target = batch["images"][:, vs:].float()
            held_psnr = float(metrics.psnr(pred, target).mean())
            held_ssim = float(metrics.ssim(pred, target).mean())
    gaussians = res.gaussians[0].detach().to("cpu")
    ply = None
    if out is not None:
        from .ply import export_ply

        ply = export_ply(gaussians, out)
    return RefineReport(shape_id=int(item["shape_id"]), steps=T, render_passes=res.render_passes,
                        seconds=seconds, source_psnr_init=psnr[0], source_psnr=psnr[-1],
                        heldout_psnr=held_psnr, heldout_ssim=held_ssim, gaussians=gaussians, ply=ply)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = [
    "G3RTrainConfig",
    "G3RTrainResult",
    "RefineReport",
    "load_g3r",
    "refine_shape",
    "train_g3r",
    "unroll_iteration",
    "unroll_length",
]
