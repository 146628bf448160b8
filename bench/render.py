"""End-to-end render throughput: scene build + render + PNG/float encode + Parquet write.

Runs the same worker code as the Ray farm (pipelines.render.ViewShardWriter) in plain processes,
one Blender each, so it also runs where Ray is absent (the GPU machine's Blender Python).

  CPU here:      python bench/render.py --engine cycles --resolution 256 --procs 1
  GPU machine:   python3.11 bench/render.py --engine eevee --resolution 512 --procs 1,2,4

Reads a generated root (`--root`; default: generates `--shapes` shapes into a temporary root on a
local process pool). Prints views/s (aggregate over processes, after each process
rendered one warm-up shape) and core-seconds per view; with --check, also compares the engine's
depth and alpha against Cycles on CPU for one view.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zeroverse.scene.gpu_devices import parse_gpu_list  # noqa: E402
from zeroverse.scene.render_settings import RenderSettings  # noqa: E402
from zeroverse.scene.render_timing import format_table, overlapped_stages, per_view_medians  # noqa: E402


@dataclass(frozen=True)
class Job:
    """One benchmark process: its shards (the first is the warm-up) and where it writes."""

    root: str  # the prepared root (shapes, texture cache)
    out: str  # the views root this process writes
    settings: RenderSettings
    views: int
    shards: list  # [pipelines.tasks.Task]
    device: int | None = None  # physical GPU (zeroverse.scene.gpu_devices), None: no binding


def _worker(job_and_barrier) -> dict:
    job, barrier = job_and_barrier
    from pipelines.render import RenderConfig
    from pipelines.view_writer import ViewShardWriter
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.store.manifest import Manifest

    cfg = RenderConfig(root=Path(job.out), rig=RigConfig(num_views=job.views), settings=job.settings, shapes_per_shard=len(job.shards[0].shape_ids))
    shapes = Manifest.load(Path(job.root) / "shapes")
    # Shapes and the texture cache come from the prepared root, views go to this run's own root.
    writer = ViewShardWriter(cfg, shapes, source_root=Path(job.root), device=job.device)
    first = job.shards[0]
    t0 = time.perf_counter()
    writer.render_shard(first.first, first.last, list(first.shape_ids[:1]))  # warm-up: shader compile, texture cache, kernels
    warmup = time.perf_counter() - t0
    barrier.wait()
    start, c0 = time.perf_counter(), time.process_time()
    views_done, stages = 0, []
    for k, task in enumerate(job.shards[1:]):
        result = writer.render_shard(task.first, task.last, list(task.shape_ids))
        views_done += result.record.rows
        if k == 0:  # the gap before the first timed shard is the barrier's wait, not a driver's
            for times in (result.stages["seconds"], result.stages["cpu_seconds"]):
                times.pop("driver", None)
        stages.append(result.stages)
    end = time.perf_counter()
    device = {**writer.renderer.device_report(), "binding": writer.binding}
    writer.close()
    return {"start": start, "end": end, "views": views_done, "cpu": time.process_time() - c0, "warmup": warmup, "stages": stages, "device": device}


def make_root(root: Path, n: int) -> Path:
    """A root of `n` shapes (seed 0) with its texture bank, generated on the farm's process
    backend: no Ray needed, like the rest of this script."""
    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.recipe import RecipeConfig

    bank = prepare_bank(root, None, RecipeConfig().texture_bank_size)
    cfg = GenerateConfig(root=root, n=n, seed=0, shard_size=16, textures=bank.describe())
    result = run_generate(cfg, workers=min(4, os.cpu_count() or 1), progress=False, backend="processes")
    if result.failures:
        raise SystemExit(f"{len(result.failures)} shapes failed to generate, e.g. {result.failures[0]}")
    return root


def warm_textures(root: Path, shape_ids: list[int]) -> None:
    """Fills the root's texture cache with every texture these shapes use, so that the timed
    `materials` stage is what a long farm run pays (read the cached texture, make the Blender
    image and material), not the one-off procedural generation of each texture."""
    from pipelines.texture_bank import open_bank
    from zeroverse.store.manifest import Manifest
    from zeroverse.store.shape_io import read_shape_rows

    bank = open_bank(Manifest.load(root / "shapes").config.get("textures", {}), root)
    for row in read_shape_rows(root / "shapes", shape_ids):
        for texture_id in set(row["region_textures"]):
            bank.get(int(texture_id))


def run(root: Path, settings: RenderSettings, views: int, procs: int, shards_per_proc: int, shapes_per_shard: int, keep: Path | None = None,
        gpus: list[int] | None = None) -> dict:
    """`procs` processes, each rendering a warm-up shape and then `shards_per_proc` shards; views
    go to a temporary root (or to `keep`, e.g. to compare two runs' images). With `gpus`,
    process p renders on gpus[p % len(gpus)] (as CUDA numbers them here)."""
    from zeroverse.scene.gpu_devices import pool_worker_device

    from pipelines.render import view_shard_plan
    from zeroverse.store.manifest import Manifest

    ids = Manifest.load(root / "shapes").shape_ids()
    plan = view_shard_plan(ids, shapes_per_shard)
    need = procs * (shards_per_proc + 1)
    if len(plan) < need:
        raise SystemExit(f"root has {len(plan)} shards of {shapes_per_shard} shapes; need {need} (generate more shapes)")
    warm_textures(root, [sid for task in plan[:need] for sid in task.shape_ids])
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(procs)
    out = keep if keep is not None else Path(tempfile.mkdtemp(prefix="zv-bench-render-"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    jobs = [(Job(str(root), str(out), settings, views, plan[p * (shards_per_proc + 1):(p + 1) * (shards_per_proc + 1)],
                 pool_worker_device(p, gpus, visible)), barrier) for p in range(procs)]  # fmt: skip
    try:
        with ctx.Pool(procs) as pool:
            results = pool.map(_worker, jobs)
    finally:
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["views"] for r in results)
    return {
        "procs": procs,
        "views": total,
        "views_per_s": total / span,
        "core_s_per_view": sum(r["cpu"] for r in results) / total,
        "median_warmup_s": statistics.median(r["warmup"] for r in results),
        # Median over every timed shard of every process, per view (render_timing.STAGES).
        "stages_ms": {k: round(v * 1e3, 3) for k, v in per_view_medians([st for r in results for st in r["stages"]]).items()},
        "stages_cpu_ms": {k: round(v * 1e3, 3) for k, v in per_view_medians([st for r in results for st in r["stages"]], "cpu_seconds").items()},
        "stage_records": [st for r in results for st in r["stages"]],
        "devices": [r["device"] for r in results],
    }


def check_against_cycles(root: Path, engine: str, resolution: int) -> dict:
    """Depth and silhouette of `engine` against Cycles (CPU) for the same shape and camera."""
    import numpy as np

    from blender_scripts.render_views import BlenderRenderer
    from pipelines.view_writer import shape_mesh
    from pipelines.texture_bank import open_bank
    from zeroverse.scene.cameras import RigConfig, make_cameras, rig_rng
    from zeroverse.scene.render_settings import RenderSettings
    from zeroverse.store.manifest import Manifest
    from zeroverse.store.shape_io import read_shape_rows

    shapes = Manifest.load(root / "shapes")
    row = next(read_shape_rows(root / "shapes", [shapes.shape_ids()[0]]))
    mesh, textures = shape_mesh(row)
    bank = open_bank(shapes.config.get("textures", {}), root)
    cams = make_cameras(RigConfig(num_views=2), rig_rng(0, row["shape_id"]), resolution, float(np.linalg.norm(mesh.vertices, axis=1).max()))
    out = {}
    for name in ("cycles", engine):
        renderer = BlenderRenderer(RenderSettings(engine=name, resolution=resolution, samples=8, threads=os.cpu_count() or 1), bank.get)
        out[name] = renderer.render_shape(mesh, textures, cams)
        renderer.close()
    a, b = out["cycles"][0], out[engine][0]
    both = (a.depth > 0) & (b.depth > 0)
    union = (a.rgba[..., 3] > 0) | (b.rgba[..., 3] > 0)
    return {
        "alpha_iou": float(both.sum() / max(1, union.sum())),
        "median_abs_depth_diff": float(np.median(np.abs(a.depth[both] - b.depth[both]))) if both.any() else float("nan"),
        "median_normal_dot": float(np.median(np.sum(a.normal[both] * b.normal[both], -1))) if both.any() else float("nan"),
    }


def compare_view_roots(old: Path, new: Path) -> dict:
    """Largest differences between two views roots of the same shapes and cameras: RGBA (8-bit
    steps), depth (relative, where both are covered; plus pixels covered in one only) and
    normals (absolute, where both are covered)."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    out = {"views": 0, "rgba_max_abs": 0, "rgba_differing_values": 0, "depth_max_rel": 0.0, "coverage_mismatch_px": 0, "normal_max_abs": 0.0}
    files = sorted(f.name for f in (old / "views").glob("*.parquet"))  # the benchmark writes shards, no manifest
    if not files or files != sorted(f.name for f in (new / "views").glob("*.parquet")):
        raise SystemExit(f"{old} and {new} hold other view shards")
    for name in files:
        a, b = (pq.read_table(root / "views" / name).to_pylist() for root in (old, new))
        if [(r["shape_id"], r["view"]) for r in a] != [(r["shape_id"], r["view"]) for r in b]:
            raise SystemExit(f"{name}: the two runs hold other views")
        for ra, rb in zip(a, b):
            h, w = ra["height"], ra["width"]
            rgba = [np.asarray(Image.open(io.BytesIO(r["rgba"])).convert("RGBA"), np.int16) for r in (ra, rb)]
            depth = [np.frombuffer(r["depth"], "<f4").reshape(h, w) for r in (ra, rb)]
            normal = [np.frombuffer(r["normal"], "<f2").reshape(h, w, 3).astype(np.float32) for r in (ra, rb)]
            both = (depth[0] > 0) & (depth[1] > 0)
            diff = np.abs(rgba[0] - rgba[1])
            out["views"] += 1
            out["rgba_max_abs"] = max(out["rgba_max_abs"], int(diff.max()))
            out["rgba_differing_values"] += int((diff > 0).sum())
            out["coverage_mismatch_px"] += int(((depth[0] > 0) != (depth[1] > 0)).sum())
            if both.any():
                rel = np.abs(depth[0][both] - depth[1][both]) / depth[0][both]
                out["depth_max_rel"] = max(out["depth_max_rel"], float(rel.max()))
                out["normal_max_abs"] = max(out["normal_max_abs"], float(np.abs(normal[0][both] - normal[1][both]).max()))
    return out


def _tree_cpu(root_pid: int, seen: dict) -> None:
    """Adds the CPU seconds (user + system) of `root_pid` and every descendant to `seen`, keyed
    by (pid, start time) so that a reused pid is another process; sampled, so a process's last
    moments after the final sample are missed (Ray's workers live for the whole run)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        # after the command name: state ppid ... utime(12) stime(13) ... starttime(20)
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, (fields[19], name))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            seen[(pid, stats[pid][2])] = stats[pid][1]
        todo.extend(children.get(pid, []))


def run_cli_render(src: Path, root: Path, shapes: int, args) -> dict:
    """`zeroverse render` of the first `shapes` shapes of a fresh copy of `root`'s shapes (code
    from `src`), as a user runs it; wall time and the CPU of the whole process tree (the driver,
    Ray's daemons and workers, Blender)."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="zv-bench-e2e-"))
    try:
        for part in ("shapes", "textures"):
            if (root / part).exists():
                shutil.copytree(root / part, work / part)
        cmd = [sys.executable, "-m", "zeroverse.cli", "render", "--root", str(work), "--views", str(args.views),
               "--resolution", str(args.resolution), "--engine", args.engine, "--samples", str(args.samples_resolved),
               "--limit", str(shapes), "--workers", str(args.e2e_workers), "--shapes-per-shard", str(args.shapes_per_shard),
               "--no-progress"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(src))
        env.pop("RAY_ADDRESS", None)
        seen: dict = {}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.25)
        wall = time.perf_counter() - start
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"zeroverse render failed ({proc.returncode}):\n{err[-3000:]}")
        by_name: dict[str, float] = {}
        for (_, (_, name)), cpu in seen.items():
            by_name[name] = by_name.get(name, 0.0) + cpu
        return {"shapes": shapes, "views": shapes * args.views, "wall_s": wall, "cpu_s": sum(seen.values()),
                "cpu_s_by_process": dict(sorted(by_name.items(), key=lambda kv: -kv[1])), "output": out.strip().splitlines()[-1:]}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def end_to_end(src: Path, root: Path, args) -> dict:
    """Core-seconds per view through `zeroverse render`, as the difference of two runs of
    different size (Ray's start-up and the first shape's warm-up cancel)."""
    small, large = (int(x) for x in args.e2e.split(","))
    a, b = (run_cli_render(src, root, n, args) for n in (small, large))
    views = b["views"] - a["views"]
    wall = (b["wall_s"] - a["wall_s"]) / views
    # Two readings of "core-seconds per view": the CPU every process of the run burnt (Blender's
    # thread pools spin while they wait, so this exceeds the work on an idle box), and the
    # capacity the run occupied: workers x wall time, what a farm of one worker per core pays.
    return {"runs": [a, b], "cpu_core_s_per_view": (b["cpu_s"] - a["cpu_s"]) / views, "wall_s_per_view": wall,
            "capacity_core_s_per_view": args.e2e_workers * wall, "workers": args.e2e_workers}  # fmt: skip


def export_rev(rev: str, dest: Path) -> Path:
    """The code of git revision `rev`, exported into `dest` (once)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    if not dest.exists():
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_baseline(rev: str, root: Path, args, keep: Path) -> dict:
    """The same benchmark with the code of git revision `rev` (exported with `git archive`), in
    a process of its own; returns its --json report. `rev` must have --json and --keep-views."""
    import subprocess

    src = export_rev(rev, keep.parent / f"src-{rev}")
    report = keep.parent / f"baseline-{keep.name}.json"
    cmd = [sys.executable, str(src / "bench" / "render.py"), "--root", str(root), "--engine", args.engine, "--resolution", str(args.resolution),
           "--samples", str(args.samples_resolved), "--views", str(args.views), "--procs", args.procs, "--threads", str(args.threads),
           "--shards-per-proc", str(args.shards_per_proc), "--shapes-per-shard", str(args.shapes_per_shard),
           "--denoise" if args.denoise else "--no-denoise", "--json", str(report), "--keep-views", str(keep)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(src))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())["runs"][0]


def parse_option(text: str) -> tuple[str, object]:
    """NAME=VALUE -> (name, value) with VALUE read as JSON where it can be (true, 4, 0.5), else a string."""
    import json

    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--eevee-option {text!r}: write NAME=VALUE, e.g. use_fast_gi=false")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def main() -> None:
    p = argparse.ArgumentParser(description="End-to-end render throughput (views/s) per process count, and where a view's time goes.")
    p.add_argument("--root", type=Path, default=None, help="a generated root (default: generate --shapes shapes into a temporary one)")
    p.add_argument("--shapes", type=int, default=48, help="shapes of the generated root when --root is not given")
    p.add_argument("--engine", default="cycles", choices=["cycles", "eevee", "workbench"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--samples", type=int, default=None, help="default: EEVEE 16, Cycles 8")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True, help="Cycles: OpenImageDenoise (--no-denoise to time the rest)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--procs", default="1", help="comma-separated process counts, e.g. 1,2,4")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per Blender process")
    p.add_argument("--shards-per-proc", type=int, default=2)
    p.add_argument("--shapes-per-shard", type=int, default=2)
    p.add_argument("--check", action="store_true", help="compare depth/alpha against Cycles for one view")
    p.add_argument("--json", type=Path, default=None, help="also write the figures and the per-stage table here")
    p.add_argument("--keep-views", type=Path, default=None, help="write the views here (one process count only) instead of a temporary root")
    p.add_argument("--baseline", default=None, metavar="REV",
                   help="also run git revision REV's code on the same shapes (alternating, --rounds times), print both "
                        "tables side by side and the largest image differences between the two")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="with --baseline: old/new pairs to run (medians over rounds)")
    p.add_argument("--gpus", default=None, help="spread the processes over these devices, round-robin (e.g. 0,1)")
    p.add_argument("--eevee-option", action="append", default=[], metavar="NAME=VALUE",
                   help="an EEVEE scene setting on top of the defaults, e.g. use_fast_gi=false (repeatable)")
    p.add_argument("--e2e", default=None, metavar="SMALL,LARGE",
                   help="instead: core-seconds per view through `zeroverse render` itself (Ray, default render settings), "
                        "from two runs of SMALL and LARGE shapes (their difference: Ray's start-up cancels); with --baseline, "
                        "REV's code too")  # fmt: skip
    p.add_argument("--e2e-workers", type=int, default=os.cpu_count() or 1, help="--workers of those `zeroverse render` runs (default: one per core)")
    args = p.parse_args()
    args.samples_resolved = samples = args.samples or (16 if args.engine == "eevee" else 8)
    procs = [int(x) for x in args.procs.split(",")]
    if (args.keep_views is not None or args.baseline) and len(procs) > 1:
        p.error("--keep-views and --baseline take one process count")
    root = args.root
    if root is None:
        root = make_root(Path(tempfile.mkdtemp(prefix="zv-bench-root-")), args.shapes)
    settings = RenderSettings(engine=args.engine, resolution=args.resolution, samples=samples, denoise=args.denoise, threads=args.threads,
                              eevee_options=tuple(parse_option(o) for o in args.eevee_option))
    report = {"settings": settings.to_dict(), "views_per_shape": args.views, "shapes_per_shard": args.shapes_per_shard}
    if args.e2e:
        repo = Path(__file__).resolve().parents[1]
        sides = {"new": repo}
        work = Path(tempfile.mkdtemp(prefix="zv-bench-e2e-src-"))
        try:
            if args.baseline:
                sides = {"old": export_rev(args.baseline, work / "old"), **sides}
            results = {side: end_to_end(src, root, args) for side, src in sides.items()}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"zeroverse render end to end ({args.e2e_workers} worker(s), {args.views} views/shape, {args.shapes_per_shard} shapes/shard, "
              f"default denoising), the difference of {args.e2e.replace(',', ' and ')} shapes:")  # fmt: skip
        for side, r in results.items():
            a, b = r["runs"]
            print(f"  {side}: {r['capacity_core_s_per_view']:.3f} core-s/view as workers x wall, {r['cpu_core_s_per_view']:.3f} as CPU burnt; "
                  f"{r['wall_s_per_view']:.3f} s/view wall "
                  f"(runs: {a['views']} views {a['wall_s']:.1f} s / {a['cpu_s']:.1f} core-s, {b['views']} views {b['wall_s']:.1f} s / {b['cpu_s']:.1f} core-s)")  # fmt: skip
            names = sorted(set(a["cpu_s_by_process"]) | set(b["cpu_s_by_process"]), key=lambda n: -b["cpu_s_by_process"].get(n, 0.0))
            per_view = {n: (b["cpu_s_by_process"].get(n, 0.0) - a["cpu_s_by_process"].get(n, 0.0)) / (b["views"] - a["views"]) for n in names}
            print("    core-s/view by process: " + ", ".join(f"{n} {v:.3f}" for n, v in per_view.items() if abs(v) >= 0.005))
        report["e2e"] = results
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
        return
    print(f"render benchmark: engine {args.engine}, {args.resolution}², {samples} samples{'' if args.denoise or args.engine != 'cycles' else ' (no denoising)'}, {args.views} views/shape, "
          f"{args.threads} thread(s)/process, end to end (build + render + encode + write)")
    if args.baseline:
        work = Path(tempfile.mkdtemp(prefix="zv-bench-compare-"))
        old_runs, new_runs = [], []
        try:
            for k in range(args.rounds):
                old_runs.append(run_baseline(args.baseline, root, args, work / f"old-{k}"))
                new_runs.append(run(root, settings, args.views, procs[0], args.shards_per_proc, args.shapes_per_shard, work / f"new-{k}"))
            images = compare_view_roots(work / "old-0", work / "new-0")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        medians = {}
        for side, runs in (("old", old_runs), ("new", new_runs)):
            for key, title in (("stages_ms", "wall"), ("stages_cpu_ms", "CPU")):
                stages = {k for r in runs for k in r[key]}
                medians[f"{side} {title}"] = {k: statistics.median(r[key][k] for r in runs if k in r[key]) / 1e3 for k in stages}
            medians[f"{side} views/s"] = statistics.median(r["views_per_s"] for r in runs)
            medians[f"{side} core-s/view"] = statistics.median(r["core_s_per_view"] for r in runs)
        print(f"{procs[0]} process(es), {args.rounds} round(s) of old ({args.baseline}) then new, medians over rounds")
        for side in ("old", "new"):
            print(f"{side}: {medians[f'{side} views/s']:.2f} views/s, {medians[f'{side} core-s/view']:.3f} core-s/view")
        columns = {t: medians[t] for t in ("old wall", "new wall", "old CPU", "new CPU")}
        print(format_table(columns, overlapped_stages([st for r in new_runs for st in r["stage_records"]])))
        print("images, old vs new:", images)
        report.update(baseline=args.baseline, rounds=args.rounds, old=old_runs, new=new_runs, medians=medians, images=images)
    else:
        gpus = parse_gpu_list(args.gpus)
        rows = [run(root, settings, args.views, n, args.shards_per_proc, args.shapes_per_shard, args.keep_views, gpus) for n in procs]
        print(f"{'processes':>9} {'views':>6} {'views/s':>9} {'core-s/view':>12} {'warm-up s':>10}")
        for r in rows:
            print(f"{r['procs']:>9} {r['views']:>6} {r['views_per_s']:>9.2f} {r['core_s_per_view']:>12.3f} {r['median_warmup_s']:>10.1f}")
        print()
        columns = {}
        for r in rows:
            columns[f"{r['procs']}p wall"] = {k: v / 1e3 for k, v in r["stages_ms"].items()}
            columns[f"{r['procs']}p CPU"] = {k: v / 1e3 for k, v in r["stages_cpu_ms"].items()}
        print(format_table(columns, overlapped_stages([st for r in rows for st in r["stage_records"]])))
        devices = sorted({json.dumps(d, sort_keys=True) for r in rows for d in r["devices"]})
        print("rendered on:", "; ".join(devices))
        report["runs"] = rows
    if args.check:
        report["check_vs_cycles"] = check_against_cycles(root, args.engine, 128)
        print("check vs cycles:", report["check_vs_cycles"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
