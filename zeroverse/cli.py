"""`zeroverse` command line: a thin click shell that builds configs and calls one stage each.

Heavy packages (bpy, ray, torch) are imported inside the command that needs them, so
`zeroverse --help` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import click

DEFAULT_ROOT = "zeroverse-data"


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


def _storage_failure(err: OSError) -> click.ClickException:
    """A write that the filesystem refused (full, read-only, quota): one line, no traceback.
    ManifestSaveError already says which manifest and that the previous one is intact."""
    from zeroverse.shards import ManifestSaveError

    if isinstance(err, ManifestSaveError):
        return click.ClickException(str(err))
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return click.ClickException(
        f"{err.strerror or err}{where}. Finished shards are kept and listed; free space or fix the permissions, "
        "then rerun the same command to resume"
    )


class RootType(click.ParamType):
    """--root: a local directory, file:///abs/path, or a filesystem URI pyarrow opens (s3://,
    gs://, hdfs://, abfs://) for generate, render and validate."""

    name = "ROOT"

    def convert(self, value, param, ctx):
        from zeroverse.shards import as_root

        if not isinstance(value, str):
            return value
        try:
            return as_root(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


ROOT = RootType()


def _check_writable(path: Path, option: str) -> None:
    """Refuses an output file that cannot be written, before any work: its folder (or the nearest
    existing parent, which the command would create it in) must accept a new file. Probed by
    creating one: permission bits alone say yes to root, and /proc or a read-only mount say no."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; pass a file name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".zv-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write in {parent} ({getattr(err, 'strerror', None) or err}); choose a writable path") from err


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} is not positive; pass an integer >= 1", ctx=ctx, param=param)
    return value


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged (click's test runner swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(verbose: bool | None) -> None:
    """One handler on zeroverse's own loggers (zeroverse.*, pipelines.*): INFO by default (what a
    run decided: resumed from where, TensorBoard missing ...), DEBUG with --verbose, warnings only
    with --quiet. Other libraries' loggers (Ray's) are left as they are."""
    level = logging.DEBUG if verbose else logging.WARNING if verbose is False else logging.INFO
    for name in ("zeroverse", "pipelines"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(handler)  # a second invocation in one process (tests) replaces it
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)  # records still propagate: a host's root handlers (pytest's caplog) see them too


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zeroverse")
@click.option("--verbose/--quiet", default=None, help="Log debug messages / only warnings and errors (default: info). Before the command: `zeroverse --quiet render ...`.")
def main(verbose) -> None:
    """Procedural Zeroverse shapes, a Blender render farm on Ray, and a GS-LRM trainer.

    Typical run: `zeroverse generate --n 1000`, then `zeroverse render --views 32`, then
    `zeroverse train-lrm`. Every command works on one ROOT directory (default ./zeroverse-data).
    """
    _configure_logging(verbose)


@main.command()
@click.option("--n", "n", type=int, required=True, callback=_positive, help="Number of shapes in the root (resumes / extends).")
@click.option("--root", type=ROOT, default=DEFAULT_ROOT, show_default=True, help="A directory or a URI (file://, s3://, gs://, hdfs://).")
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed: same seed, same bytes.")
@click.option("--workers", type=int, default=None, callback=_positive, help="Local Ray CPUs (default: all cores).")
@click.option("--address", default=None, help="Join an existing Ray cluster (e.g. 10.0.0.1:6379 or 'auto').")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="Recipe config (.toml/.yaml).")
@click.option("--textures", "textures_dir", type=click.Path(path_type=Path), default=None, help="Use this image folder as the texture bank.")
@click.option("--shard-size", type=int, default=256, show_default=True, callback=_positive, help="Shapes per shard file.")
@click.option("--shape-timeout", type=float, default=300.0, show_default=True, help="Seconds without a finished shape before a worker is declared hung.")
@click.option("--verify", is_flag=True, help="Re-hash every listed shard and rebuild any that changed (slow on big roots).")
@click.option("--new-version", is_flag=True, help="If ROOT was made with another seed or config, move it (and its views) to ROOT/versions/<k> and start anew.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def generate(n, root, seed, workers, address, config_path, textures_dir, shard_size, shape_timeout, verify, new_version, progress) -> None:
    """Build N seeded Zeroverse shapes in Blender, written to ROOT/shapes/*.parquet."""
    import dataclasses

    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.texture_bank import prepare_bank
    from zeroverse.recipe import load_recipe_config
    from zeroverse.shards import join

    try:
        if seed < 0:
            raise ValueError(f"--seed {seed}: use a non-negative integer")
        if shape_timeout <= 0:
            raise ValueError(f"--shape-timeout {shape_timeout}: use a positive number of seconds")
        recipe = load_recipe_config(config_path)
        if textures_dir is not None and not Path(textures_dir).is_dir():
            raise ValueError(f"--textures {str(textures_dir)!r} is not a readable directory of images")
        bank = prepare_bank(root, None if textures_dir is None else str(textures_dir), recipe.texture_bank_size)
        recipe = dataclasses.replace(recipe, texture_bank_size=len(bank))
        cfg = GenerateConfig(
            root=root, n=n, seed=seed, shard_size=shard_size, recipe=recipe, textures=bank.describe(), shape_timeout_s=shape_timeout
        )
        result = run_generate(cfg, address=address, workers=workers, progress=progress, verify=verify, new_version=new_version)
    except ValueError as err:
        raise _fail(err) from err
    except OSError as err:
        raise _storage_failure(err) from err
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished shards are kept; rerun the same command to resume", err=True)
        sys.exit(130)
    if result.archived is not None:
        click.echo(f"the previous version of {root} (another seed or config) is kept in {result.archived}")
    click.echo(
        f"{result.shapes} shapes in {join(root, 'shapes')} ({len(result.written)} shards written, "
        f"{result.skipped} shapes already there)"
    )
    _report_failures(result.failures)


def _report_failures(failures: list[dict]) -> None:
    if not failures:
        return
    click.echo(f"{len(failures)} shape(s) failed and were left out:", err=True)
    for failure in failures[:20]:
        click.echo(f"  shape {failure['shape_id']}: {failure['reason']}", err=True)
    if len(failures) > 20:
        click.echo(f"  ... and {len(failures) - 20} more (see the manifest's 'failures')", err=True)
    sys.exit(1)


@main.command()
@click.option("--views", "num_views", type=int, default=32, show_default=True, callback=_positive, help="Views per shape (random/orbit/spiral rigs).")
@click.option("--root", type=ROOT, default=DEFAULT_ROOT, show_default=True, help="A directory or a URI (file://, s3://, gs://, hdfs://).")
@click.option("--rig", type=click.Choice(["random", "eval", "orbit", "spiral"]), default="random", show_default=True)
@click.option("--layout-views", type=int, default=0, show_default=True, help="Random rig: the first K views of each shape follow the evaluation layout (shared elevation, 360/K apart, jittered); trainers can give a share of samples these inputs.")
@click.option("--resolution", type=int, default=512, show_default=True)
@click.option("--engine", type=click.Choice(["auto", "eevee", "cycles", "workbench"]), default="auto", show_default=True, help="auto: EEVEE with an NVIDIA GPU, Cycles on CPU otherwise.")
@click.option("--samples", type=int, default=None, callback=_positive, help="Samples per pixel (default: Cycles 8 + denoising, EEVEE 16).")
@click.option("--workers", type=int, default=None, callback=_positive, help="Blender workers (default: one per CPU / per thread group).")
@click.option("--threads", type=int, default=1, show_default=True, callback=_positive, help="CPU threads per Blender worker.")
@click.option("--gpus-per-worker", type=float, default=None, help="GPU fraction per worker (default: 0.25 with GPUs, else 0).")
@click.option("--address", default=None, help="Join an existing Ray cluster.")
@click.option("--bev", is_flag=True, help="Add one top-down orthographic view per shape.")
@click.option("--positions", is_flag=True, help="Also store world positions per pixel.")
@click.option("--random-light", is_flag=True, help="Seeded per-shape light strength and tint.")
@click.option("--shapes-per-shard", type=int, default=8, show_default=True, callback=_positive)
@click.option("--limit", type=int, default=None, callback=_positive, help="Render only the first LIMIT shapes.")
@click.option("--shape-timeout", type=float, default=600.0, show_default=True, help="Seconds per shape before a worker is declared hung.")
@click.option("--skip-corrupt", is_flag=True, help="Render around damaged input shape shards (their shapes go to the failure ledger) instead of refusing.")
@click.option("--new-version", is_flag=True, help="If ROOT's views were made with another config, move them to ROOT/versions/<k> and start anew.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def render(num_views, root, rig, layout_views, resolution, engine, samples, workers, threads, gpus_per_worker, address, bev, positions, random_light, shapes_per_shard, limit, shape_timeout, skip_corrupt, new_version, progress) -> None:
    """Render ROOT's shapes into ROOT/views/*.parquet (RGBA, depth, normals, cameras)."""
    import ray

    from pipelines.ray_runtime import init_ray
    from pipelines.render import RenderConfig, resolve_engine, run_render
    from zeroverse.cameras import RigConfig
    from zeroverse.render_settings import RenderSettings
    from zeroverse.shards import join

    try:
        if shape_timeout <= 0:
            raise ValueError(f"--shape-timeout {shape_timeout}: use a positive number of seconds")
        if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 1:
            raise ValueError(f"--gpus-per-worker {gpus_per_worker}: use a fraction of one GPU in [0, 1] (0.25: four workers per GPU)")
        rig_cfg = RigConfig(kind=rig, num_views=num_views, bev=bev, layout_views=layout_views)
        RenderSettings(engine=engine, resolution=resolution, samples=samples or 8)  # validates early
        _check_shapes(root)  # before Ray starts: a wrong --root fails in a second, not after Ray's start-up
        init_ray(address, workers * threads if workers else None)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        resolved = resolve_engine(engine, gpus)
        if resolved == "eevee" and gpus == 0:
            raise ValueError("--engine eevee needs an NVIDIA GPU in the Ray cluster; use --engine cycles on CPU")
        if gpus_per_worker is None:
            gpus_per_worker = 0.25 if resolved == "eevee" else 0.0
        settings = RenderSettings(
            engine=resolved,
            resolution=resolution,
            samples=samples or (16 if resolved == "eevee" else 8),
            positions=positions,
            random_light=random_light,
            threads=threads,
        )
        cfg = RenderConfig(
            root=root, rig=rig_cfg, settings=settings, shapes_per_shard=shapes_per_shard, limit=limit,
            shape_timeout_s=shape_timeout, skip_corrupt=skip_corrupt,
        )  # fmt: skip
        result = run_render(cfg, address=address, workers=workers, gpus_per_worker=gpus_per_worker, progress=progress, new_version=new_version)
    except ValueError as err:
        raise _fail(err) from err
    except OSError as err:
        raise _storage_failure(err) from err
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished shards are kept; rerun the same command to resume", err=True)
        sys.exit(130)
    if result.archived is not None:
        click.echo(f"the previous views of {root} (another config) are kept in {result.archived / 'views'}")
    rate = f", {result.views / result.seconds:.2f} views/s" if result.seconds > 0 and result.views else ""
    click.echo(
        f"{result.shapes} shapes / {result.views} views in {join(root, 'views')} ({len(result.written)} shards written, "
        f"{result.skipped_shapes} shapes already there, {result.retries} retries{rate})"
    )
    _report_failures(result.failures)


def _check_shapes(root) -> None:
    """Render's input, checked before anything starts: ROOT exists and holds a readable shapes manifest."""
    from zeroverse.shards import Manifest, is_dir, join

    if not is_dir(root):
        raise ValueError(
            f"{join(root, 'shapes')} has no shapes manifest: --root {root} is not a directory. Pass the root that "
            f"`zeroverse generate` wrote (default ./{DEFAULT_ROOT}), or run `zeroverse generate --root {root}` first"
        )
    shapes = Manifest.load(join(root, "shapes"))  # refuses a damaged manifest, naming the entry and the fix
    if shapes is None or not shapes.shards:
        raise ValueError(f"{join(root, 'shapes')} has no shapes manifest; run `zeroverse generate --root {root}` first")


@main.command()
@click.option("--root", type=ROOT, default=DEFAULT_ROOT, show_default=True, help="A directory or a URI (file://, s3://, gs://, hdfs://).")
@click.option("--views", "expected_views", type=int, default=None, help="Expected views per shape (default: as rendered).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(root, expected_views, as_json) -> None:
    """Check every shard of ROOT (schema, decodable images, cameras, depth vs alpha); exit 1 on problems."""
    from zeroverse.validate import validate_root

    report = validate_root(root, expected_views)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "problems": report.problems, "notes": report.notes, "shards": report.shards, "shapes": report.shapes, "views": report.views}, indent=1))
    else:
        for note in report.notes:
            click.echo(f"note: {note}")
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
        click.echo(f"{report.shards} shards, {report.shapes} shapes, {report.views} views checked: {'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("shape_id", type=int)
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["glb", "obj", "ply"]), default="glb", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file (default ROOT/exports/shape-<id>.<format>).")
def export(shape_id, root, fmt, out) -> None:
    """Export one generated shape as a textured GLB, OBJ (+ MTL + atlas) or coloured PLY."""
    from zeroverse.shape_io import export_from_root

    try:
        if out is not None:
            _check_writable(out, "--out")
        result = export_from_root(root, shape_id, fmt, out)
    except ValueError as err:
        raise _fail(err) from err
    except OSError as err:  # the write itself failed (disk full, a folder vanished ...)
        raise _storage_failure(err) from err
    click.echo(f"wrote {', '.join(str(f) for f in result.files)} ({result.num_faces} faces)")


@main.command()
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("preview.png"), show_default=True)
@click.option("--views", "show_views", is_flag=True, help="Show rendered views (ROOT/views) instead of shapes.")
@click.option("--depth/--no-depth", default=True, show_default=True, help="With --views: add a depth row per shape.")
@click.option("--max-shapes", type=int, default=None, callback=_positive, help="Default: 64 shapes, or 8 with --views.")
@click.option("--columns", type=int, default=8, show_default=True, callback=_positive)
@click.option("--size", type=int, default=128, show_default=True, callback=_positive, help="Tile size in pixels.")
def preview(root, out, show_views, depth, max_shapes, columns, size) -> None:
    """Write a contact sheet of generated shapes (quick numpy render) or of rendered views."""
    from zeroverse.preview import contact_sheet, views_contact_sheet

    try:
        if show_views:
            result = views_contact_sheet(root, out, max_shapes=max_shapes or 8, size=size, depth=depth)
        else:
            result = contact_sheet(root, out, max_shapes=max_shapes or 64, columns=columns, size=size)
    except ValueError as err:
        raise _fail(err) from err
    click.echo(f"wrote {out}")
    return result


@main.command("train-lrm")
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True, help="Root with rendered views.")
@click.option("--model", type=click.Choice(["gs-lrm", "g3r"]), default="gs-lrm", show_default=True, help="g3r: the learned iterative optimizer (single process).")
@click.option("--preset", type=click.Choice(["tiny", "small", "base"]), default="small", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/gslrm"), show_default=True, help="Run folder.")
@click.option("--steps", type=int, default=100_000, show_default=True, callback=_positive)
@click.option("--batch-size", type=int, default=8, show_default=True, callback=_positive, help="Per GPU/process.")
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--warmup-steps", type=int, default=2_000, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option("--image-size", type=int, default=None, callback=_positive, help="Default: the views' stored resolution (other sizes are resized on the fly).")
@click.option("--num-input-views", type=int, default=None, callback=_positive, help="Default: gs-lrm 4, g3r 32 source views.")
@click.option("--num-target-views", type=int, default=None, callback=_positive, help="Default: 4 novel views.")
@click.option("--unroll-steps", type=int, default=None, callback=_positive, help="g3r: refinement steps T (default 24).")
@click.option("--turbo-steps", type=int, default=None, callback=_positive, help="g3r: steps of the turbo schedule (default 6).")
@click.option("--num-points", type=int, default=None, callback=_positive, help="g3r: Gaussians per shape.")
@click.option("--unroll-warmup", type=int, default=None, help="g3r: iterations over which the unroll length grows from 1 to T (default 2000).")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast (CUDA only).")
@click.option("--grad-checkpointing", is_flag=True)
@click.option("--perceptual-weights", type=click.Path(exists=True, dir_okay=False), default=None, help="VGG16 state dict for the perceptual loss (without it: MSE + SSIM).")
@click.option("--log-every", type=int, default=10, show_default=True, callback=_positive)
@click.option("--image-every", type=int, default=1_000, show_default=True, callback=_positive)
@click.option("--ckpt-every", type=int, default=5_000, show_default=True, callback=_positive)
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
@click.option("--steps", type=int, default=None, callback=_positive, help="Refinement steps (default: the model's T).")
@click.option("--turbo", is_flag=True, help="Use the turbo schedule.")
@click.option("--source-views", type=int, default=None, callback=_positive)
@click.option("--heldout-views", type=int, default=0, show_default=True, help="Views kept out to report novel-view PSNR.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the refined Gaussians as a 3DGS .ply.")
@click.option("--device", default="auto", show_default=True)
def refine(checkpoint, root, index, steps, turbo, source_views, heldout_views, out, device) -> None:
    """Reconstruct one shape from its posed views with a trained G3R in a few learned steps."""
    from zeroverse.lrm.g3r_train import refine_shape

    try:
        if out is not None:
            _check_writable(out, "--out")
        report = refine_shape(checkpoint, root, index, steps=steps, out=out, num_source_views=source_views,
                              num_heldout_views=heldout_views, device=device, turbo=turbo)
    except (ValueError, FileNotFoundError) as err:
        raise _fail(err) from err
    click.echo(json.dumps(report.summary(), indent=1))


@main.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A checkpoint file or a run folder (its latest.pt).")
@click.option("--real", "real_dir", type=click.Path(path_type=Path), default=None, help="Folder of textured OBJ/GLB meshes (e.g. gso25).")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="A generated root: its shapes are rendered with the eval rig (use held-out shapes).")
@click.option("--views-root", type=click.Path(path_type=Path), default=None, help="An already rendered eval-rig views root.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: <checkpoint folder>/eval.")
@click.option("--resolution", type=int, default=256, show_default=True, help="Render resolution for --real/--root.")
@click.option("--targets-per-ring", type=int, default=16, show_default=True, help="Eval-rig targets per elevation ring (16 = the protocol).")
@click.option("--limit", type=int, default=None, callback=_positive, help="Evaluate the first LIMIT objects (--root: default 100).")
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
        raise _fail(err) from err
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
        _check_writable(out, "--out")
        result = export_ply_from_checkpoint(checkpoint, views_root, index, out, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise _fail(err) from err
    click.echo(f"wrote {result.path} ({result.num_gaussians} Gaussians, shape {result.name})")


if __name__ == "__main__":
    main()
