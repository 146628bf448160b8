"""Shape previews (numpy rasterizer) and contact sheets of shapes and of rendered views."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from zeroverse.review.preview import (
    TITLE_HEIGHT,
    PreviewCamera,
    composite_rgba,
    contact_sheet,
    rasterize,
    render_shape_preview,
    turbo_like,
    views_contact_sheet,
)
from zeroverse.scene.primitives import quads_to_triangles, unit_quad_mesh
from zeroverse.store.shape_io import ShapeRecord
from zeroverse.store.manifest import Manifest, ShardRecord
from zeroverse.store.shards import VIEW_SCHEMA, file_metadata, shard_name, write_shard


class FlatBank:
    """Texture t is one flat colour; texture 99 is red on its top half, blue on the bottom."""

    def get(self, texture_id: int) -> np.ndarray:
        image = np.zeros((16, 16, 3), np.uint8)
        if texture_id == 99:
            image[:8] = (255, 0, 0)
            image[8:] = (0, 0, 255)
        else:
            image[:] = (200, 200, 200)
        return image


def sphere(texture_id: int = 0, segments: int = 48) -> ShapeRecord:
    mesh = quads_to_triangles(unit_quad_mesh("ellipsoid", segments, 1))
    return ShapeRecord(0, mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), mesh.uvs.astype(np.float32),
                       mesh.regions.astype(np.int32), np.array([texture_id], np.int32))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROVERSE_CACHE", str(tmp_path / "cache"))


# --- camera and rasterizer --------------------------------------------------------------------


def test_camera_axes_up_is_up_and_not_mirrored():
    cam = PreviewCamera.orbit(100, azimuth_deg=0.0, elevation_deg=0.0)  # on +x, looking at -x
    def project(p):
        c = cam.world_to_camera @ (np.asarray(p, float) - cam.eye)
        return cam.focal * c[:2] / c[2] + cam.centre
    assert np.allclose(project([0, 0, 0]), [50, 50])
    x, y = project([0, 0, 0.5])
    assert y < 50 and abs(x - 50) < 1e-9  # +z is up
    x, y = project([0, 0.5, 0])
    assert x > 50  # seen from +x with z up, +y is on the right (a right-handed world)
    assert np.allclose(np.linalg.det(cam.world_to_camera), 1.0)


def slow_rasterize(screen, depth, size):
    """Reference: every pixel centre against every triangle, plain Python."""
    tri = np.full(size * size, -1)
    best = np.full(size * size, np.inf)
    for py in range(size):
        for px in range(size):
            p = np.array([px + 0.5, py + 0.5])
            for f in range(len(screen)):
                a, b, c = screen[f]
                m = np.array([b - a, c - a]).T
                if abs(np.linalg.det(m)) < 1e-12:
                    continue
                l1, l2 = np.linalg.solve(m, p - a)
                l0 = 1 - l1 - l2
                if min(l0, l1, l2) < -1e-9:
                    continue
                z = 1.0 / (l0 / depth[f, 0] + l1 / depth[f, 1] + l2 / depth[f, 2])
                if z < best[py * size + px]:
                    best[py * size + px], tri[py * size + px] = z, f
    return tri, best


def test_vectorised_rasterizer_matches_the_slow_reference(monkeypatch):
    import zeroverse.review.preview as preview

    monkeypatch.setattr(preview, "CHUNK_CANDIDATES", 97)  # force many small chunks
    rng = np.random.default_rng(1)
    size, count = 20, 25
    centre = rng.uniform(-2, 22, size=(count, 1, 2))
    screen = centre + rng.normal(0, 5, size=(count, 3, 2))
    depth = rng.uniform(1, 5, size=(count, 3))
    tri, lam, z = rasterize(screen, depth, size)
    ref_tri, ref_z = slow_rasterize(screen, depth, size)
    assert np.array_equal(tri >= 0, ref_tri >= 0)
    hit = ref_tri >= 0
    assert np.allclose(z[hit], ref_z[hit], rtol=1e-9)
    # Triangle ids agree except where two triangles are equally near (they intersect there).
    assert np.mean(tri[hit] == ref_tri[hit]) > 0.98
    assert np.allclose(lam[hit].sum(axis=1), 1.0) and lam[hit].min() >= -1e-9


def test_sphere_preview_is_a_centred_shaded_disc():
    size = 128
    image = render_shape_preview(sphere(), FlatBank(), size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    covered = np.any(image < 250, axis=2)
    ys, xs = np.nonzero(covered)
    assert abs(xs.mean() + 0.5 - size / 2) < 1 and abs(ys.mean() + 0.5 - size / 2) < 1
    # A unit sphere 3 away under a 50 degree fov: radius f * tan(asin(1/3)) pixels.
    radius = (size / 2) / math.tan(math.radians(25)) * math.tan(math.asin(1 / 3))
    assert covered.sum() == pytest.approx(math.pi * radius**2, rel=0.03)
    # Headlight: brightest in the middle, darker towards the rim, never black (ambient).
    grey = image[..., 0].astype(int)
    assert grey[size // 2, size // 2] > 190 and grey[covered].min() >= 0.35 * 200 - 2
    assert grey[size // 2, size // 2 + int(radius) - 2] < grey[size // 2, size // 2] - 60


def test_preview_samples_textures_with_v_up():
    image = render_shape_preview(sphere(texture_id=99), FlatBank(), size=64, elevation_deg=0)
    top, bottom = image[20, 32].astype(int), image[44, 32].astype(int)
    assert top[0] > 150 and top[2] < 30  # north (v = 1, the image's top rows): red
    assert bottom[2] > 150 and bottom[0] < 30  # south: blue


def test_preview_is_deterministic_and_empty_shapes_are_white():
    rec = sphere(segments=16)
    assert render_shape_preview(rec, FlatBank(), 48).tobytes() == render_shape_preview(rec, FlatBank(), 48).tobytes()
    empty = ShapeRecord(1, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3, 2), np.float32),
                        np.zeros(0, np.int32), np.zeros(0, np.int32))
    assert (render_shape_preview(empty, FlatBank(), 16) == 255).all()
    with pytest.raises(ValueError, match="too small"):
        render_shape_preview(rec, FlatBank(), 4)


# --- view contact sheet (a tiny synthetic view shard) ------------------------------------------


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def write_view_root(root: Path, shapes=(4, 5), views=3, h=16, w=24) -> None:
    """views/ with one shard: every view is opaque red on the left half, transparent on the
    right; depth grows with the view index (0 where transparent)."""
    rows = []
    for shape_id in shapes:
        for v in range(views):
            rgba = np.zeros((h, w, 4), np.uint8)
            rgba[:, : w // 2] = (255, 0, 0, 255)
            depth = np.zeros((h, w), np.float32)
            depth[:, : w // 2] = 2.0 + v
            rows.append({
                "shape_id": shape_id, "view": v, "role": "view", "projection": "perspective",
                "width": w, "height": h, "c2w": np.eye(4, dtype=np.float32).reshape(-1).tolist(),
                "intrinsics": [20.0, 20.0, w / 2, h / 2], "rgba": _png(rgba),
                "depth": depth.astype("<f4").tobytes(), "normal": np.zeros((h, w, 3), "<f2").tobytes(),
                "position": None,
            })
    table = pa.Table.from_pylist(rows, schema=VIEW_SCHEMA)
    directory = root / "views"
    name = shard_name("views", shapes[0], shapes[-1])
    written = write_shard(table, directory / name, file_metadata("views", {}, 0), row_group_rows=[views] * len(shapes))
    Manifest("views", 0, {}, "test", [ShardRecord.of(written, shapes[0], shapes[-1], shapes)], []).save(directory)


def test_views_contact_sheet_layout_and_pixels(tmp_path):
    write_view_root(tmp_path)
    size, gap = 32, 2
    result = views_contact_sheet(tmp_path, tmp_path / "views.png", size=size)
    assert result.shapes == [4, 5]
    sheet = np.asarray(Image.open(tmp_path / "views.png").convert("RGB"))
    rows, cols = 4, 3  # 2 shapes x (rgba row + depth row), 3 views
    assert sheet.shape == (TITLE_HEIGHT + rows * size + (rows + 1) * gap, cols * size + (cols + 1) * gap, 3)
    def tile(r, c):
        y, x = TITLE_HEIGHT + gap + r * (size + gap), gap + c * (size + gap)
        return sheet[y : y + size, x : x + size]
    # 24x16 views fit the 32 px tile as 32x21, centred: left half red, right half checkerboard.
    rgba_tile = tile(0, 1).astype(int)
    assert (rgba_tile[16, 4] == (255, 0, 0)).all()
    right = rgba_tile[6:26, 18:30]
    assert right.min() >= 200 and len(np.unique(right[..., 0])) == 2  # the two checker greys
    # Depth row: normalised per shape, so view 0 (nearest, 2.0) and view 2 (farthest) differ.
    near, far = tile(1, 0)[16, 4].astype(int), tile(1, 2)[16, 4].astype(int)
    assert np.array_equal(near, turbo_like(1.0)) and np.array_equal(far, turbo_like(0.0))
    result = views_contact_sheet(tmp_path, tmp_path / "v2.png", max_shapes=1, max_views=2, size=size, depth=False)
    assert result.shapes == [4] and result.size == (2 * size + 3 * gap, TITLE_HEIGHT + size + 2 * gap)


def test_turbo_like_and_compositing():
    ends = turbo_like(np.array([0.0, 0.5, 1.0, -3.0, 7.0]))
    assert ends[0, 2] > ends[0, 0] and ends[2, 0] > ends[2, 2] and ends[1, 1] > 200  # blue, green, red
    assert np.array_equal(ends[3], ends[0]) and np.array_equal(ends[4], ends[2])
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, 128
    out = composite_rgba(rgba)
    assert out.min() > 230  # white over a light checkerboard stays light


def test_sheet_errors(tmp_path):
    with pytest.raises(ValueError, match="no manifest"):
        views_contact_sheet(tmp_path, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_shapes"):
        contact_sheet(tmp_path, tmp_path / "x.png", max_shapes=0)


# --- shape contact sheet of a real generated root ----------------------------------------------


@pytest.mark.ray
@pytest.mark.blender
def test_contact_sheet_of_a_real_root(four_shapes_root, tmp_path):
    size, gap = 64, 2
    result = contact_sheet(four_shapes_root, tmp_path / "sheet.png", columns=3, size=size)
    assert result.shapes == [0, 1, 2, 3]
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    assert sheet.shape == (TITLE_HEIGHT + 2 * size + 3 * gap, 3 * size + 4 * gap, 3)
    for k in range(4):  # every tile shows a shape in colour
        y, x = TITLE_HEIGHT + gap + (k // 3) * (size + gap), gap + (k % 3) * (size + gap)
        tile = sheet[y + 12 : y + size, x : x + size].astype(int)  # below the id label
        assert np.any(tile < 240) and np.ptp(tile, axis=2).max() > 20
    assert (sheet[TITLE_HEIGHT + gap + size + 10 :, gap + 2 * (size + gap) :] == 255).all()  # 5th slot empty
    assert result.render_seconds < 4 * 1.0  # generous: ~0.05-0.1 s each on one core


def test_a_full_cube_is_framed_without_clipping():
    box = quads_to_triangles(unit_quad_mesh("box", 16, 2))  # corners at (+-1, +-1, +-1)
    rec = ShapeRecord(0, box.vertices.astype(np.float32), box.faces.astype(np.int32), box.uvs.astype(np.float32),
                      box.regions.astype(np.int32), np.zeros(6, np.int32))
    image = render_shape_preview(rec, FlatBank(), size=64)
    covered = np.any(image < 250, axis=2)
    assert covered.mean() > 0.3
    assert not covered[0].any() and not covered[-1].any() and not covered[:, 0].any() and not covered[:, -1].any()
    clipped = render_shape_preview(rec, FlatBank(), size=64, fit=False)  # distance 3 cuts corners off
    assert np.any(clipped[[0, -1]] < 250) or np.any(clipped[:, [0, -1]] < 250)
