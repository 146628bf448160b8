"""`zeroverse generate | render | validate | export | preview`: the data side of the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from pipelines.generate import DEFAULT_SHARD_SIZE, GenerateConfig
from pipelines.render import DEFAULT_SHAPES_PER_SHARD, RenderConfig
from zeroverse.scene.cameras import RigConfig
from zeroverse.scene.gpu_devices import EEVEE_WORKERS_PER_GPU, eevee_pool_workers
from zeroverse.scene.render_settings import DEFAULT_SAMPLES, RenderSettings

from zeroverse.cli import main
from zeroverse.cli.common import DEFAULT_ROOT, ROOT, check_writable, fail, positive, storage_failure

BACKEND = click.option("--backend", type=click.Choice(["ray", "processes"]), default="ray", show_default=True,
                       help="ray: a local Ray or the cluster at --address; processes: a process pool on this machine (no Ray needed).")  # fmt: skip


@main.command()
@click.option("--n", "n", type=int, required=True, callback=positive, help="Number of shapes in the root (resumes / extends).")
@click.option("--root", type=ROOT, default=DEFAULT_ROOT, show_default=True, help="A directory or a URI (file://, s3://, gs://, hdfs://).")
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed: same seed, same bytes.")
@click.option("--workers", type=int, default=None, callback=positive, help="Workers: local Ray CPUs or processes (default: all cores).")
@click.option("--address", default=None, help="Join an existing Ray cluster (e.g. 10.0.0.1:6379 or 'auto').")
@BACKEND
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="Recipe config (.toml/.yaml).")
@click.option("--textures", "textures_dir", type=click.Path(path_type=Path), default=None, help="Use this image folder as the texture bank.")
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True, callback=positive, help="Shapes per shard file.")
@click.option("--shape-timeout", type=float, default=GenerateConfig.shape_timeout_s, show_default=True, help="Seconds without a finished shape before a worker is declared hung.")
@click.option("--verify", is_flag=True, help="Re-hash every listed shard and rebuild any that changed (slow on big roots).")
@click.option("--new-version", is_flag=True, help="If ROOT was made with another seed or config, move it (and its views) to ROOT/versions/<k> and start anew.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def generate(n, root, seed, workers, address, backend, config_path, textures_dir, shard_size, shape_timeout, verify, new_version, progress) -> None:
    """Build N seeded Zeroverse shapes in Blender, written to ROOT/shapes/*.parquet."""
    import dataclasses

    from pipelines.generate import run_generate
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.recipe import load_recipe_config
    from zeroverse.store.fs import join

    with farm_errors():
        _check_backend(backend, address, None)
        # The config validates the values before the texture bank is written into ROOT.
        cfg = GenerateConfig(root=root, n=n, seed=seed, shard_size=shard_size, shape_timeout_s=shape_timeout)
        recipe = load_recipe_config(config_path)
        if textures_dir is not None and not Path(textures_dir).is_dir():
            raise ValueError(f"--textures {str(textures_dir)!r} is not a readable directory of images")
        bank = prepare_bank(root, None if textures_dir is None else str(textures_dir), recipe.texture_bank_size)
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(recipe, texture_bank_size=len(bank)), textures=bank.describe())
        result = run_generate(cfg, address=address, workers=workers, progress=progress, verify=verify, new_version=new_version, backend=backend)
    if result.archived is not None:
        click.echo(f"the previous version of {root} (another seed or config) is kept in {result.archived}")
    click.echo(
        f"{result.shapes} shapes in {join(root, 'shapes')} ({len(result.written)} shards written, "
        f"{result.skipped} shapes already there)"
    )
    _report_failures(result.failures)


@contextlib.contextmanager
def farm_errors():
    """A farm command's errors as the user sees them: a refused value or input in one line, a
    storage failure with the way to resume, Ctrl-C with the resume hint (exit 130)."""
    try:
        yield
    except ValueError as err:
        raise fail(err) from err
    except OSError as err:
        raise storage_failure(err) from err
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished shards are kept; rerun the same command to resume", err=True)
        sys.exit(130)


def _check_backend(backend: str, address, gpus) -> None:
    if backend == "processes" and address is not None:
        raise ValueError(f"--address {address} joins a Ray cluster: use it with --backend ray")
    if backend == "ray" and gpus is not None:
        raise ValueError("--gpus lists this machine's devices for --backend processes; with Ray use --gpus-per-worker")


def _report_failures(failures: list) -> None:
    if not failures:
        return
    click.echo(f"{len(failures)} shape(s) failed and were left out:", err=True)
    for failure in failures[:20]:
        click.echo(f"  shape {failure.shape_id}: {failure.reason}", err=True)
    if len(failures) > 20:
        click.echo(f"  ... and {len(failures) - 20} more (see the manifest's 'failures')", err=True)
    sys.exit(1)


@main.command()
@click.option("--views", "num_views", type=int, default=RigConfig.num_views, show_default=True, callback=positive, help="Views per shape (random/orbit/spiral rigs).")
@click.option("--root", type=ROOT, default=DEFAULT_ROOT, show_default=True, help="A directory or a URI (file://, s3://, gs://, hdfs://).")
@click.option("--real", "real_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, help="Render the real objects of this folder (e.g. GSO) into ROOT/views instead of ROOT's shapes; eval rig unless --rig.")
@click.option("--rig", type=click.Choice(["random", "eval", "orbit", "spiral"]), default=None, help="Camera rig (default: random; eval with --real).")
@click.option("--layout-views", type=int, default=0, show_default=True, help="Random rig: the first K views of each shape follow the evaluation layout (shared elevation, 360/K apart, jittered); trainers can give a share of samples these inputs.")
@click.option("--targets-per-ring", type=int, default=RigConfig.eval_targets_per_ring, show_default=True, callback=positive, help="Eval rig: target views per elevation ring.")
@click.option("--resolution", type=int, default=RenderSettings.resolution, show_default=True)
@click.option("--engine", type=click.Choice(["auto", "eevee", "cycles", "workbench"]), default="auto", show_default=True, help="auto: EEVEE with an NVIDIA GPU, Cycles on CPU otherwise.")
@click.option("--samples", type=int, default=None, callback=positive, help=f"Samples per pixel (default: Cycles {DEFAULT_SAMPLES['cycles']} + denoising, EEVEE {DEFAULT_SAMPLES['eevee']}; "
              "EEVEE's cost is per sample: 8 render 1.4x the views/s of 16, at 42 dB PSNR against them).")
@click.option("--workers", type=int, default=None, callback=positive, help="Blender workers (default: one per CPU / per thread group, at most 8 per GPU with EEVEE; 1 with --real).")
@click.option("--threads", type=int, default=1, show_default=True, callback=positive, help="CPU threads per Blender worker.")
@click.option("--gpus-per-worker", type=float, default=None, help="Ray: GPU fraction per worker (default: 0.125 with EEVEE, i.e. 8 per GPU; else 0).")
@click.option("--gpus", default=None, help="--backend processes: devices to spread the workers over, round-robin (e.g. 0,1; as CUDA numbers them here; default with EEVEE: every GPU here).")
@click.option("--address", default=None, help="Join an existing Ray cluster.")
@BACKEND
@click.option("--bev", is_flag=True, help="Add one top-down orthographic view per shape.")
@click.option("--positions", is_flag=True, help="Also store world positions per pixel.")
@click.option("--random-light", is_flag=True, help="Seeded per-shape light strength and tint.")
@click.option("--shapes-per-shard", type=int, default=DEFAULT_SHAPES_PER_SHARD, show_default=True, callback=positive)
@click.option("--limit", type=int, default=None, callback=positive, help="Render only the first LIMIT shapes (objects with --real).")
@click.option("--shape-timeout", type=float, default=RenderConfig.shape_timeout_s, show_default=True, help="Seconds per shape before a worker is declared hung.")
@click.option("--skip-corrupt", is_flag=True, help="Render around damaged input shape shards (their shapes go to the failure ledger) instead of refusing.")
@click.option("--new-version", is_flag=True, help="If ROOT's views were made with another config, move them to ROOT/versions/<k> and start anew.")
@click.option("--timings", is_flag=True, help="Print the per-stage table of a view (median ms per view over shards).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the run's figures and per-stage medians here.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def render(num_views, root, real_dir, rig, layout_views, targets_per_ring, resolution, engine, samples, workers, threads, gpus_per_worker, gpus, address, backend, bev, positions, random_light, shapes_per_shard, limit, shape_timeout, skip_corrupt, new_version, timings, json_path, progress) -> None:
    """Render ROOT's shapes (or --real objects) into ROOT/views/*.parquet (RGBA, depth, normals, cameras)."""
    import dataclasses

    from pipelines.render import resolve_engine, run_render
    from zeroverse.scene.render_settings import default_samples
    from zeroverse.scene.gpu_devices import parse_gpu_list
    from zeroverse.store.fs import join

    with farm_errors():
        devices = parse_gpu_list(gpus)
        _check_backend(backend, address, devices)
        if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 1:
            raise ValueError(f"--gpus-per-worker {gpus_per_worker}: use a fraction of one GPU in [0, 1] (0.25: four workers per GPU)")
        rig_cfg = RigConfig(kind=rig or ("eval" if real_dir else "random"), num_views=num_views, bev=bev, layout_views=layout_views,
                            eval_targets_per_ring=targets_per_ring)  # fmt: skip
        # Values checked by the configs before anything starts (the engine is resolved below).
        settings = RenderSettings(engine=engine, resolution=resolution, samples=samples or 1, positions=positions,
                                  random_light=random_light, threads=threads)  # fmt: skip
        cfg = RenderConfig(root=root, rig=rig_cfg, settings=dataclasses.replace(settings, engine="cycles"), shapes_per_shard=shapes_per_shard,
                           limit=limit, shape_timeout_s=shape_timeout, skip_corrupt=skip_corrupt)  # fmt: skip
        if real_dir is None:
            _check_shapes(root)  # before Ray starts: a wrong --root fails in a second, not after Ray's start-up
        gpus_here = _gpus_available(backend, address, workers, threads, devices)
        resolved = resolve_engine(engine, gpus_here)
        if resolved == "eevee" and gpus_here == 0:
            raise ValueError("--engine eevee needs an NVIDIA GPU (in the Ray cluster, or --gpus here); use --engine cycles on CPU")
        if backend == "processes" and devices is None and resolved in ("eevee", "workbench") and gpus_here > 1:
            # Every GPU of this machine, as Ray would give them; without this, every worker drew on
            # the default GPU (EEVEE ignores CUDA_VISIBLE_DEVICES, see gpu_binding).
            devices = list(range(int(gpus_here)))
        settings = dataclasses.replace(settings, engine=resolved, samples=samples or default_samples(resolved))
        cfg = dataclasses.replace(cfg, settings=settings)
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 / EEVEE_WORKERS_PER_GPU if resolved == "eevee" else 0.0
        if real_dir is not None:
            options = {"workers": workers, "address": address, "cpus_per_worker": threads, "gpus_per_worker": gpus_per_worker, "gpus": devices}
            return _render_real(real_dir, root, rig_cfg, settings, limit, shapes_per_shard, progress, backend, options)
        if workers is None and backend == "processes" and resolved == "eevee":
            workers = eevee_pool_workers(len(devices or []), os.cpu_count() or 1, threads)
        result = run_render(cfg, address=address, workers=workers, gpus_per_worker=gpus_per_worker, progress=progress,
                            new_version=new_version, backend=backend, gpus=devices)  # fmt: skip
    if result.archived is not None:
        click.echo(f"the previous views of {root} (another config) are kept in {result.archived / 'views'}")
    rate = f", {result.views / result.seconds:.2f} views/s" if result.seconds > 0 and result.views else ""
    steady = "" if result.steady_views_per_s is None else f"; {result.steady_views_per_s:.1f} views/s after each worker's first shard"
    click.echo(
        f"{result.shapes} shapes / {result.views} views in {join(root, 'views')} ({len(result.written)} shards written, "
        f"{result.skipped_shapes} shapes already there, {result.retries} retries{rate}{steady})"
    )
    _report_timings(result, settings, num_views, workers, gpus, timings, json_path)
    _report_failures(result.failures)


def _gpus_available(backend: str, address, workers, threads: int, devices) -> float:
    """GPUs the workers can use: the Ray cluster's (starting the local Ray now), or this machine's."""
    if backend == "processes":
        from pipelines.render import local_gpu_count

        return float(len(devices)) if devices else float(local_gpu_count())
    import ray

    from pipelines.ray_runtime import init_ray

    init_ray(address, workers * threads if workers else None)
    return float(ray.cluster_resources().get("GPU", 0))


def _render_real(real_dir, root, rig, settings, limit, shapes_per_shard, progress, backend, options) -> None:
    from pipelines.real_objects import run_real

    out = run_real(real_dir, root, rig, settings, limit=limit, shapes_per_shard=shapes_per_shard, progress=progress,
                   backend=backend, **options)  # fmt: skip
    click.echo(f"{out['objects']} real objects in {Path(root) / 'views'} ({out['shards_written']} shards written, {out['seconds']:.1f} s)")


def _report_timings(result, settings, views: int, workers, gpus, timings: bool, json_path) -> None:
    """--timings: the per-stage table of a view; --json: the run's figures and per-stage medians."""
    if not (timings or json_path):
        return
    from zeroverse.scene.render_timing import format_table, overlapped_stages, per_view_medians

    wall, cpu = per_view_medians(result.stages), per_view_medians(result.stages, "cpu_seconds")
    if timings:
        click.echo(format_table({"wall": wall, "CPU": cpu}, overlapped_stages(result.stages)))
    if json_path is not None:
        report = {
            "settings": settings.to_dict(), "views_per_shape": views, "processes": workers, "gpus": gpus,
            "shapes": result.shapes, "views": result.views, "seconds": result.seconds,
            "views_per_s": result.views / max(result.seconds, 1e-9), "steady_views_per_s": result.steady_views_per_s,
            "stages_ms": {k: round(v * 1e3, 3) for k, v in wall.items()}, "stages_cpu_ms": {k: round(v * 1e3, 3) for k, v in cpu.items()},
        }  # fmt: skip
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")


def _check_shapes(root) -> None:
    """Render's input, checked before anything starts: ROOT exists and holds a readable shapes manifest."""
    from zeroverse.store.fs import is_dir, join
    from zeroverse.store.manifest import Manifest

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
    from zeroverse.review.validate import validate_root

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
    from zeroverse.store.shape_io import export_from_root

    try:
        if out is not None:
            check_writable(out, "--out")
        result = export_from_root(root, shape_id, fmt, out)
    except ValueError as err:
        raise fail(err) from err
    except OSError as err:  # the write itself failed (disk full, a folder vanished ...)
        raise storage_failure(err) from err
    click.echo(f"wrote {', '.join(str(f) for f in result.files)} ({result.num_faces} faces)")


@main.command()
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("preview.png"), show_default=True)
@click.option("--views", "show_views", is_flag=True, help="Show rendered views (ROOT/views) instead of shapes.")
@click.option("--depth/--no-depth", default=True, show_default=True, help="With --views: add a depth row per shape.")
@click.option("--max-shapes", type=int, default=None, callback=positive, help="Default: 64 shapes, or 8 with --views.")
@click.option("--columns", type=int, default=8, show_default=True, callback=positive)
@click.option("--size", type=int, default=128, show_default=True, callback=positive, help="Tile size in pixels.")
def preview(root, out, show_views, depth, max_shapes, columns, size) -> None:
    """Write a contact sheet of generated shapes (quick numpy render) or of rendered views."""
    from zeroverse.review.preview import contact_sheet, views_contact_sheet

    try:
        if show_views:
            result = views_contact_sheet(root, out, max_shapes=max_shapes or 8, size=size, depth=depth)
        else:
            result = contact_sheet(root, out, max_shapes=max_shapes or 64, columns=columns, size=size)
    except ValueError as err:
        raise fail(err) from err
    click.echo(f"wrote {out}")
    return result


