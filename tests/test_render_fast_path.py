"""The render worker's fast path against the slow reference it replaced, on real tiny Cycles
renders of generated shapes.

Fast path (pipelines.render.ViewShardWriter): render, then save_render; the EXR read as strided
views of one buffer; whole-plane pass conversion in an encode thread beside the next render;
PNG with zlib's run-length strategy; the table built column by column.
Reference (the code before, kept here verbatim): render(write_still=True); the EXR gathered line
by line; conversion by (y, x) gathers of the covered pixels; PNG at zlib level 4.

Stated tolerance (the images must stay the same): RGBA within 1/255, depth within 1e-3
relative, normals within 1e-3, the same covered pixels. Both paths are exact today (the changes
are lossless), so the test also reports whether anything at all differs.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = [pytest.mark.blender]

RGBA_TOL, DEPTH_REL_TOL, NORMAL_TOL = 1, 1e-3, 1e-3  # 8-bit steps, relative, absolute


# ---- the reference: the previous implementation, verbatim ---------------------------------------


def reference_read_exr(path: str) -> dict[str, np.ndarray]:
    from zeroverse.scene.imageio import EXR_DTYPES, EXR_SIZES, read_exr_headers

    with open(path, "rb") as f:
        buf = f.read()
    flags = struct.unpack_from("<I", buf, 4)[0]
    multipart = bool(flags & 0x1000)
    headers, pos = read_exr_headers(buf, multipart)  # header parsing is shared; the pixel path below is the old one
    out = {}
    for header in headers:
        xmin, ymin, xmax, ymax = header["dataWindow"]
        width, height = xmax - xmin + 1, ymax - ymin + 1
        count = header.get("chunkCount", height)
        offsets = np.frombuffer(buf, "<u8", count=count, offset=pos).astype(np.int64)
        pos += 8 * count
        prefix = 12 if multipart else 8
        line_bytes = sum(EXR_SIZES[t] for _, t in header["channels"]) * width
        ys = np.array([struct.unpack_from("<i", buf, int(o) + prefix - 8)[0] for o in offsets]) - ymin
        lines = np.empty((height, line_bytes), np.uint8)
        raw = np.frombuffer(buf, np.uint8)
        for y, o in zip(ys.tolist(), offsets.tolist()):
            lines[y] = raw[o + prefix:o + prefix + line_bytes]
        offset = 0
        for name, pixel_type in header["channels"]:
            n = EXR_SIZES[pixel_type] * width
            out[name] = lines[:, offset:offset + n].copy().view(EXR_DTYPES[pixel_type]).astype(np.float32)
            offset += n
    return out


def reference_passes_to_view(channels: dict[str, np.ndarray]):
    from blender_scripts.render_views import EMPTY_DEPTH, NEIGHBOURS, SRGB_LUT, SRGB_LUT_SIZE, ViewArrays, find_channel

    alpha = find_channel(channels, "Combined.A")
    h, w = alpha.shape
    alpha8 = np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
    depth = find_channel(channels, "Depth.Z")
    depth = np.where(depth < EMPTY_DEPTH, depth, np.float32(0.0)).astype(np.float32)
    normal = np.stack([find_channel(channels, f"Normal.{c}") for c in "XYZ"], -1)
    covered = alpha8 > 0
    missing = covered & (depth <= 0)
    for _ in range(2):
        if not missing.any():
            break
        ys, xs = np.nonzero(missing)
        ny = np.clip(ys[:, None] + NEIGHBOURS[None, :, 0], 0, h - 1)
        nx = np.clip(xs[:, None] + NEIGHBOURS[None, :, 1], 0, w - 1)
        candidates = depth[ny, nx]
        candidates = np.where(candidates > 0, candidates, np.inf)
        best = np.argmin(candidates, axis=1)
        found = np.isfinite(candidates[np.arange(len(ys)), best])
        by, bx = ny[np.arange(len(ys)), best][found], nx[np.arange(len(ys)), best][found]
        fy, fx = ys[found], xs[found]
        depth[fy, fx] = depth[by, bx]
        normal[fy, fx] = normal[by, bx]
        missing[fy, fx] = False
    covered &= ~missing
    alpha8[~covered] = 0
    depth[~covered] = 0.0
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = alpha8
    out_normal = np.zeros((h, w, 3), np.float32)
    ys, xs = np.nonzero(covered)
    n = normal[ys, xs]
    out_normal[ys, xs] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)
    a = np.maximum(alpha[ys, xs], 1e-6)[:, None]
    rgb = np.stack([find_channel(channels, f"Combined.{c}")[ys, xs] for c in "RGB"], -1) / a
    index = (np.clip(rgb, 0.0, 1.0) * (SRGB_LUT_SIZE - 1) + 0.5).astype(np.int32)
    rgba[ys, xs, :3] = SRGB_LUT[index]
    return ViewArrays(rgba, depth, out_normal)


# ---- the comparison --------------------------------------------------------------------------------


def assert_within_tolerance(fast: dict, ref: dict, where: str) -> bool:
    """Asserts the stated tolerance; returns whether the two are identical."""
    assert np.array_equal(fast["depth"] > 0, ref["depth"] > 0), f"{where}: covered pixels differ"
    rgba_diff = np.abs(fast["rgba"].astype(np.int16) - ref["rgba"].astype(np.int16))
    assert rgba_diff.max() <= RGBA_TOL, f"{where}: RGBA differs by {rgba_diff.max()}/255"
    both = ref["depth"] > 0
    rel = np.abs(fast["depth"][both] - ref["depth"][both]) / ref["depth"][both]
    assert rel.max(initial=0.0) <= DEPTH_REL_TOL, f"{where}: depth differs by {rel.max()} relative"
    normal_diff = np.abs(fast["normal"][both] - ref["normal"][both]).max(initial=0.0)
    assert normal_diff <= NORMAL_TOL, f"{where}: normals differ by {normal_diff}"
    return rgba_diff.max() == 0 and rel.max(initial=0.0) == 0 and normal_diff == 0


def decode_row(row: dict) -> dict:
    h, w = row["height"], row["width"]
    return {
        "rgba": np.asarray(Image.open(io.BytesIO(row["rgba"])).convert("RGBA")),
        "depth": np.frombuffer(row["depth"], "<f4").reshape(h, w),
        "normal": np.frombuffer(row["normal"], "<f2").reshape(h, w, 3).astype(np.float32),
    }


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """3 generated shapes (seed 0) with their texture bank, made without Ray. In a process of its
    own: a pool spawned from a process that has imported bpy inherits Blender's script paths in
    sys.path and its children find Blender's internal `bpy` package (No module named '_bpy')."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path_factory.mktemp("fast_path_root")
    args = [sys.executable, "-m", "zeroverse.cli", "generate", "--backend", "processes", "--root", str(root), "--n", "3", "--shard-size", "3",
            "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "3 shapes in" in proc.stdout, proc.stdout + proc.stderr[-3000:]  # exit 1 on any failed shape
    return root


@pytest.mark.parametrize("encode_thread", [False, True], ids=["inline", "encode-thread"])
def test_fast_render_path_matches_the_reference_on_real_cycles_renders(tiny_root, tmp_path, capsys, encode_thread):
    """Both ways the writer encodes: inline (Cycles' default) and in the encode thread beside
    the next render (the GPU engines' default)."""
    import bpy

    from blender_scripts.render_views import BlenderRenderer, quiet_stdout
    from pipelines.render import RenderConfig
    from pipelines.view_writer import ViewShardWriter, shape_light, shape_mesh
    from pipelines.texture_bank import open_bank
    from zeroverse.scene.cameras import RigConfig, make_cameras, rig_rng
    from zeroverse.scene.imageio import encode_png
    from zeroverse.scene.render_settings import RenderSettings
    from zeroverse.scene.render_timing import StageClock
    from zeroverse.store.manifest import Manifest
    from zeroverse.store.shape_io import read_shape_rows

    # No denoising: the two paths then see the very same Cycles samples (same seed, same scene).
    settings = RenderSettings(engine="cycles", resolution=48, samples=4, denoise=False)
    rig = RigConfig(num_views=3)
    shapes = Manifest.load(tiny_root / "shapes")
    writer = ViewShardWriter(RenderConfig(root=tmp_path, rig=rig, settings=settings, shapes_per_shard=3), shapes, source_root=tiny_root,
                             encode_thread=encode_thread)  # fmt: skip
    result = writer.render_shard(0, 2, [0, 1, 2])
    writer.close()
    assert result.record.rows == 9 and not result.record.failed and not result.failures
    assert set(result.stages["overlapped"]) == ({"convert", "png", "maps"} if encode_thread else set())
    fast = {(r["shape_id"], r["view"]): decode_row(r) for r in pq.read_table(tmp_path / "views" / result.record.file).to_pylist()}

    # The reference renders the same shapes and cameras in a fresh Blender the old way.
    bank = open_bank(shapes.config.get("textures", {}), tiny_root)
    renderer = BlenderRenderer(settings, bank.get)
    identical = True
    try:
        for row in read_shape_rows(tiny_root / "shapes", [0, 1, 2]):
            sid = row["shape_id"]
            mesh, textures = shape_mesh(row)
            cameras = make_cameras(rig, rig_rng(shapes.seed, sid), settings.resolution, float(np.linalg.norm(mesh.vertices, axis=1).max()))
            renderer.set_light(*shape_light(settings, shapes.seed, sid))
            renderer.clear_shape()
            renderer.add_shape(mesh, textures, StageClock())
            renderer.set_clip(cameras.near, cameras.far)
            for v in range(len(cameras.c2w)):
                renderer.place_camera(cameras.c2w[v], cameras.intrinsics[v], cameras.projections[v])
                with quiet_stdout():
                    bpy.ops.render.render(write_still=True)
                view = reference_passes_to_view(reference_read_exr(renderer.exr_path))
                png = Image.open(io.BytesIO(encode_png(view.rgba, 4)))
                ref = {"rgba": np.asarray(png.convert("RGBA")), "depth": view.depth, "normal": view.normal.astype(np.float16).astype(np.float32)}
                identical &= assert_within_tolerance(fast[(sid, v)], ref, f"shape {sid} view {v}")
            renderer.clear_shape()
    finally:
        renderer.close()
    with capsys.disabled():
        print(f"\nfast path ({'encode thread' if encode_thread else 'inline'}) vs reference on 9 Cycles views: "
              f"{'identical' if identical else 'within tolerance, not identical'}")


def test_pass_conversion_is_the_reference_bit_for_bit_on_real_passes(tiny_root, tmp_path):
    """Including silhouette pixels whose depth sample missed (filled from a neighbour), with
    OpenImageDenoise on as in the default settings."""
    from blender_scripts.render_views import BlenderRenderer, passes_to_view
    from pipelines.texture_bank import open_bank
    from zeroverse.scene.cameras import RigConfig, make_cameras, rig_rng
    from zeroverse.scene.imageio import read_exr_channels
    from zeroverse.scene.render_settings import RenderSettings
    from zeroverse.store.manifest import Manifest
    from pipelines.view_writer import shape_mesh
    from zeroverse.store.shape_io import read_shape_rows

    shapes = Manifest.load(tiny_root / "shapes")
    renderer = BlenderRenderer(RenderSettings(engine="cycles", resolution=40, samples=2, denoise=True), open_bank(shapes.config.get("textures", {}), tiny_root).get)
    filled = 0
    try:
        for row in read_shape_rows(tiny_root / "shapes", [0, 1]):
            mesh, textures = shape_mesh(row)
            cameras = make_cameras(RigConfig(num_views=2), rig_rng(0, row["shape_id"]), 40, float(np.linalg.norm(mesh.vertices, axis=1).max()))
            for channels in renderer.render_passes(mesh, textures, cameras):
                fast, ref = passes_to_view(channels), reference_passes_to_view(reference_read_exr(renderer.exr_path))
                again = read_exr_channels(renderer.exr_path)
                assert sorted(again) == sorted(channels)
                np.testing.assert_array_equal(fast.rgba, ref.rgba)
                np.testing.assert_array_equal(fast.depth, ref.depth)
                np.testing.assert_array_equal(fast.normal, ref.normal)
                alpha = next(v for k, v in channels.items() if k.endswith("Combined.A"))
                depth = next(v for k, v in channels.items() if k.endswith("Depth.Z"))
                filled += int(((alpha > 0.5 / 255) & (depth >= 1e9)).sum())
    finally:
        renderer.close()
    assert filled > 0, "no silhouette pixel needed a neighbour's depth: the edge fill went untested"
