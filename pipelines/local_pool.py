"""Ray-free executor: the same generate and render steps on a plain process pool of one machine.

For machines where Ray is not installed (e.g. a GPU node whose only Python with bpy is Blender's
own). Same steps, same shard names and manifests, same bytes as the Ray farm; what it lacks is
the farm's supervision (no per-shape timeout, no worker replacement: a crashed process fails the
run, and a rerun resumes from the manifest).

  python -m pipelines.local_pool generate --root R --n 1000 --processes 12
  python -m pipelines.local_pool render --root R --views 12 --resolution 256 --engine eevee --processes 8
  python -m pipelines.local_pool render --root R --engine eevee --processes 16 --gpus 0,1   # 8 per GPU
  python -m pipelines.local_pool real --src DIR --root R --resolution 256 --engine eevee
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

_writer = None  # one ViewShardWriter (one Blender) per pool process, made by the initializer


def _progress(done: int, total: int, unit: str, started: float) -> None:
    rate = done / max(1e-9, time.perf_counter() - started)
    print(f"\r{done}/{total} {unit} ({rate:.1f} {unit}/s)", end="", file=sys.stderr, flush=True)


def _generate_one(args: tuple) -> dict[str, Any]:
    from pipelines.generate import make_shape_shard

    cfg, first, last = args
    return make_shape_shard(cfg, first, last)


def run_generate_local(cfg, processes: int):
    """Builds every missing shape shard of cfg.root with `processes` processes."""
    from pipelines.generate import GenerateResult, _commit, pending_ranges
    from zeroverse.store.fs import make_dirs, remove_temporaries
    from zeroverse.store.manifest import open_manifest

    started = time.perf_counter()
    make_dirs(cfg.shapes_dir)
    manifest = open_manifest(cfg.shapes_dir, "shapes", cfg.seed, cfg.identity())
    remove_temporaries(cfg.shapes_dir)
    todo, done = pending_ranges(manifest, cfg.n, cfg.shard_size, cfg.shapes_dir)
    result = GenerateResult([], done, [], 0, 0.0)
    total, finished = sum(b - a + 1 for a, b in todo), 0
    with mp.get_context("spawn").Pool(processes) as pool:
        for record in pool.imap_unordered(_generate_one, [(cfg, a, b) for a, b in todo]):
            failed = list(record["failed"])
            _commit(manifest, cfg.shapes_dir, record)
            result.written.append(record["file"])
            result.failures.extend(failed)
            finished += record["last"] - record["first"] + 1
            _progress(finished, total, "shapes", started)
    print(file=sys.stderr)
    result.shapes = len(manifest.shape_ids())
    result.seconds = time.perf_counter() - started
    return result


def _init_render(cfg, shapes, gpus, started) -> None:
    """Pool initializer: this process's Blender, on device gpus[k % len(gpus)] for the k-th
    process started (a replacement for a crashed one takes the next k: still round-robin)."""
    global _writer
    import os

    from pipelines.render import ViewShardWriter
    from zeroverse.scene.gpu_devices import pool_worker_device

    with started.get_lock():
        rank = started.value
        started.value += 1
    device = pool_worker_device(rank, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    _writer = ViewShardWriter(cfg, shapes, device=device)


def _render_one(spec: tuple) -> dict[str, Any]:
    first, last, ids = spec
    return _writer.render_shard(first, last, ids)


def run_render_local(cfg, processes: int, gpus: list[int] | None = None):
    """Renders every missing view shard of cfg.root; each process holds one Blender, bound to
    one of `gpus` (device indices as CUDA numbers them here; round-robin) when given."""
    from pipelines.render import RenderResult, _commit, pending_shards, view_shard_plan
    from zeroverse.store.fs import make_dirs, remove_temporaries
    from zeroverse.store.manifest import Manifest, open_manifest

    started = time.perf_counter()
    shapes = Manifest.load(cfg.shapes_dir)
    if shapes is None or not shapes.shards:
        raise ValueError(f"{cfg.shapes_dir} has no shapes manifest; generate shapes first")
    make_dirs(cfg.views_dir)
    views = open_manifest(cfg.views_dir, "views", shapes.seed, cfg.identity(shapes))
    remove_temporaries(cfg.views_dir)
    ids = shapes.shape_ids()[: cfg.limit] if cfg.limit else shapes.shape_ids()
    todo, done = pending_shards(views, view_shard_plan(ids, cfg.shapes_per_shard))
    result = RenderResult(skipped_shapes=done, workers_started=processes)
    total = sum(len(s) for _, _, s in todo)
    finished = 0
    arrivals: list[tuple[float, int]] = []  # (time, views) per finished shard
    ctx = mp.get_context("spawn")
    started_workers = ctx.Value("i", 0)
    with ctx.Pool(processes, initializer=_init_render, initargs=(cfg, shapes, gpus, started_workers)) as pool:
        for record in pool.imap_unordered(_render_one, todo):
            record.pop("recycle", None)
            result.stages.append(record.pop("stages"))
            _commit(views, cfg.views_dir, record)
            result.written.append(record["file"])
            result.failures.extend({"shape_id": f["shape_id"], "reason": f["reason"]} for f in record.pop("failed_details"))
            finished += len(record["shape_ids"]) + len(record["failed"])
            arrivals.append((time.perf_counter(), record["rows"]))
            _progress(finished, total, "shapes", started)
    print(file=sys.stderr)
    # Throughput once every process has finished a shard: Blender's start-up and EEVEE's shader
    # compile (16-20 s per process on an H200) left out, as a long run amortises them.
    if len(arrivals) > processes:
        t0 = arrivals[processes - 1][0]
        result.steady_views_per_s = sum(v for _, v in arrivals[processes:]) / max(1e-9, arrivals[-1][0] - t0)
    result.shapes = len(views.shape_ids())
    result.views = sum(s["rows"] for s in views.shards)
    result.seconds = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ray-free generate/render on one machine's process pool.")
    sub = parser.add_subparsers(dest="stage", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--root", type=Path, required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--shard-size", type=int, default=256)
    g.add_argument("--processes", type=int, default=mp.cpu_count())
    for name in ("render", "real"):
        r = sub.add_parser(name)
        r.add_argument("--root", type=Path, required=True)
        r.add_argument("--views", type=int, default=32)
        r.add_argument("--rig", default="random" if name == "render" else None, choices=["random", "eval", "orbit", "spiral"])
        r.add_argument("--resolution", type=int, default=512)
        r.add_argument("--engine", default="cycles", choices=["cycles", "eevee", "workbench"])
        r.add_argument("--samples", type=int, default=None)
        r.add_argument("--threads", type=int, default=1)
        r.add_argument("--processes", type=int, default=mp.cpu_count())
        if name == "render":
            r.add_argument("--timings", action="store_true", help="print the per-stage table of a view (median ms per view over shards)")
            r.add_argument("--json", type=Path, default=None, help="also write the run's figures and per-stage medians here")
            r.add_argument("--gpus", default=None, help="devices to spread the processes over, round-robin (e.g. 0,1; "
                           "as CUDA numbers them here). Each view shard records the device that rendered it")  # fmt: skip
        r.add_argument("--shapes-per-shard", type=int, default=8)
        r.add_argument("--limit", type=int, default=None)
        r.add_argument("--targets-per-ring", type=int, default=16)
        r.add_argument("--layout-views", type=int, default=0, help="random rig: views per shape in the evaluation layout")
        if name == "real":
            r.add_argument("--src", type=Path, required=True)
    args = parser.parse_args(argv)

    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    if args.stage == "generate":
        from pipelines.generate import GenerateConfig
        from pipelines.texture_bank import prepare_bank
        from zeroverse.scene.recipe import RecipeConfig

        bank = prepare_bank(args.root, None, RecipeConfig().texture_bank_size)
        cfg = GenerateConfig(root=args.root, n=args.n, seed=args.seed, shard_size=args.shard_size, textures=bank.describe())
        result = run_generate_local(cfg, args.processes)
        print(f"{result.shapes} shapes, {len(result.failures)} failures, {result.seconds:.1f} s")
        return
    samples = args.samples or (16 if args.engine == "eevee" else 8)
    settings = RenderSettings(engine=args.engine, resolution=args.resolution, samples=samples, threads=args.threads)
    if args.stage == "real":
        from pipelines.real_objects import render_real_objects

        # The GSO protocol (eval rig) unless a rig is named: G3R's comparison needs 40 random views.
        rig = RigConfig(kind=args.rig or "eval", num_views=args.views, eval_targets_per_ring=args.targets_per_ring)
        out = render_real_objects(args.src, args.root, rig, settings, limit=args.limit, progress=False)
        print(f"{out['objects']} real objects rendered in {out['seconds']:.1f} s")
        return
    from pipelines.render import RenderConfig

    rig = RigConfig(kind=args.rig, num_views=args.views, eval_targets_per_ring=args.targets_per_ring,
                    layout_views=args.layout_views)
    cfg = RenderConfig(root=args.root, rig=rig, settings=settings, shapes_per_shard=args.shapes_per_shard, limit=args.limit)
    from zeroverse.scene.gpu_devices import parse_gpu_list

    result = run_render_local(cfg, args.processes, parse_gpu_list(args.gpus))
    steady = "" if result.steady_views_per_s is None else f"; {result.steady_views_per_s:.1f} views/s after each process's first shard"
    print(f"{result.shapes} shapes / {result.views} views, {len(result.failures)} failures, "
          f"{result.seconds:.1f} s ({result.views / max(result.seconds, 1e-9):.1f} views/s end to end{steady})")
    from zeroverse.scene.render_timing import format_table, overlapped_stages, per_view_medians

    wall, cpu = per_view_medians(result.stages), per_view_medians(result.stages, "cpu_seconds")
    if args.timings:
        print(format_table({"wall": wall, "CPU": cpu}, overlapped_stages(result.stages)))
    if args.json is not None:
        import json

        report = {
            "settings": settings.to_dict(), "views_per_shape": args.views, "processes": args.processes, "gpus": args.gpus,
            "shapes": result.shapes, "views": result.views, "seconds": result.seconds,
            "views_per_s": result.views / max(result.seconds, 1e-9), "steady_views_per_s": result.steady_views_per_s,
            "stages_ms": {k: round(v * 1e3, 3) for k, v in wall.items()}, "stages_cpu_ms": {k: round(v * 1e3, 3) for k, v in cpu.items()},
        }  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
