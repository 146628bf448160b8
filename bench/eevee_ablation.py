"""Where EEVEE's render call spends its time: one change at a time, side by side in one run.

Blender's render call is ~90% of a farm view on a GPU (512², 16 spp, 12 processes on one H200).
This bench keeps N long-lived Blender processes (as the farm does) and renders the same shapes
and cameras under each variant in turn: all processes start a variant together (a barrier), so
the aggregate views/s of two variants are measured minutes apart on the same warm GPU, and with
the GPU full, 1000 / views/s is the GPU time a view costs. Each process also compares every
variant's images with its own baseline images (PSNR over RGBA8), so a faster setting comes with
how much it changes the data. What it found is in the README ("Against the goals") and
bench/results/eevee_ablation_512.json: 8.5 ms per render call + 1.22 ms per sample.

    python3.11 bench/eevee_ablation.py --root ROOT --procs 12 --gpus 0 --resolution 512 --views 8 \
        --shapes 24 --json out.json

Variants set EEVEE / render / view-layer / world properties (checked against this Blender) or
change the scene ("scene:" keys): one plain material, the same shape again and again (and the
same camera), an empty frame, a camera farther away, a box instead of the shape, another shader,
several cameras per render call (multi-view) or one animation render per shape.
`--gpu-backend VULKAN` asks Blender for its Vulkan backend (bpy 5.0.1 on an H200 stayed on
OpenGL). On a CPU box the same code runs with `--engine cycles` at toy size
(tests/test_bench_smoke.py): EEVEE-only knobs are then skipped and reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> {"eevee.X" | "render.X" | "layer.X" | "world.X": value}; "scene:..." entries are handled in code.
VARIANTS: dict[str, dict] = {
    "baseline": {},  # the farm's settings (since the first run below: EEVEE shadows off)
    "shadows_on": {"eevee.use_shadows": True},  # the 2026-11-30 baseline: 0.73x, same pixels
    "no_fast_gi": {"eevee.use_fast_gi": False},
    "fast_gi_low": {"eevee.fast_gi_step_count": 2, "eevee.fast_gi_resolution": "4"},
    "no_depth_normal": {"layer.use_pass_z": False, "layer.use_pass_normal": False},
    "opaque_film": {"render.film_transparent": False},
    "samples_8": {"eevee.taa_render_samples": 8},
    "one_material": {"scene:one_material": True},
    "same_shape": {"scene:same_shape": True},
    "world_probe_128": {"world.probe_resolution": "128"},
    "shadow_pool_16": {"eevee.shadow_pool_size": "16"},
    "no_post": {"render.use_compositing": False, "render.use_sequencer": False},
    # 4 cameras rendered by one render call (Blender's multi-view, one multi-part EXR): does the
    # per-call cost (scene sync, probes, read-back set-up) amortise? Timing only, no PSNR.
    "multiview_4": {"scene:multiview": 4},
    # Where a view's GPU time goes, by taking content away (timing only unless noted):
    "samples_1": {"eevee.taa_render_samples": 1},  # with samples_8 and baseline: fixed vs per-sample
    "samples_4": {"eevee.taa_render_samples": 4},
    "samples_16": {"eevee.taa_render_samples": 16},  # with --samples 64: how far 16 spp is from converged
    "res_256": {"render.resolution_x": 256, "render.resolution_y": 256},  # per-pixel vs per-pass
    "res_1024": {"render.resolution_x": 1024, "render.resolution_y": 1024},
    "empty_frame": {"scene:empty": True},  # no shape: EEVEE's floor for a frame with nothing to shade
    "far_camera_2x": {"scene:camera_distance": 2.0},  # a quarter of the covered pixels
    "cube": {"scene:cube": True},  # 12 triangles, one plain material: geometry and textures out
    "fixed_camera": {"scene:same_shape": True, "scene:fixed_camera": True},  # nothing changes between calls
    # Indirect clamp 0 (off): EEVEE then packs direct + indirect light once instead of keeping three
    # full-resolution indirect textures per sample; a uniform world of strength ~1 never clamps.
    "clamp_off": {"eevee.clamp_surface_indirect": 0.0},
    "no_sky": {"layer.use_sky": False},
    # What the Principled BSDF's two closures cost per covered pixel: the same texture through a
    # Diffuse BSDF (one closure) or an Emission shader (no light evaluation). Different pixels.
    "diffuse_bsdf": {"scene:shader": "ShaderNodeBsdfDiffuse"},
    "emission": {"scene:shader": "ShaderNodeEmission"},
    "filter_0": {"render.filter_size": 0.0},  # one film tap instead of ~9: different pixels
    "no_volumes": {"layer.use_volumes": False},
    # All views of a shape as the frames of one animation render (camera keyframed per frame):
    # does one render call per shape instead of per view save anything? PSNR: frame 1 vs view 0.
    "animation": {"scene:animation": True},
}


def _targets(bpy) -> dict:
    scene = bpy.context.scene
    return {"eevee": scene.eevee, "render": scene.render, "layer": scene.view_layers[0], "world": scene.world}


def apply_variant(bpy, variant: dict) -> tuple[dict, list[str]]:
    """Sets the variant's properties; returns the previous values (to restore) and the knobs
    this Blender/engine does not have (skipped)."""
    targets, previous, skipped = _targets(bpy), {}, []
    for key, value in variant.items():
        if key.startswith("scene:"):
            continue
        where, name = key.split(".", 1)
        owner = targets[where]
        if where == "eevee" and bpy.context.scene.render.engine != "BLENDER_EEVEE" or not hasattr(owner, name):
            skipped.append(key)
            continue
        previous[key] = getattr(owner, name)
        setattr(owner, name, value)
    return previous, skipped


def restore(bpy, previous: dict) -> None:
    targets = _targets(bpy)
    for key, value in previous.items():
        where, name = key.split(".", 1)
        setattr(targets[where], name, value)


def rgba_of(channels: dict):
    """Straight-alpha sRGB8 RGBA from the Combined pass alone, the same way for every variant
    (some variants have no depth/normal passes), so PSNRs compare like with like."""
    import numpy as np

    def plane(name: str) -> np.ndarray:
        return next(v for k, v in channels.items() if k.endswith(f"Combined.{name}"))

    alpha = np.clip(plane("A"), 0.0, 1.0)
    rgb = np.clip(np.stack([plane(c) for c in "RGB"], -1) / np.maximum(alpha, 1e-6)[..., None], 0.0, 1.0)
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    return np.rint(np.concatenate([srgb, alpha[..., None]], -1) * 255.0).astype(np.uint8)


def psnr(a, b) -> float | None:
    import numpy as np

    if a.shape != b.shape:  # a variant that changes the resolution: nothing to compare
        return None
    err = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if err == 0 else 10.0 * math.log10(255.0**2 / err)


def worker(rank: int, device: int | None, args: dict, barrier, results) -> None:
    """One long-lived Blender: renders its shapes under every variant, in the order given."""
    from blender_scripts.gpu_binding import bind_render_device

    bind_render_device(device)
    if args["gpu_backend"]:
        os.environ["BLENDER_USER_CONFIG"] = tempfile.mkdtemp(prefix="zv-blender-config-")
    import bpy
    import numpy as np

    from blender_scripts.render_views import SHAPE_PREFIX, BlenderRenderer, quiet_stdout
    from zeroverse.scene.imageio import read_exr_channels
    from pipelines.texture_bank import open_bank
    from zeroverse.scene.render_timing import StageClock
    from zeroverse.scene.cameras import RigConfig, make_cameras, rig_rng
    from zeroverse.scene.primitives import MeshArrays
    from zeroverse.scene.render_settings import RenderSettings
    from zeroverse.store.fs import read_table
    from zeroverse.store.manifest import Manifest
    from zeroverse.store.shape_io import ShapeRecord

    root = Path(args["root"])
    shapes = Manifest.load(root / "shapes")
    rows = []
    for shard in sorted(shapes.shards, key=lambda s: s["first"]):
        rows += read_table(root / "shapes" / shard["file"]).to_pylist()
    rows = rows[: args["shapes"]][rank :: args["procs"]]
    settings = RenderSettings(engine=args["engine"], resolution=args["resolution"], samples=args["samples"], threads=1)
    bank = open_bank(shapes.config.get("textures", {}), root)
    renderer = BlenderRenderer(settings, bank.get, device=device)
    if args["gpu_backend"]:
        # Blender picks its GPU backend when it loads preferences (wm_init_userdef), not when it
        # makes the context: the factory settings BlenderRenderer loaded chose OpenGL. Save the
        # preference into a private config folder and load it back, before the first render.
        bpy.context.preferences.system.gpu_backend = args["gpu_backend"]
        bpy.ops.wm.save_userpref()
        bpy.ops.wm.read_userpref()
    rig = RigConfig(num_views=args["views"])
    work = []
    for row in rows:
        record = ShapeRecord.from_row(row)
        mesh = MeshArrays(record.vertices, record.faces, record.uvs, record.regions)
        bound = float(np.linalg.norm(mesh.vertices, axis=1).max())
        work.append((int(row["shape_id"]), mesh, record.region_textures, make_cameras(rig, rig_rng(shapes.seed, int(row["shape_id"])), settings.resolution, bound)))
    plain = bpy.data.materials.new("zv_plain")
    plain.use_fake_user = True  # clear_shape purges orphans
    baseline: dict[tuple[int, int], np.ndarray] = {}

    def render_one(cameras, v, clock, keep: bool):
        channels = renderer.render_view(cameras.c2w[v], cameras.intrinsics[v], cameras.projections[v], clock)
        return rgba_of(channels) if keep else None

    def render_group(cameras, views: list[int], clock) -> None:
        """Views `views` of `cameras` in one multi-view render call, written to one EXR."""
        main = bpy.data.objects["zv_camera"]
        for k, v in enumerate(views):
            renderer.place_camera(cameras.c2w[v], cameras.intrinsics[v], cameras.projections[v])
            cam = mv_cameras[k]
            for attr in ("type", "lens", "ortho_scale", "shift_x", "shift_y", "sensor_width", "sensor_fit", "clip_start", "clip_end"):
                setattr(cam.data, attr, getattr(main.data, attr))
            cam.matrix_world = main.matrix_world.copy()
        for k, view in enumerate(mv_views):
            view.use = k < len(views)
        with quiet_stdout(), clock("render"):
            bpy.ops.render.render(write_still=True)

    mv_cameras, mv_views = [], []

    def multiview(k: int) -> None:
        """Sets up (k > 0) or takes down (k == 0) k cameras rendered by one call."""
        scene, render = bpy.context.scene, bpy.context.scene.render
        if k == 0:
            render.use_multiview = False
            render.image_settings.views_format = "INDIVIDUAL"
            scene.camera = bpy.data.objects["zv_camera"]
            render.filepath = renderer.exr_path
            return
        for i in range(len(mv_cameras), k):
            cam = bpy.data.objects.new(f"zvmv_v{i}", bpy.data.cameras.new(f"zvmv_v{i}"))
            cam.use_fake_user = True
            scene.collection.objects.link(cam)
            mv_cameras.append(cam)
            view = render.views.new(f"v{i}")
            view.camera_suffix = f"_v{i}"
            mv_views.append(view)
        for view in render.views:
            view.use = view in mv_views
        render.use_multiview = True
        render.views_format = "MULTIVIEW"
        render.image_settings.views_format = "MULTIVIEW"
        render.filepath = os.path.join(os.path.dirname(renderer.exr_path), "multiview.exr")
        scene.camera = mv_cameras[0]

    def add(sid, mesh, textures, cameras, one_material, kind=None):
        """The shape into the scene (kind "empty": nothing; "cube": a 12-triangle box of the
        shape's size with the plain material)."""
        renderer.clear_shape()
        renderer.set_clip(cameras.near, cameras.far)
        if kind == "empty":
            return
        if kind == "cube":
            lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
            corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
            quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
            data = bpy.data.meshes.new(f"{SHAPE_PREFIX}_cube")
            data.from_pydata([tuple(map(float, c)) for c in corners], [], quads)
            data.materials.append(plain)
            bpy.context.scene.collection.objects.link(bpy.data.objects.new(f"{SHAPE_PREFIX}_cube", data))
            return
        obj = renderer.add_shape(mesh, textures, StageClock())
        if one_material:
            obj.data.materials.clear()
            obj.data.materials.append(plain)
        if shader:
            for slot, mat in enumerate(obj.data.materials):
                obj.data.materials[slot] = swapped_shader(mat, shader)

    swapped: dict[tuple[str, str], object] = {}

    def swapped_shader(mat, node_type: str):
        """A copy of a farm material whose image texture feeds `node_type` instead of the
        Principled BSDF (cached, kept through orphan purges)."""
        key = (mat.name, node_type)
        if key not in swapped:
            new = mat.copy()
            new.use_fake_user = True
            nodes, links = new.node_tree.nodes, new.node_tree.links
            nodes.remove(nodes["Principled BSDF"])
            node = nodes.new(node_type)
            links.new(nodes["Image Texture"].outputs["Color"], node.inputs["Color"])
            links.new(node.outputs[0], nodes["Material Output"].inputs["Surface"])
            swapped[key] = new
        return swapped[key]

    def render_animation(cameras, clock) -> str:
        """Every camera of `cameras` as one frame of an animation, in one render call; returns
        frame 1's EXR path."""
        scene, cam = bpy.context.scene, bpy.data.objects["zv_camera"]
        for v in range(len(cameras.c2w)):
            renderer.place_camera(cameras.c2w[v], cameras.intrinsics[v], cameras.projections[v])
            for path in ("location", "rotation_euler", "scale"):
                cam.keyframe_insert(path, frame=v + 1)
            for path in ("lens", "ortho_scale", "shift_x", "shift_y"):
                cam.data.keyframe_insert(path, frame=v + 1)
        scene.frame_start, scene.frame_end = 1, len(cameras.c2w)
        scene.render.filepath = os.path.join(os.path.dirname(renderer.exr_path), "anim_")
        try:
            with quiet_stdout(), clock("render"):
                bpy.ops.render.render(animation=True)
            return scene.render.frame_path(frame=1)
        finally:
            cam.animation_data_clear()
            cam.data.animation_data_clear()
            scene.frame_set(1)
            scene.render.filepath = renderer.exr_path

    for name in args["variants"]:
        variant = VARIANTS[name]
        previous, skipped = apply_variant(bpy, variant)
        one_material, same_shape = variant.get("scene:one_material", False), variant.get("scene:same_shape", False)
        group = variant.get("scene:multiview", 0)
        kind = "empty" if variant.get("scene:empty") else "cube" if variant.get("scene:cube") else None
        fixed_camera, animation = variant.get("scene:fixed_camera", False), variant.get("scene:animation", False)
        distance = variant.get("scene:camera_distance", 1.0)
        shader = variant.get("scene:shader")

        def moved(cameras):
            """The cameras `distance` times as far from the shape's centre (same look-at)."""
            if distance == 1.0:
                return cameras
            c2w = cameras.c2w.copy()
            c2w[:, :3, 3] *= distance
            return dataclasses.replace(cameras, c2w=c2w, far=cameras.far * distance)

        multiview(group)
        # Warm-up outside the clock: a variant that changes the shaders compiles them here.
        sid, mesh, textures, cameras = work[0]
        add(sid, mesh, textures, moved(cameras), one_material, kind)
        t = time.perf_counter()
        render_group(cameras, list(range(min(group, len(cameras.c2w)))), StageClock()) if group else render_one(moved(cameras), 0, StageClock(), keep=False)
        warm_s = time.perf_counter() - t
        barrier.wait()
        clock, first_view, later_views, scores = StageClock(), [], [], []
        t0, cpu0 = time.perf_counter(), time.process_time()
        views = 0
        for k, (sid, mesh, textures, cameras) in enumerate(work):
            cameras = moved(cameras)
            if same_shape:  # the first shape's views again and again: no per-shape work
                sid, mesh, textures, cameras = work[0]
                cameras = moved(cameras)
                if k == 0:
                    add(sid, mesh, textures, cameras, one_material, kind)
            else:
                with clock("scene"):
                    add(sid, mesh, textures, cameras, one_material, kind)
            if animation:
                before = clock.seconds.get("render", 0.0)
                frame1 = render_animation(cameras, clock)
                later_views.append((clock.seconds.get("render", 0.0) - before) / len(cameras.c2w))
                views += len(cameras.c2w)
                if (sid, 0) in baseline:
                    score = psnr(rgba_of(read_exr_channels(frame1)), baseline[(sid, 0)])
                    scores += [] if score is None else [score]
                continue
            if group:
                for first in range(0, len(cameras.c2w), group):
                    views_now = list(range(first, min(first + group, len(cameras.c2w))))
                    before = clock.seconds.get("render", 0.0)
                    render_group(cameras, views_now, clock)
                    (first_view if first == 0 else later_views).append((clock.seconds.get("render", 0.0) - before) / len(views_now))
                    views += len(views_now)
                continue
            for v in range(len(cameras.c2w)):
                keep = v == 0 and not same_shape and kind is None and distance == 1.0 and not shader
                v = 0 if fixed_camera else v
                before = clock.seconds.get("render", 0.0)
                rgba = render_one(cameras, v, clock, keep)
                (first_view if v == 0 else later_views).append(clock.seconds.get("render", 0.0) - before)
                views += 1
                if rgba is not None:
                    if name == "baseline":
                        baseline[(sid, v)] = rgba
                    elif (sid, v) in baseline and (score := psnr(rgba, baseline[(sid, v)])) is not None:
                        scores.append(score)
        t1, cpu1 = time.perf_counter(), time.process_time()
        renderer.clear_shape()
        barrier.wait()
        restore(bpy, previous)
        multiview(0)
        results.put({"variant": name, "rank": rank, "device": renderer.device_report(), "t0": t0, "t1": t1, "views": views, "warm_s": warm_s,
                     "stages": dict(clock.seconds), "cpu_s": cpu1 - cpu0, "first_view_s": first_view, "later_view_s": later_views,
                     "psnr": scores, "skipped": skipped})
    renderer.close()


def gpu_sampler(stop: threading.Event, samples: list) -> None:
    """nvidia-smi's utilisation and memory per GPU every 0.5 s (nothing where there is no GPU)."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            samples.append((time.perf_counter(), [tuple(float(x) for x in line.split(",")) for line in out.strip().splitlines()]))
        except (OSError, subprocess.SubprocessError, ValueError):
            return
        stop.wait(0.5)


def median(values: list[float]) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def run(args, variants: list[str], gpus: list[int]) -> list[dict]:
    """Starts the processes, collects every (variant, process) result, one row per variant."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.procs), ctx.Queue()
    shared = {**vars(args), "root": str(args.root), "variants": variants, "json": None}
    procs = [ctx.Process(target=worker, args=(r, gpus[r % len(gpus)] if gpus else None, shared, barrier, results)) for r in range(args.procs)]
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=gpu_sampler, args=(stop, samples), daemon=True)
    sampler.start()
    for proc in procs:
        proc.start()
    got = []
    while len(got) < args.procs * len(variants):
        try:
            got.append(results.get(timeout=30))
        except Exception:  # noqa: BLE001 - queue.Empty: is everyone still alive?
            if any(proc.exitcode not in (None, 0) for proc in procs):
                raise SystemExit(f"a Blender process died (exit codes {[proc.exitcode for proc in procs]})")
    for proc in procs:
        proc.join()
    stop.set()
    rows = []
    for name in variants:
        parts = [g for g in got if g["variant"] == name]
        t0, t1 = min(g["t0"] for g in parts), max(g["t1"] for g in parts)
        views = sum(g["views"] for g in parts)
        during = [s for t, s in samples if t0 <= t <= t1]
        util = {int(idx): median([s[i][1] for s in during]) for i, (idx, *_rest) in enumerate(during[0])} if during else {}
        stages = {}
        for g in parts:
            for k, v in g["stages"].items():
                stages[k] = stages.get(k, 0.0) + v
        row = {
            "variant": name,
            "views_per_s": views / max(t1 - t0, 1e-9),
            "views": views,
            "render_ms_first_view": 1e3 * median([x for g in parts for x in g["first_view_s"]]),
            "render_ms_later_views": 1e3 * median([x for g in parts for x in g["later_view_s"]]),
            "stage_ms_per_view": {k: 1e3 * v / views for k, v in sorted(stages.items())},
            "cpu_ms_per_view": 1e3 * sum(g["cpu_s"] for g in parts) / views,
            "warm_up_s": median([g["warm_s"] for g in parts]),
            "psnr_vs_baseline_db": median([x for g in parts for x in g["psnr"]]) if name != "baseline" else None,
            "psnr_min_db": min([x for g in parts for x in g["psnr"]], default=None) if name != "baseline" else None,
            "gpu_util_median": util,
            "device": parts[0]["device"],
            "skipped": sorted({k for g in parts for k in g["skipped"]}),
        }
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="a generated root (default: generate --shapes shapes into a temporary one)")
    p.add_argument("--engine", default="eevee", choices=["eevee", "cycles", "workbench"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--shapes", type=int, default=24)
    p.add_argument("--procs", type=int, default=12)
    p.add_argument("--gpus", default="", help="devices to spread the processes over, round-robin (e.g. 0 or 0,1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, baseline first (known: {', '.join(VARIANTS)})")
    p.add_argument("--gpu-backend", default="", choices=["", "OPENGL", "VULKAN"], help="Blender's GPU backend (default: Blender's own, OpenGL)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or variants[:1] != ["baseline"]:
        raise SystemExit(f"--variants {args.variants!r}: start with baseline and use known names ({', '.join(VARIANTS)}); unknown: {unknown}")
    if args.shapes < args.procs:
        raise SystemExit(f"--shapes {args.shapes} < --procs {args.procs}: every process needs at least one shape")
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    with tempfile.TemporaryDirectory(prefix="zv-ablation-") as tmp:
        if args.root is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from render import make_root  # bench/render.py: the same generated root as the render bench

            args.root = make_root(Path(tmp) / "root", args.shapes)
        rows = run(args, variants, gpus)
    base = rows[0]["views_per_s"]
    print(f"{'variant':<16} {'views/s':>8} {'x base':>7} {'render ms (1st/later)':>22} {'PSNR dB':>8}  skipped")
    for r in rows:
        ps = "" if r["psnr_vs_baseline_db"] is None else f"{r['psnr_vs_baseline_db']:.1f}"
        print(f"{r['variant']:<16} {r['views_per_s']:8.2f} {r['views_per_s'] / base:7.2f} "
              f"{r['render_ms_first_view']:10.0f} / {r['render_ms_later_views']:<9.0f} {ps:>8}  {','.join(r['skipped'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"engine": args.engine, "resolution": args.resolution, "samples": args.samples, "views_per_shape": args.views,
                "shapes": args.shapes, "procs": args.procs, "gpus": gpus, "host_cores": os.cpu_count(), "gpu_backend": args.gpu_backend or "default"}
        args.json.write_text(json.dumps({"config": meta, "variants": rows}, indent=1))


if __name__ == "__main__":
    main()
