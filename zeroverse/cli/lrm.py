"""`zeroverse train-lrm | refine | eval | export-ply`: the model side of the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import click

from zeroverse.cli import main
from zeroverse.cli.common import DEFAULT_ROOT, check_writable, fail, positive

@main.command("train-lrm")
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True, help="Root with rendered views.")
@click.option("--model", type=click.Choice(["gs-lrm", "g3r"]), default="gs-lrm", show_default=True, help="g3r: the learned iterative optimizer (single process).")
@click.option("--preset", type=click.Choice(["tiny", "small", "base"]), default="small", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/gslrm"), show_default=True, help="Run folder.")
@click.option("--steps", type=int, default=100_000, show_default=True, callback=positive)
@click.option("--batch-size", type=int, default=8, show_default=True, callback=positive, help="Per GPU/process.")
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--warmup-steps", type=int, default=2_000, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option("--image-size", type=int, default=None, callback=positive, help="Default: the views' stored resolution (other sizes are resized on the fly).")
@click.option("--num-input-views", type=int, default=None, callback=positive, help="Default: gs-lrm 4, g3r 32 source views.")
@click.option("--num-target-views", type=int, default=None, callback=positive, help="Default: 4 novel views.")
@click.option("--unroll-steps", type=int, default=None, callback=positive, help="g3r: refinement steps T (default 24).")
@click.option("--turbo-steps", type=int, default=None, callback=positive, help="g3r: steps of the turbo schedule (default 6).")
@click.option("--num-points", type=int, default=None, callback=positive, help="g3r: Gaussians per shape.")
@click.option("--unroll-warmup", type=int, default=None, help="g3r: iterations over which the unroll length grows from 1 to T (default 2000).")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast (CUDA only).")
@click.option("--grad-checkpointing", is_flag=True)
@click.option("--perceptual-weights", type=click.Path(exists=True, dir_okay=False), default=None, help="VGG16 state dict for the perceptual loss (without it: MSE + SSIM).")
@click.option("--log-every", type=int, default=10, show_default=True, callback=positive)
@click.option("--image-every", type=int, default=1_000, show_default=True, callback=positive)
@click.option("--ckpt-every", type=int, default=5_000, show_default=True, callback=positive)
@click.option("--num-workers", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--max-minutes", type=float, default=None, help="Stop with a checkpoint after this long.")
@click.option("--depth-weight", type=float, default=None, help="gs-lrm: L1 on each input pixel's distance along its ray, from the renders' depth, at the start (default 1.0; 0: off).")
@click.option("--depth-weight-end", type=float, default=None, help="gs-lrm: the depth weight after its cosine decay (default 0.1).")
@click.option("--depth-decay", type=float, default=None, help="gs-lrm: share of the run over which the depth weight decays (default 0.5).")
@click.option("--alpha-weight", type=float, default=None, help="gs-lrm: MSE between rendered and true coverage (default 0.1; 0: off).")
@click.option("--low-res", type=int, default=None, help="gs-lrm: resolution of the curriculum's first part (default 128; 0: off).")
@click.option("--low-res-until", type=float, default=None, help="gs-lrm: share of the run at --low-res (default 0.7).")
@click.option("--supervise-inputs/--no-supervise-inputs", default=None, help="gs-lrm: also render and supervise the input views (default on).")
@click.option("--view-sampling", type=click.Choice(["random", "mixed"]), default=None, help="gs-lrm: mixed (default) gives --layout-share of the samples the layout views as inputs.")
@click.option("--layout-share", type=float, default=None, help="gs-lrm: share of samples with evaluation-layout inputs (default 0.25; needs views rendered with --layout-views).")
@click.option("--schedule", type=click.Choice(["steps", "time"]), default=None, help="gs-lrm: time: LR, curriculum and depth schedules follow --max-minutes' clock (default steps).")
@click.option("--compile/--no-compile", "compile_", default=None, help="gs-lrm: torch.compile the transformer blocks on CUDA (default on).")
@click.option("--data-on-gpu", type=click.Choice(["auto", "on", "off"]), default=None, help="gs-lrm: decode the views once into GPU memory (default auto: when they fit).")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE", help="gs-lrm: a GSLRMConfig field over the preset's, e.g. distance=camera, qk_norm=false (repeatable).")
def train_lrm(root, model, preset, out, steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, image_size, num_input_views, num_target_views, unroll_steps, turbo_steps, num_points, unroll_warmup, bf16, grad_checkpointing, perceptual_weights, log_every, image_every, ckpt_every, num_workers, seed, device, resume, max_minutes, depth_weight, depth_weight_end, depth_decay, alpha_weight, low_res, low_res_until, supervise_inputs, view_sampling, layout_share, schedule, compile_, data_on_gpu, model_options) -> None:
    """Train a GS-LRM (or G3R) on ROOT's view shards (GS-LRM on several GPUs: launch with torchrun)."""
    recipe = dict(depth_weight=depth_weight, depth_weight_end=depth_weight_end, depth_decay=depth_decay, alpha_weight=alpha_weight,
                  low_res=low_res, low_res_until=low_res_until, supervise_inputs=supervise_inputs, view_sampling=view_sampling,
                  layout_share=layout_share, schedule=schedule, compile=compile_, data_on_gpu=data_on_gpu)
    if model == "g3r":
        given = sorted(k for k, v in recipe.items() if v is not None) + (["model_option"] if model_options else [])
        if given:
            raise click.UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to --model gs-lrm only")
        g3r_args = {k: v for k, v in locals().items() if k in _train_g3r.__code__.co_varnames[:_train_g3r.__code__.co_argcount]}
        _train_g3r(**g3r_args)
        return
    from zeroverse.lrm.train import TrainConfig, train

    if any(v is not None for v in (unroll_steps, turbo_steps, num_points, unroll_warmup)):
        raise click.UsageError("--unroll-steps, --turbo-steps, --num-points and --unroll-warmup apply to --model g3r only")
    num_input_views, num_target_views = num_input_views or 4, num_target_views or 4
    if low_res == 0:
        recipe["low_res"] = None
    try:
        options = _model_options(model_options)
        cfg = TrainConfig(
            root=str(root), out=str(out), model=model, preset=preset, steps=steps, batch_size=batch_size, lr=lr,
            warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip, image_size=image_size,
            num_input_views=num_input_views, num_target_views=num_target_views, bf16=bf16,
            grad_checkpointing=grad_checkpointing, perceptual_weights=perceptual_weights, log_every=log_every,
            image_every=image_every, ckpt_every=ckpt_every, num_workers=num_workers, seed=seed, device=device, resume=resume, max_minutes=max_minutes,
            model_options=options, **{k: v for k, v in recipe.items() if v is not None or (k == "low_res" and low_res == 0)},
        )
        with _run_folder(root, out, resume):
            result = train(cfg)
    except (ValueError, FileExistsError, FileNotFoundError, MemoryError) as err:
        raise click.ClickException(_train_message(err)) from err
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        click.echo(f"trained to step {result.step}; checkpoint {result.last_checkpoint}; metrics {result.metrics_path}")


def _model_options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs -> GSLRMConfig overrides, each value parsed as its field's type."""
    from dataclasses import fields

    from zeroverse.lrm.gslrm import GSLRMConfig

    types = {f.name: f.type for f in fields(GSLRMConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise ValueError(f"--model-option {pair!r}: use KEY=VALUE with KEY one of {sorted(types)}")
        kind = str(types[key])
        try:
            if "bool" in kind:
                if value.lower() not in ("true", "false", "1", "0", "on", "off"):
                    raise ValueError
                out[key] = value.lower() in ("true", "1", "on")
            elif "int" in kind:
                out[key] = int(value)
            elif "float" in kind:
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise ValueError(f"--model-option {pair!r}: {key} takes a {kind} value") from None
    return out


def _train_g3r(root, preset, out, steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, image_size, num_input_views, num_target_views, unroll_steps, turbo_steps, num_points, unroll_warmup, bf16, grad_checkpointing, perceptual_weights, log_every, image_every, ckpt_every, num_workers, seed, device, resume, max_minutes) -> None:
    from zeroverse.lrm.g3r_train import G3RTrainConfig, train_g3r

    if grad_checkpointing:
        raise click.UsageError("--grad-checkpointing is not supported with --model g3r")
    if preset == "base":
        raise click.UsageError("--model g3r has presets tiny and small")
    extra = {k: v for k, v in dict(num_input_views=num_input_views, num_target_views=num_target_views, unroll_steps=unroll_steps,
                                  turbo_steps=turbo_steps, num_points=num_points, unroll_warmup=unroll_warmup,
                                  max_minutes=max_minutes, image_size=image_size).items() if v is not None}
    try:
        cfg = G3RTrainConfig(
            root=str(root), out=str(out), preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, grad_clip=grad_clip, perceptual_weights=perceptual_weights,
            log_every=log_every, image_every=image_every, ckpt_every=ckpt_every, seed=seed, resume=resume,
            num_workers=num_workers, device=device, **extra,
        )
        with _run_folder(root, out, resume):
            result = train_g3r(cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        raise click.ClickException(_train_message(err)) from err
    click.echo(f"trained G3R to step {result.step}; checkpoint {result.last_checkpoint}; metrics {result.metrics_path}")


@contextlib.contextmanager
def _run_folder(root, out, resume: bool):
    """train-lrm's checks before the run folder exists, and its cleanup if the run fails at once:
    ROOT must be a rendered root (else nothing is created); --resume without OUT/latest.pt says
    that it starts at step 0; a run folder this command created and left empty is removed."""
    from zeroverse.data.dataset import resolve_views_dir

    resolve_views_dir(root)  # a wrong --root fails here, naming the fix, before OUT is made
    out = Path(out)
    main_rank = os.environ.get("RANK", "0") == "0"
    if resume and not (out / "latest.pt").exists() and main_rank:
        click.echo(f"warning: --resume, but {out / 'latest.pt'} does not exist: starting a new run at step 0", err=True)
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):  # only if empty: never remove what a run wrote
                out.rmdir()
        raise


_CLI_WORDS = [  # the data layer's advice in library terms -> the train-lrm flags that do it
    (re.compile(r"\bnum_input_views=(\d+)"), r"--num-input-views \1"),
    (re.compile(r"\bnum_target_views=(\d+)"), r"--num-target-views \1"),
    (re.compile(r"\bnum_input_views\b"), "--num-input-views"),
    (re.compile(r"\bnum_target_views\b"), "--num-target-views"),
    (re.compile(r",\s*([^,.;()]+),? or pass skip_bad=True(?: to skip (?:such|its) shapes)?\."), r", or \1."),  # A, B, or skip -> A, or B
    (re.compile(r",? or pass skip_bad=True(?: to skip (?:such|its) shapes)?\."), "."),  # A, or skip -> A
    (re.compile(r"(ask for (?:at most \d+ views in total|fewer(?: views)?|at most \d+ inputs and \d+ targets))"),
     r"\1 (--num-input-views / --num-target-views)"),
]


def _train_message(err: Exception) -> str:
    """A training error for the command line: the data layer's hints name ViewDataset arguments
    (num_input_views=, skip_bad=True) that train-lrm spells as flags or does not offer."""
    text = str(err)
    for pattern, replacement in _CLI_WORDS:
        text = pattern.sub(replacement, text)
    return text


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A G3R checkpoint.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Root with rendered views.")
@click.option("--index", type=int, default=0, show_default=True, help="Position in the root's sorted shape ids.")
@click.option("--steps", type=int, default=None, callback=positive, help="Refinement steps (default: the model's T).")
@click.option("--turbo", is_flag=True, help="Use the turbo schedule.")
@click.option("--source-views", type=int, default=None, callback=positive)
@click.option("--heldout-views", type=int, default=0, show_default=True, help="Views kept out to report novel-view PSNR.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the refined Gaussians as a 3DGS .ply.")
@click.option("--device", default="auto", show_default=True)
def refine(checkpoint, root, index, steps, turbo, source_views, heldout_views, out, device) -> None:
    """Reconstruct one shape from its posed views with a trained G3R in a few learned steps."""
    from zeroverse.lrm.g3r_train import refine_shape

    try:
        if out is not None:
            check_writable(out, "--out")
        report = refine_shape(checkpoint, root, index, steps=steps, out=out, num_source_views=source_views,
                              num_heldout_views=heldout_views, device=device, turbo=turbo)
    except (ValueError, FileNotFoundError) as err:
        raise fail(err) from err
    click.echo(json.dumps(report.summary(), indent=1))


@main.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A checkpoint file or a run folder (its latest.pt).")
@click.option("--real", "real_dir", type=click.Path(path_type=Path), default=None, help="Folder of textured OBJ/GLB meshes (e.g. gso25).")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="A generated root: its shapes are rendered with the eval rig (use held-out shapes).")
@click.option("--views-root", type=click.Path(path_type=Path), default=None, help="An already rendered eval-rig views root.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: <checkpoint folder>/eval.")
@click.option("--resolution", type=int, default=256, show_default=True, help="Render resolution for --real/--root.")
@click.option("--targets-per-ring", type=int, default=16, show_default=True, help="Eval-rig targets per elevation ring (16 = the protocol).")
@click.option("--limit", type=int, default=None, callback=positive, help="Evaluate the first LIMIT objects (--root: default 100).")
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False), default=None, help="VGG16/LPIPS weights; without them LPIPS is skipped.")
@click.option("--model-resolution", type=int, default=None, help="With --views-root: run the model at this size (default: its training size).")
@click.option("--device", default="auto", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_cmd(checkpoint, real_dir, root, views_root, out, resolution, targets_per_ring, limit, lpips_weights, model_resolution, device, progress) -> None:
    """Evaluate a GS-LRM checkpoint: PSNR/SSIM (LPIPS with weights) per object, table and picture grid."""
    from zeroverse.lrm.evaluate import checkpoint_path, evaluate, evaluate_procedural, evaluate_real

    chosen = [x for x in (real_dir, root, views_root) if x is not None]
    if len(chosen) != 1:
        raise click.UsageError("pass exactly one of --real DIR, --root DIR or --views-root DIR")
    try:
        ckpt = checkpoint_path(checkpoint)
        out = out or ckpt.parent / "eval"
        common = dict(lpips_weights=lpips_weights, device=device, progress=progress)
        if real_dir is not None:
            result = evaluate_real(ckpt, real_dir, out, resolution=resolution, targets_per_ring=targets_per_ring, limit=limit, **common)
        elif root is not None:
            result = evaluate_procedural(ckpt, root, out, resolution=resolution, targets_per_ring=targets_per_ring, limit=limit or 100, **common)
        else:
            result = evaluate(ckpt, views_root, out, limit=limit, resolution=model_resolution, **common)
    except ValueError as err:
        raise fail(err) from err
    lp = f", LPIPS {result.lpips:.4f}" if result.lpips is not None else " (LPIPS skipped: no weights)"
    click.echo(f"{len(result.objects)} objects: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}{lp}; table {result.metrics_md}, grid {result.grid}")


@main.command("export-ply")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True)
@click.option("--views-root", type=click.Path(path_type=Path), required=True, help="Views root holding the input views.")
@click.option("--index", type=int, default=0, show_default=True, help="Position in the root's sorted shape ids.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .ply (standard 3DGS layout).")
@click.option("--device", default="auto", show_default=True)
def export_ply(checkpoint, views_root, index, out, device) -> None:
    """Predict Gaussians for one shape and write them as a 3DGS .ply that splat viewers open."""
    from zeroverse.lrm.evaluate import export_ply_from_checkpoint

    try:
        check_writable(out, "--out")
        result = export_ply_from_checkpoint(checkpoint, views_root, index, out, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise fail(err) from err
    click.echo(f"wrote {result.path} ({result.num_gaussians} Gaussians, shape {result.name})")


