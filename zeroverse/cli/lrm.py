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


def _config_option(cls, name: str, *decls: str, shown: bool = True, **kwargs):
    """A click option for field `name` of a training config: flag `--name`, its default (shown
    in --help) and help text from the dataclass, so no default is written twice. shown=False:
    the flag defaults to None (the model's own default then applies; the help text names it)."""
    from dataclasses import MISSING, fields

    f = {f.name: f for f in fields(cls)}[name]
    default = f.default if f.default is not MISSING else None
    flag = "--" + name.replace("_", "-")
    if f.type == "bool":
        if default:
            decls = decls or (f"{flag}/--no-{flag[2:]}",)
        else:
            kwargs.setdefault("is_flag", True)
    elif "type" not in kwargs:
        kwargs["type"] = next((t for t in (int, float, str) if str(f.type).startswith(t.__name__)), None)
    shown_default = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
    help_text = f.metadata.get("help")
    if help_text and "help" not in kwargs:
        kwargs["help"] = help_text.format(default=shown_default)
    if shown and not kwargs.get("is_flag"):
        kwargs.setdefault("default", default)
        kwargs.setdefault("show_default", True)
    elif not kwargs.get("is_flag"):
        kwargs.setdefault("default", None)
    return click.option(*(decls or (flag,)), **kwargs)


def _train_options(command):
    """train-lrm's flags, from TrainConfig (GS-LRM, whose defaults the shared flags show) and
    G3RTrainConfig (the g3r-only flags); applied bottom-up, so listed here in --help order."""
    from zeroverse.lrm.config import G3RTrainConfig as G
    from zeroverse.lrm.config import TrainConfig as T

    gs = dict(shown=False)
    options = [
        _config_option(T, "root", type=click.Path(path_type=Path), default=DEFAULT_ROOT),
        _config_option(T, "model", type=click.Choice(["gs-lrm", "g3r"])),
        _config_option(T, "preset", type=click.Choice(["tiny", "small", "base"])),
        _config_option(T, "out", type=click.Path(path_type=Path), default=Path("runs/gslrm")),
        _config_option(T, "steps", callback=positive),
        _config_option(T, "batch_size", callback=positive),
        _config_option(T, "lr"),
        _config_option(T, "warmup_steps"),
        _config_option(T, "weight_decay"),
        _config_option(T, "grad_clip"),
        _config_option(T, "image_size", callback=positive),
        _config_option(T, "num_input_views", shown=False, callback=positive,
                       help=f"Default: gs-lrm {_default(T, 'num_input_views')}, g3r {_default(G, 'num_input_views')} source views."),
        _config_option(T, "num_target_views", shown=False, callback=positive),
        _config_option(G, "unroll_steps", shown=False, callback=positive),
        _config_option(G, "turbo_steps", shown=False, callback=positive),
        _config_option(G, "num_points", shown=False, callback=positive),
        _config_option(G, "unroll_warmup", shown=False),
        _config_option(T, "bf16"),
        _config_option(T, "grad_checkpointing"),
        _config_option(T, "perceptual_weights", type=click.Path(exists=True, dir_okay=False)),
        _config_option(T, "log_every", callback=positive),
        _config_option(T, "image_every", callback=positive),
        _config_option(T, "ckpt_every", callback=positive),
        _config_option(T, "num_workers"),
        _config_option(T, "seed"),
        _config_option(T, "device"),
        _config_option(T, "resume"),
        _config_option(T, "max_minutes"),
        _config_option(T, "depth_weight", **gs),
        _config_option(T, "depth_weight_end", **gs),
        _config_option(T, "depth_decay", **gs),
        _config_option(T, "alpha_weight", **gs),
        _config_option(T, "low_res", **gs),
        _config_option(T, "low_res_until", **gs),
        _config_option(T, "supervise_inputs", **gs),
        _config_option(T, "view_sampling", type=click.Choice(["random", "mixed"]), **gs),
        _config_option(T, "layout_share", **gs),
        _config_option(T, "schedule", type=click.Choice(["steps", "time"]), **gs),
        _config_option(T, "compile", "--compile/--no-compile", "compile_", **gs),
        _config_option(T, "data_on_gpu", type=click.Choice(["auto", "on", "off"]), **gs),
        _config_option(T, "model_options", "--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
                       type=str, **gs),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _default(cls, name: str):
    from dataclasses import fields

    return next(f.default for f in fields(cls) if f.name == name)


def _only_for(cls, prefix: str) -> list[str]:
    """The fields whose flags apply to one model (their help text starts "gs-lrm: " / "g3r: ")."""
    from dataclasses import fields

    return [f.name for f in fields(cls) if (f.metadata.get("help") or "").startswith(prefix)]


@main.command("train-lrm")
@_train_options
def train_lrm(**opts) -> None:
    """Train a GS-LRM (or G3R) on ROOT's view shards (GS-LRM on several GPUs: launch with torchrun)."""
    from dataclasses import fields

    from zeroverse.lrm.config import G3R_ONLY, GS_ONLY, G3RTrainConfig, TrainConfig
    from zeroverse.lrm.g3r_train import train_g3r
    from zeroverse.lrm.train import train

    opts["compile"] = opts.pop("compile_")
    model, root, out, resume = opts.pop("model"), opts["root"], opts["out"], opts["resume"]
    opts.update(root=str(root), out=str(out))
    pairs = opts.pop("model_options")
    if model == "g3r":
        given = sorted(k for k in _only_for(TrainConfig, GS_ONLY) if opts.get(k) is not None)
        given += ["model_option"] if pairs else []
        if given:
            raise click.UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to --model gs-lrm only")
        if opts["grad_checkpointing"]:
            raise click.UsageError("--grad-checkpointing is not supported with --model g3r")
        if opts["preset"] == "base":
            raise click.UsageError("--model g3r has presets tiny and small")
        cls, run, name = G3RTrainConfig, train_g3r, "G3R "
    else:
        if any(opts.get(k) is not None for k in _only_for(G3RTrainConfig, G3R_ONLY)):
            raise click.UsageError("--unroll-steps, --turbo-steps, --num-points and --unroll-warmup apply to --model g3r only")
        cls, run, name = TrainConfig, train, ""
    names = {f.name for f in fields(cls)}
    # A flag left at None keeps the config's default; --low-res 0 turns the curriculum off.
    kwargs = {k: v for k, v in opts.items() if k in names and v is not None}
    if opts.get("low_res") == 0:
        kwargs["low_res"] = None
    try:
        if model != "g3r":
            kwargs["model_options"] = _model_options(pairs)
        cfg = cls(**kwargs)
        with _run_folder(root, out, resume):
            result = run(cfg)
    except (ValueError, FileExistsError, FileNotFoundError, MemoryError) as err:
        raise click.ClickException(_train_message(err)) from err
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        click.echo(f"trained {name}to step {result.step}; checkpoint {result.last_checkpoint}; metrics {result.metrics_path}")


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
    from zeroverse.cli.eval_views import EvalRender, evaluate_procedural, evaluate_real
    from zeroverse.lrm.evaluate import checkpoint_path, evaluate

    chosen = [x for x in (real_dir, root, views_root) if x is not None]
    if len(chosen) != 1:
        raise click.UsageError("pass exactly one of --real DIR, --root DIR or --views-root DIR")
    try:
        ckpt = checkpoint_path(checkpoint)
        out = out or ckpt.parent / "eval"
        common = dict(lpips_weights=lpips_weights, device=device, progress=progress)
        render = EvalRender(resolution=resolution, targets_per_ring=targets_per_ring)
        if real_dir is not None:
            result = evaluate_real(ckpt, real_dir, out, render, limit=limit, **common)
        elif root is not None:
            result = evaluate_procedural(ckpt, root, out, render, limit=limit or 100, **common)
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
    from zeroverse.lrm.export import export_ply_from_checkpoint

    try:
        check_writable(out, "--out")
        result = export_ply_from_checkpoint(checkpoint, views_root, index, out, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise fail(err) from err
    click.echo(f"wrote {result.path} ({result.num_gaussians} Gaussians, shape {result.name})")


