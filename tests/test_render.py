"""The render stage, for real: Cycles on the CPU at 64², through the Ray farm.

Most tests read the session's `small_root` (8 shapes x 4 views, made once by conftest) and copy it
before changing anything. What they prove:
- Blender's camera, depth and normals agree with a numpy ray caster on an analytic box (perspective
  with an off-centre principal point, and orthographic);
- every stored view: depth > 0 exactly where alpha > 0, depth within what the camera and the shape's
  bounding sphere allow, unit world-space normals facing the camera, straight alpha;
- multi-view consistency: pixels of view i lifted through depth + camera land inside view j's
  silhouette and agree with view j's depth where unoccluded; the same check fails when view j's
  camera is off by 3 degrees or has its y axis flipped (the check has teeth);
- the orthographic BEV camera through the farm, consistent with the orbit views;
- the farm: resume after an interrupted run, a killed worker, a hung worker (a real SIGSTOP with a
  virtual clock), the failure ledger after max_attempts, worker recycling, same bytes for 1 and 2
  workers; `zeroverse validate` on good and corrupted roots; clear errors on bad input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import copy_root
from zeroverse.scene.cameras import CameraSet, RigConfig, look_at, pinhole_intrinsics, project, unproject_depth
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.store.manifest import Manifest

pytestmark = [pytest.mark.blender]

CONTENT_COLUMNS = ("shape_id", "view", "role", "projection", "width", "height", "c2w", "intrinsics", "rgba", "depth", "normal")


# ---- reading a root ----------------------------------------------------------------------------


@dataclass
class View:
    shape_id: int
    view: int
    role: str
    projection: str
    rgba: np.ndarray  # uint8 [H, W, 4]
    depth: np.ndarray  # float32 [H, W]
    normal: np.ndarray  # float32 [H, W, 3]
    c2w: np.ndarray  # float64 [4, 4]
    intrinsics: np.ndarray  # float64 [4]
    position: np.ndarray | None  # float32 [H, W, 3]

    @property
    def alpha(self) -> np.ndarray:
        return self.rgba[..., 3]


def decode_view(row: dict) -> View:
    h, w = row["height"], row["width"]
    position = None if row["position"] is None else np.frombuffer(row["position"], "<f4").reshape(h, w, 3)
    return View(
        row["shape_id"],
        row["view"],
        row["role"],
        row["projection"],
        np.asarray(Image.open(io.BytesIO(row["rgba"])).convert("RGBA")),
        np.frombuffer(row["depth"], "<f4").reshape(h, w),
        np.frombuffer(row["normal"], "<f2").reshape(h, w, 3).astype(np.float32),
        np.asarray(row["c2w"], np.float64).reshape(4, 4),
        np.asarray(row["intrinsics"], np.float64),
        position,
    )


def view_tables(root: Path) -> dict[str, object]:
    """{shard file: pyarrow table} of the shards the views manifest lists."""
    manifest = Manifest.load(Path(root) / "views")
    assert manifest is not None, f"{root}/views has no manifest"
    return {s["file"]: pq.read_table(Path(root) / "views" / s["file"]) for s in manifest.shards}


def read_views(root: Path) -> dict[int, list[View]]:
    by_shape: dict[int, list[View]] = {}
    for table in view_tables(root).values():
        for row in table.to_pylist():
            by_shape.setdefault(row["shape_id"], []).append(decode_view(row))
    for views in by_shape.values():
        views.sort(key=lambda v: v.view)
    return by_shape


def shape_bounds(root: Path) -> dict[int, float]:
    """Bounding-sphere radius about the origin of every shape (what the rig keeps cameras beyond)."""
    from zeroverse.store.shape_io import read_shape_rows

    return {row["shape_id"]: float(np.linalg.norm(np.asarray(row["vertices"], np.float32).reshape(-1, 3), axis=1).max())
            for row in read_shape_rows(Path(root) / "shapes")}


def render_config(root: Path, like: Path, **changes):
    """The RenderConfig that made `like` (read back from its views manifest), for `root`."""
    from pipelines.render import RenderConfig

    identity = Manifest.load(Path(like) / "views").config
    tup = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    settings = RenderSettings(**tup(identity["render"]))
    fields = {"rig": RigConfig(**tup(identity["rig"])), "settings": settings, "shapes_per_shard": identity["shapes_per_shard"]}
    settings_changes = {k: changes.pop(k) for k in list(changes) if hasattr(settings, k)}
    if settings_changes:
        import dataclasses

        fields["settings"] = dataclasses.replace(settings, **settings_changes)
    fields.update(changes)
    return RenderConfig(root=root, **fields)


def assert_same_content(root_a: Path, root_b: Path, columns=CONTENT_COLUMNS) -> None:
    """Both roots list the same shards and each holds the same values in `columns`."""
    a, b = view_tables(root_a), view_tables(root_b)
    assert sorted(a) == sorted(b)
    for name in a:
        for column in columns:
            assert a[name].column(column).to_pylist() == b[name].column(column).to_pylist(), f"{name}: column {column} differs"


def fresh_copy(small_root: Path, dst: Path) -> Path:
    """small_root's shapes without its views (to render again)."""
    root = copy_root(small_root, dst)
    shutil.rmtree(root / "views")
    return root


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 8 neighbours (and themselves) are all set; the image border counts as unset."""
    padded = np.pad(mask, 1)
    out = mask.copy()
    h, w = mask.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out &= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    return out


# ---- Blender against a numpy ray caster -----------------------------------------------------------

BOX_LO = np.array([-0.6, -0.45, -0.35]) + [0.1, -0.05, 0.05]
BOX_HI = np.array([0.6, 0.45, 0.35]) + [0.1, -0.05, 0.05]


def box_mesh():
    """An axis-aligned box [BOX_LO, BOX_HI]: 12 outward triangles, one texture region per side."""
    from zeroverse.scene.primitives import MeshArrays

    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    vertices = BOX_LO + corners * (BOX_HI - BOX_LO)
    index = lambda x, y, z: 4 * x + 2 * y + z  # noqa: E731
    faces, regions = [], []
    for axis in range(3):
        for side in (0, 1):
            quad = []
            for a, b in ((0, 0), (1, 0), (1, 1), (0, 1)):
                c = [0, 0, 0]
                c[axis], c[(axis + 1) % 3], c[(axis + 2) % 3] = side, a, b
                quad.append(index(*c))
            if side == 0:  # keep every side's winding outward
                quad = quad[::-1]
            faces += [quad[:3], [quad[0], quad[2], quad[3]]]
            regions += [2 * axis + side] * 2
    faces = np.array(faces, np.int32)
    # Check the winding: every face normal points away from the box centre.
    centre = (BOX_LO + BOX_HI) / 2
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(np.einsum("ij,ij->i", normals, tri.mean(1) - centre) > 0)
    uvs = np.tile(np.array([[0, 0], [1, 0], [1, 1]], np.float32), (len(faces), 1, 1))
    return MeshArrays(vertices.astype(np.float32), faces, uvs, np.array(regions, np.int32))


def ray_cast_box(c2w: np.ndarray, intrinsics: np.ndarray, projection: str, h: int, w: int):
    """Reference depth [H, W] (planar, 0 where missed) and world normals [H, W, 3] of the box at
    pixel centres, by slab intersection."""
    fx, fy, cx, cy = intrinsics
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    R, eye = c2w[:3, :3], c2w[:3, 3]
    if projection == "orthographic":
        origins = eye + np.stack([(u - cx) / fx, (v - cy) / fy, np.zeros_like(u)], -1) @ R.T
        dirs = np.broadcast_to(R[:, 2], origins.shape)
    else:
        origins = np.broadcast_to(eye, (h, w, 3))
        dirs = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1) @ R.T  # camera z = 1: t is planar depth
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (BOX_LO - origins) / dirs, (BOX_HI - origins) / dirs
    t_enter = np.minimum(t1, t2)
    t_near, t_far = t_enter.max(-1), np.maximum(t1, t2).min(-1)
    hit = (t_near <= t_far) & (t_near > 0)
    axis = t_enter.argmax(-1)
    normal = np.zeros((h, w, 3))
    np.put_along_axis(normal, axis[..., None], -np.sign(np.take_along_axis(dirs, axis[..., None], -1)), -1)
    return np.where(hit, t_near, 0.0), np.where(hit[..., None], normal, 0.0), axis


def supersampled_coverage(c2w, intrinsics, projection, res: int, n: int) -> np.ndarray:
    """Fraction [H, W] of n x n sub-pixel rays that hit the box."""
    coverage = np.zeros((res, res))
    for a in range(n):
        for b in range(n):
            # Casting through pixel centres with the principal point moved by -offset samples the
            # pixel at +offset.
            offset = np.array([0.0, 0.0, (a + 0.5) / n - 0.5, (b + 0.5) / n - 0.5])
            coverage += ray_cast_box(c2w, intrinsics - offset, projection, res, res)[0] > 0
    return coverage / n**2


def centroid(weights: np.ndarray) -> np.ndarray:
    """Weighted mean (u, v) of pixel centres."""
    v, u = np.mgrid[: weights.shape[0], : weights.shape[1]] + 0.5
    return np.array([(weights * u).sum(), (weights * v).sum()]) / weights.sum()


def edge_brightness_ratios(rgba: np.ndarray) -> np.ndarray:
    """Brightness of each partly covered pixel (alpha 0.2..0.8) over the mean of its solid
    (alpha 1) 8-neighbours."""
    alpha = rgba[..., 3]
    grey = rgba[..., :3].astype(np.float64).mean(-1)
    h, w = alpha.shape
    ratios = []
    for y, x in zip(*np.nonzero((alpha > 0.2 * 255) & (alpha < 0.8 * 255))):
        near = [grey[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if 0 <= y + dy < h and 0 <= x + dx < w and alpha[y + dy, x + dx] == 255]
        if near and np.mean(near) > 0:
            ratios.append(grey[y, x] / np.mean(near))
    assert len(ratios) > 20, "too few edge pixels to judge"
    return np.array(ratios)


def test_blender_camera_depth_and_normals_match_a_numpy_ray_caster():
    """STYLE 7: Blender's cameras and depth vs a numpy projector. A shifted principal point proves
    the sign of Blender's lens shift; the orthographic view is the BEV camera's path."""
    bpy = pytest.importorskip("bpy")
    from blender_scripts.render_views import BlenderRenderer

    res = 64
    persp = pinhole_intrinsics(50.0, res, res) + np.array([0, 0, 5.0, -3.0])  # off-centre principal point
    views = [
        (look_at(np.array([2.2, -1.4, 1.1])), persp, "perspective"),
        (look_at(np.array([-1.0, 2.0, -1.2]), target=np.array([0.1, 0.0, 0.1])), pinhole_intrinsics(40.0, res, res), "perspective"),
        (look_at(np.array([0.0, 0.0, 3.0]), up=np.array([0.0, 1.0, 0.0])), np.array([res / 2.0, res / 2.0, res / 2.0, res / 2.0]), "orthographic"),
    ]
    cameras = CameraSet(np.stack([v[0] for v in views]), np.stack([v[1] for v in views]), res, res,
                        ["view"] * 3, [v[2] for v in views], 0.05, 100.0)
    grey = lambda texture_id: np.full((8, 8, 3), 40 * texture_id + 30, np.uint8)  # noqa: E731
    renderer = BlenderRenderer(RenderSettings(resolution=res, samples=4, denoise=False), grey)
    try:
        rendered = renderer.render_shape(box_mesh(), np.arange(6, dtype=np.int32), cameras)
    finally:
        renderer.close()
        bpy.ops.wm.read_factory_settings(use_empty=True)  # leave this process's Blender as found
    for k, (view, (c2w, intr, projection)) in enumerate(zip(rendered, views)):
        ref_depth, ref_normal, ref_axis = ray_cast_box(c2w, intr, projection, res, res)
        ref_hit = ref_depth > 0
        covered = view.rgba[..., 3] > 0
        interior, exterior = erode(ref_hit), erode(~ref_hit)
        assert interior.sum() > 200, f"view {k}: the box should fill a good part of the image"
        # Silhouette: exact up to the one-pixel anti-aliased band along the reference outline.
        assert covered[interior].all(), f"view {k}: {(~covered[interior]).sum()} pixels inside the box are empty"
        assert not covered[exterior].any(), f"view {k}: {covered[exterior].sum()} pixels outside the box are covered"
        np.testing.assert_array_equal(view.depth > 0, covered)
        # Depth is planar z at the pixel centre (measured error ~1e-5 relative).
        err = np.abs(view.depth - ref_depth)[interior] / ref_depth[interior]
        assert err.max() < 1e-3, f"view {k}: depth error median {np.median(err):.2e} max {err.max():.2e}"
        # Sub-pixel: alpha is anti-aliased coverage, so its area and centroid match the reference's
        # 8x8-supersampled coverage (a half-pixel convention error would move the centroid 0.5 px).
        coverage = supersampled_coverage(c2w, intr, projection, res, 8)
        alpha = view.rgba[..., 3] / 255.0
        assert abs(alpha.sum() - coverage.sum()) < 0.01 * coverage.sum(), f"view {k}: area {alpha.sum():.1f} vs {coverage.sum():.1f}"
        offset = centroid(alpha) - centroid(coverage)
        assert np.abs(offset).max() < 0.15, f"view {k}: silhouette centroid off by {offset} px"
        # Normals are world space and flat per side, away from the sides' shared edges.
        same_side = np.ones_like(ref_hit)
        for axis in range(3):
            same_side &= ~(erode(ref_axis == axis) ^ (ref_axis == axis))
        flat = interior & same_side
        cos = np.einsum("hwc,hwc->hw", view.normal, ref_normal)[flat]
        assert flat.sum() > 100 and cos.min() > 0.99, f"view {k}: normal cos min {cos.min():.4f}"
        assert view.rgba.dtype == np.uint8 and np.all(view.rgba[..., :3][~covered] == 0)
        # Straight alpha: a half-covered edge pixel is as bright as the solid pixels beside it
        # (premultiplied, it would be about 0.5 ** (1 / 2.2) = 0.73 as bright).
        assert np.median(edge_brightness_ratios(view.rgba)) == pytest.approx(1.0, abs=0.08), f"view {k}"


# ---- every stored view ----------------------------------------------------------------------------


@pytest.mark.ray
def test_views_depth_agrees_with_alpha_in_range_and_normals_unit(small_root):
    views = read_views(small_root)
    bounds = shape_bounds(small_root)
    manifest = Manifest.load(small_root / "views")
    rig = RigConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest.config["rig"].items()})
    assert sorted(views) == sorted(bounds) == list(range(8))
    facing = total = 0
    for sid, shape_views in views.items():
        assert [v.view for v in shape_views] == list(range(rig.num_views))
        bound = bounds[sid]
        for v in shape_views:
            where = f"shape {sid} view {v.view}"
            assert v.role == "view" and v.projection == "perspective"
            assert v.rgba.shape == (64, 64, 4) and v.depth.shape == (64, 64)
            covered = v.alpha > 0
            np.testing.assert_array_equal(v.depth > 0, covered, err_msg=where)
            assert np.all(np.isfinite(v.depth)) and np.all(v.depth >= 0)
            assert covered.mean() > 0.01, f"{where}: the camera looking at the origin should see the shape"
            # The camera's distance: in the rig's range and beyond the shape's bounding sphere.
            r = np.linalg.norm(v.c2w[:3, 3])
            assert r >= bound + 2 * rig.near - 1e-4, f"{where}: camera at {r:.3f} inside bound {bound:.3f} + 2 near"
            assert rig.radius_range[0] - 1e-4 <= r <= max(rig.radius_range[1], bound + 2 * rig.near) + 1e-4
            # A point of a shape inside the sphere of radius `bound` has planar depth r +- bound.
            d = v.depth[covered]
            assert d.min() >= r - bound - 1e-3 and d.max() <= r + bound + 1e-3, f"{where}: depth {d.min():.3f}..{d.max():.3f}, r {r:.3f}"
            # Back-projected pixels lie inside the shape's bounding sphere (a pixel's footprint of slack).
            points = unproject_depth(v.depth, v.c2w, v.intrinsics)[covered]
            assert np.linalg.norm(points, axis=1).max() <= bound + 0.05, where
            # Normals: unit length where covered (stored as float16), zero elsewhere, world space:
            # they face the camera (camera-space normals would not).
            length = np.linalg.norm(v.normal, axis=-1)
            assert np.abs(length[covered] - 1).max() < 2e-3, where
            assert np.all(v.normal[~covered] == 0), where
            facing += int((np.einsum("nc,nc->n", v.normal[covered], points - v.c2w[:3, 3]) < 0).sum())
            total += int(covered.sum())
            # Straight alpha: no colour where nothing was hit.
            assert np.all(v.rgba[..., :3][~covered] == 0), where
            assert v.position is None  # small_root is rendered without --positions
    assert facing / total > 0.98, f"only {facing / total:.3f} of normals face their camera"


@pytest.mark.ray
def test_view_shards_layout_and_metadata(small_root):
    manifest = Manifest.load(small_root / "views")
    assert manifest.failures == []
    assert sorted(manifest.shape_ids()) == list(range(8))
    for shard in manifest.shards:
        path = small_root / "views" / shard["file"]
        meta = pq.ParquetFile(path)
        kv = meta.metadata.metadata
        assert json.loads(kv[b"zeroverse.conventions"])["camera"].startswith("OpenCV")
        assert json.loads(kv[b"zeroverse.render"])["resolution"] == 64
        # Which device rendered it; on the CPU a constant, so shards stay byte-identical across runs.
        assert json.loads(kv[b"zeroverse.render_device"]) == {"index": None, "engine": "cycles", "device": "CPU", "binding": "none"}
        assert int(kv[b"zeroverse.seed"]) == manifest.seed
        assert meta.metadata.num_row_groups == len(shard["shape_ids"])  # one row group per shape
        assert meta.metadata.num_rows == shard["rows"] == 4 * len(shard["shape_ids"])


# ---- multi-view consistency (proves the camera convention end to end) ------------------------------


def reprojection(vi: View, vj: View, c2w_j: np.ndarray, intrinsics_j: np.ndarray, tol: float = 0.02) -> tuple[int, int, int, int]:
    """Lifts view i's solidly covered pixels through its depth and camera, projects them with view
    j's intrinsics and `c2w_j`. Returns (in frame, inside j's silhouette, unoccluded, depth agrees).

    Every surface point seen by i lies inside j's silhouette whether or not j sees it (occlusion
    only hides it behind other parts of the same shape). Where j's depth is not clearly in front
    of the point (unoccluded), j's depth must equal the point's z.
    """
    solid = erode(vi.depth > 0) & (vi.alpha == 255)  # no edge pixels (their depth is borrowed)
    points = unproject_depth(vi.depth, vi.c2w, vi.intrinsics, vi.projection)[solid]
    uv, z = project(points, c2w_j, intrinsics_j, vj.projection)
    h, w = vj.depth.shape
    with np.errstate(invalid="ignore"):
        frame = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    px = np.floor(uv[frame]).astype(int)
    z = z[frame]
    alpha_j, depth_j = vj.alpha[px[:, 1], px[:, 0]], vj.depth[px[:, 1], px[:, 0]]
    unoccluded = (depth_j > 0) & (depth_j >= z * (1 - tol))
    agrees = unoccluded & (depth_j <= z * (1 + tol))
    return int(frame.sum()), int((alpha_j > 0).sum()), int(unoccluded.sum()), int(agrees.sum())


def rotate_about_camera_axis(c2w: np.ndarray, axis: int, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    i, k = {0: (1, 2), 1: (2, 0), 2: (0, 1)}[axis]
    R = np.eye(4)
    R[i, i] = R[k, k] = np.cos(a)
    R[i, k], R[k, i] = -np.sin(a), np.sin(a)
    return c2w @ R


def flip_y(c2w: np.ndarray) -> np.ndarray:
    out = c2w.copy()
    out[:3, 1] *= -1  # the classic convention bug: y up instead of down
    return out


PERTURBATIONS = {  # of view j's camera: (c2w, intrinsics) -> (c2w, intrinsics)
    "none": lambda c2w, intr: (c2w, intr),
    "pitch 3 deg": lambda c2w, intr: (rotate_about_camera_axis(c2w, 0, 3.0), intr),
    "yaw 3 deg": lambda c2w, intr: (rotate_about_camera_axis(c2w, 1, 3.0), intr),
    "yaw -3 deg": lambda c2w, intr: (rotate_about_camera_axis(c2w, 1, -3.0), intr),
    "y flipped": lambda c2w, intr: (flip_y(c2w), intr),
}


def consistency(views: dict[int, list[View]], perturb, min_points: int = 10_000) -> tuple[float, float, float]:
    """(fraction inside the silhouette, worst pair's fraction, fraction of depth agreement) over
    all ordered pairs of views of every shape."""
    frame = inside = unoccluded = agrees = 0
    worst = 1.0
    for shape_views in views.values():
        for vi in shape_views:
            for vj in shape_views:
                if vi is vj:
                    continue
                f, s, u, a = reprojection(vi, vj, *perturb(vj.c2w, vj.intrinsics))
                frame, inside, unoccluded, agrees = frame + f, inside + s, unoccluded + u, agrees + a
                if f >= 100:
                    worst = min(worst, s / f)
    assert frame > min_points and unoccluded > min_points // 2, "too few points to judge"
    return inside / frame, worst, agrees / unoccluded


@pytest.mark.ray
def test_multi_view_consistency_and_the_check_has_teeth(small_root):
    """Pixels of view i, lifted through depth and camera, land inside view j's silhouette (>= 97%
    over all pairs) and agree with view j's depth where nothing is in front of them (>= 85%; the
    rest sit at depth edges of a 64² image). "Keep only points whose z matches j's depth, then
    require alpha > 0" would pass by construction (depth > 0 exactly where alpha > 0), so the
    silhouette test takes every in-frame point and the depth test takes every unoccluded one.
    Teeth: view j's camera pitched or yawed by 3 degrees (~3.6 px), or its y axis flipped, fails."""
    views = read_views(small_root)
    scores = {name: consistency(views, perturb) for name, perturb in PERTURBATIONS.items()}
    report = ", ".join(f"{k}: silhouette {s:.4f} (worst pair {w:.3f}), depth {d:.4f}" for k, (s, w, d) in scores.items())
    silhouette, worst, depth = scores["none"]
    assert silhouette >= 0.97 and worst >= 0.85 and depth >= 0.85, report
    for name, (s, _, d) in scores.items():
        if name != "none":
            assert s < 0.97 and d < 0.85, f"a camera with {name} still passes: {report}"


@pytest.mark.ray
def test_multi_view_consistency_peaks_without_a_sub_pixel_shift(small_root):
    """Moving view j's principal point by half a pixel either way scores worse than not moving
    it: no half-pixel offset hides in the pixel-centre convention (+0.5) (3 degrees is ~3.6 px)."""
    views = read_views(small_root)

    def shifted(du: float, dv: float):
        return lambda c2w, intr: (c2w, intr + np.array([0.0, 0.0, du, dv]))

    silhouette, _, depth = consistency(views, shifted(0.0, 0.0))
    for du, dv in ((0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)):
        s, _, d = consistency(views, shifted(du, dv))
        assert s < silhouette and d < depth, f"a shift of ({du}, {dv}) px fits as well as none: {s:.4f}/{silhouette:.4f}, {d:.4f}/{depth:.4f}"


@pytest.mark.ray
def test_orbit_rig_with_bev_through_the_farm(small_root, tmp_path):
    """The orthographic BEV camera end to end: rendered by the farm, stored with its role and
    projection, consistent with the perspective orbit views, and accepted by `zeroverse validate`
    (which expects num_views + 1 views per shape from the manifest's rig)."""
    from pipelines.render import run_render

    root = fresh_copy(small_root, tmp_path / "root")
    rig = RigConfig(kind="orbit", num_views=4, bev=True)
    result = run_render(render_config(root, small_root, rig=rig, limit=4, resolution=64, samples=4), progress=False)
    assert result.failures == [] and result.views == 4 * 5
    views = read_views(root)
    bounds = shape_bounds(root)
    for sid, shape_views in views.items():
        assert [v.role for v in shape_views] == ["view"] * 4 + ["bev"]
        assert [v.projection for v in shape_views] == ["perspective"] * 4 + ["orthographic"]
        eyes = np.stack([v.c2w[:3, 3] for v in shape_views[:4]])
        az = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
        el = np.degrees(np.arcsin(eyes[:, 2] / np.linalg.norm(eyes, axis=1)))
        np.testing.assert_allclose(el, 20.0, atol=1e-3)
        np.testing.assert_allclose((np.diff(az) + 180) % 360 - 180, 90.0, atol=1e-3)
        bev = shape_views[4]
        np.testing.assert_allclose(bev.c2w[:3, 2], [0, 0, -1], atol=1e-6)
        covered = bev.alpha > 0
        np.testing.assert_array_equal(bev.depth > 0, covered)
        assert covered.mean() > 0.02
        height = bev.c2w[2, 3]
        assert bev.depth[covered].min() >= height - bounds[sid] - 1e-3 and bev.depth[covered].max() <= height + bounds[sid] + 1e-3
    silhouette, _, depth = consistency(views, PERTURBATIONS["none"], min_points=2_000)
    assert silhouette >= 0.97 and depth >= 0.8, (silhouette, depth)
    bev_only = {sid: [v[4], v[0], v[2]] for sid, v in views.items()}  # pairs with the BEV view
    flipped = consistency(bev_only, PERTURBATIONS["y flipped"], min_points=500)[0]
    good = consistency(bev_only, PERTURBATIONS["none"], min_points=500)[0]
    assert good >= 0.97 > flipped, (good, flipped)
    checked = run_cli("validate", "--root", str(root))
    assert checked.exit_code == 0, checked.output


# ---- the farm -------------------------------------------------------------------------------------


@pytest.mark.ray
def test_resume_renders_only_the_missing_shard(small_root, tmp_path):
    from pipelines.render import run_render

    root = copy_root(small_root, tmp_path / "root")
    views_dir = root / "views"
    manifest = Manifest.load(views_dir)
    victim, kept = manifest.shards[0], manifest.shards[1]
    kept_path = views_dir / kept["file"]
    kept_bytes, kept_mtime = kept_path.read_bytes(), kept_path.stat().st_mtime_ns
    # An interrupted run: the manifest never listed the victim, its file is gone, and a half
    # written temporary was left behind.
    manifest.shards.remove(victim)
    manifest.save(views_dir)
    (views_dir / victim["file"]).unlink()
    (views_dir / f".tmp-{victim['file']}-1234-deadbeef").write_bytes(b"PAR1 half written")

    result = run_render(render_config(root, small_root), progress=False)
    assert result.written == [victim["file"]]
    assert result.skipped_shapes == len(kept["shape_ids"])
    assert result.failures == [] and result.retries == 0
    assert result.shapes == 8 and result.views == 32
    assert kept_path.read_bytes() == kept_bytes and kept_path.stat().st_mtime_ns == kept_mtime
    assert not list(views_dir.glob(".tmp-*"))
    after = Manifest.load(views_dir)
    assert after.shape_ids() == list(range(8)) and after.failures == []
    # Rendering is deterministic: the re-rendered shard holds the very same values, PNG bytes
    # included, and is even the same file byte for byte.
    assert_same_content(root, small_root)
    new, old = pq.read_table(views_dir / victim["file"]), pq.read_table(small_root / "views" / victim["file"])
    assert new.column("rgba").to_pylist() == old.column("rgba").to_pylist()
    assert (views_dir / victim["file"]).read_bytes() == (small_root / "views" / victim["file"]).read_bytes()
    assert after.shard_for(victim["first"])["sha256"] == victim["sha256"]

    # A second run finds nothing to do.
    again = run_render(render_config(root, small_root), progress=False)
    assert again.written == [] and again.skipped_shapes == 8 and again.workers_started == 0


@pytest.mark.ray
def test_resume_rerenders_a_shard_file_the_manifest_does_not_list(small_root, tmp_path):
    """A crash between the shard's rename and the manifest's rewrite leaves a complete-looking
    file that no reader trusts: the next run renders it again and replaces it."""
    from pipelines.render import run_render

    root = copy_root(small_root, tmp_path / "root")
    manifest = Manifest.load(root / "views")
    victim = manifest.shards[1]
    manifest.shards.remove(victim)
    manifest.save(root / "views")
    (root / "views" / victim["file"]).write_bytes(b"not what the manifest would have listed")
    result = run_render(render_config(root, small_root), progress=False)
    assert result.written == [victim["file"]]
    assert_same_content(root, small_root)


def actor_pid(actor, wait_alive_s: float = 120.0) -> int | None:
    """The OS pid of a Ray actor's worker process, read from Ray's GCS actor table, once the
    actor is ALIVE (Blender started, so a shard is being rendered). None where Ray's private
    state API is unavailable (callers then fall back to ray.kill)."""
    try:
        from ray._private.state import actors
    except ImportError:
        return None
    deadline = time.monotonic() + wait_alive_s
    while time.monotonic() < deadline:
        try:
            info = actors(actor._actor_id.hex())
        except Exception:  # noqa: BLE001 - a private API: fall back rather than fail
            return None
        if info.get("State") == "ALIVE" and info.get("Pid"):
            return int(info["Pid"])
        if info.get("State") == "DEAD":
            return None
        time.sleep(0.05)
    return None


def live_render_actors(wait_s: float = 15.0) -> list[str]:
    """Ids of FarmWorker actors not yet DEAD (after up to `wait_s` for kills to land)."""
    from ray._private.state import actors

    deadline = time.monotonic() + wait_s
    while True:
        alive = [k for k, a in actors().items() if a.get("ActorClassName") == "FarmWorker" and a.get("State") != "DEAD"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_complete(root: Path, views_per_shape: int = 4) -> None:
    manifest = Manifest.load(root / "views")
    assert manifest.failures == []
    assert manifest.shape_ids() == list(range(8))
    for shape_views in read_views(root).values():
        assert len(shape_views) == views_per_shape


@pytest.mark.ray
def test_killed_worker_shard_is_rerendered_in_a_fresh_worker(small_root, tmp_path):
    import ray

    from pipelines.render import run_render

    root = fresh_copy(small_root, tmp_path / "root")
    killed: list[object] = []

    def fault(actor, dispatch_index: int) -> None:
        if dispatch_index != 0:
            return
        pid = actor_pid(actor)
        if pid is None:
            ray.kill(actor)  # still a hard kill of the worker process
            killed.append("ray.kill")
            return
        time.sleep(0.1)  # into the shard's first renders
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    workers = 2
    result = run_render(render_config(root, small_root), workers=workers, progress=False, fault=fault)
    assert killed, "the fault hook never ran"
    assert result.retries >= 1
    assert result.workers_started > workers
    assert result.failures == []
    assert_complete(root)
    assert_same_content(root, small_root)  # the retried shard is byte-identical
    assert live_render_actors() == []  # no worker outlives the run


@pytest.mark.ray
def test_hung_worker_times_out_and_its_shard_is_retried(small_root, tmp_path, monkeypatch):
    """A real hang (the worker is SIGSTOPped mid-shard) with a virtual wait: the orchestrator's
    clock jumps past the shard's deadline instead of the test sleeping through it."""
    import pipelines.executor as executor_module
    import pipelines.render as render_module

    pytest.importorskip("ray._private.state", reason="Ray's actor table (worker pids) is needed to freeze a worker")
    root = fresh_copy(small_root, tmp_path / "root")
    skew = [0.0]
    real = executor_module.time
    monkeypatch.setattr(
        executor_module,
        "time",
        types.SimpleNamespace(monotonic=lambda: real.monotonic() + skew[0], perf_counter=real.perf_counter, sleep=real.sleep),
    )
    cfg = render_config(root, small_root, shape_timeout_s=30.0)
    stopped: list[int] = []

    def fault(actor, dispatch_index: int) -> None:
        if dispatch_index != 0:
            return
        pid = actor_pid(actor)
        if pid is None:
            return  # `assert stopped` below reports it
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        # Past the start-up minute plus the shard's per-shape budget.
        skew[0] += 60.0 + cfg.shape_timeout_s * cfg.shapes_per_shard + 1.0

    try:
        result = render_module.run_render(cfg, workers=2, progress=False, fault=fault)
        assert stopped
        assert result.retries == 1 and result.workers_started == 3
        assert result.failures == []
        assert_complete(root)
        assert_same_content(root, small_root)
        deadline = time.monotonic() + 30
        while pid_alive(stopped[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_alive(stopped[0]), "the hung worker was not killed"
        assert live_render_actors() == []
    finally:
        for pid in stopped:  # never leave a frozen process behind, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.ray
def test_shard_that_keeps_failing_goes_to_the_ledger(small_root, tmp_path):
    """max_attempts kills in a row: the shard's shapes land in the failure ledger with the reason,
    the other shard is written, and a rerun (no faults) completes the root."""
    from pipelines.render import run_render

    root = fresh_copy(small_root, tmp_path / "root")
    cfg = render_config(root, small_root, max_attempts=2)
    victims: list[int] = []

    def fault(actor, dispatch_index: int) -> None:
        import ray

        # Dispatches 0 and 1 start both shards; the retry of the killed one is dispatch 2.
        if dispatch_index in (0, 2):
            ray.kill(actor)
            victims.append(dispatch_index)

    result = run_render(cfg, workers=2, progress=False, fault=fault)
    assert victims == [0, 2]
    failed = sorted(f["shape_id"] for f in result.failures)
    assert len(failed) == 4 and result.shapes == 4
    assert all("worker died" in f["reason"] and "after 2 attempts" in f["reason"] for f in result.failures)
    manifest = Manifest.load(root / "views")
    assert sorted(f["shape_id"] for f in manifest.failures) == failed
    assert not set(failed) & set(manifest.shape_ids())

    rerun = run_render(cfg, workers=2, progress=False)
    assert rerun.failures == [] and rerun.skipped_shapes == 4
    assert_complete(root)
    assert_same_content(root, small_root)


@pytest.mark.ray
@pytest.mark.parametrize("recycle", [{"recycle_after": 2}, {"max_worker_rss_gb": 1e-3}], ids=["after-shapes", "on-memory"])
def test_workers_are_recycled_and_limit_renders_a_prefix(small_root, tmp_path, recycle):
    from pipelines.render import run_render

    root = fresh_copy(small_root, tmp_path / "root")
    result = run_render(render_config(root, small_root, limit=4, **recycle), workers=1, progress=False)
    assert result.shapes == 4 and result.views == 16 and result.failures == []
    assert result.workers_started == 2  # the first worker was replaced after its shard
    manifest = Manifest.load(root / "views")
    assert manifest.shape_ids() == [0, 1, 2, 3]
    first = manifest.shards[0]["file"]
    assert pq.read_table(root / "views" / first).equals(pq.read_table(small_root / "views" / first))


@pytest.mark.ray
@pytest.mark.parametrize("workers, threads, cpus", [(2, 2, 4), (3, 1, 3), (None, 2, None)])
def test_local_ray_gets_cpus_for_every_worker_thread(small_root, tmp_path, monkeypatch, workers, threads, cpus):
    """run_render(workers=W) with T threads per worker starts a local Ray with W x T CPUs: with
    only W, all but W / T workers would wait for CPUs that never free up."""
    import pipelines.ray_runtime as runtime
    from pipelines.render import run_render

    seen = []

    def fake_init_ray(address, n):
        seen.append((address, n))
        raise RuntimeError("stop here: only the CPU count is under test")

    monkeypatch.setattr(runtime, "init_ray", fake_init_ray)
    root = fresh_copy(small_root, tmp_path / "root")
    with pytest.raises(RuntimeError, match="stop here"):
        run_render(render_config(root, small_root, threads=threads), workers=workers, progress=False)
    assert seen == [(None, cpus)]


@pytest.mark.ray
def test_same_seed_same_cameras_and_bytes_for_one_and_two_workers(small_root, tmp_path):
    """small_root was rendered by two workers; one worker (and --positions) gives the same cameras
    and the same images, depth and normals."""
    from pipelines.render import run_render

    root = fresh_copy(small_root, tmp_path / "root")
    result = run_render(render_config(root, small_root, positions=True), workers=1, progress=False)
    assert result.workers_started == 1 and result.failures == []
    assert_same_content(root, small_root, columns=("shape_id", "view", "c2w", "intrinsics"))
    assert_same_content(root, small_root)
    # Positions are the depth lifted through the camera, inside the shape's bounding sphere.
    bounds = shape_bounds(root)
    for sid, shape_views in read_views(root).items():
        for v in shape_views:
            covered = v.depth > 0
            np.testing.assert_allclose(v.position, unproject_depth(v.depth, v.c2w, v.intrinsics), atol=1e-5)
            assert np.all(v.position[~covered] == 0)
            assert np.linalg.norm(v.position[covered], axis=1).max() <= bounds[sid] + 0.05


# ---- zeroverse validate -----------------------------------------------------------------------------


def run_cli(*args: str):
    from click.testing import CliRunner

    from zeroverse.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rewrite_shard(views_dir: Path, shard, table, rows: int | None = None) -> None:
    """Writes `table` over the shard and updates the manifest's bytes/sha256, as if it had been
    rendered that way (so only the content check can catch it)."""
    import dataclasses
    import hashlib

    path = views_dir / shard.file
    pq.write_table(table, path, compression="zstd")
    manifest = Manifest.load(views_dir)
    record = manifest.shard_for(shard.first)
    changed = dataclasses.replace(record, bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                  rows=record.rows if rows is None else rows)  # fmt: skip
    manifest.replace_shard(changed)
    manifest.save(views_dir)


@pytest.mark.ray
def test_validate_passes_a_good_root(small_root, tmp_path):
    root = copy_root(small_root, tmp_path / "root")
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "8 shapes, 32 views checked: OK" in result.output
    assert run_cli("validate", "--root", str(root), "--views", "4").exit_code == 0
    wrong = run_cli("validate", "--root", str(root), "--views", "5")
    assert wrong.exit_code == 1 and "4 views, expected 5" in wrong.output
    as_json = json.loads(run_cli("validate", "--root", str(root), "--json").output)
    assert as_json["ok"] and as_json["views"] == 32 and as_json["problems"] == []


@pytest.mark.ray
def test_validate_names_a_truncated_shard(small_root, tmp_path):
    root = copy_root(small_root, tmp_path / "root")
    shard = Manifest.load(root / "views").shards[1]
    path = root / "views" / shard["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1
    assert str(path) in result.output and "sha256" in result.output
    # Without the checksum the truncated file is still caught, as unreadable Parquet.
    manifest = Manifest.load(root / "views")
    manifest.replace_shard(dataclasses.replace(manifest.shard_for(shard.first), sha256=None))  # as roots made before sha256s
    manifest.save(root / "views")
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1 and str(path) in result.output and "unreadable Parquet" in result.output


@pytest.mark.ray
def test_validate_names_a_missing_shard(small_root, tmp_path):
    root = copy_root(small_root, tmp_path / "root")
    shard = Manifest.load(root / "views").shards[0]
    (root / "views" / shard["file"]).unlink()
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1 and f"{shard['file']}: listed in the manifest but missing" in result.output


@pytest.mark.ray
def test_validate_names_a_view_whose_depth_disagrees_with_alpha(small_root, tmp_path):
    import pyarrow as pa

    root = copy_root(small_root, tmp_path / "root")
    views_dir = root / "views"
    shard = Manifest.load(views_dir).shards[0]
    table = pq.read_table(views_dir / shard["file"])
    k = 6  # one row: empty one covered pixel's depth
    row = table.slice(k, 1).to_pylist()[0]
    depth = np.frombuffer(row["depth"], "<f4").reshape(row["height"], row["width"]).copy()
    ys, xs = np.nonzero(depth > 0)
    depth[ys[0], xs[0]] = 0.0
    column = table.column("depth").to_pylist()
    column[k] = depth.tobytes()
    table = table.set_column(table.schema.get_field_index("depth"), table.schema.field("depth"), pa.array(column, pa.binary()))
    rewrite_shard(views_dir, shard, table)
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1
    expected = f"{views_dir / shard['file']} shape {row['shape_id']} view {row['view']}: depth is not present exactly where alpha > 0"
    assert expected in result.output, result.output
    assert "1 problem(s)" in result.output


@pytest.mark.ray
def test_validate_names_a_shape_with_a_missing_view(small_root, tmp_path):
    """A shard that is self-consistent (rows and checksum match its manifest record) but lost one
    view of a shape: the expected count comes from the rig the manifest records."""
    root = copy_root(small_root, tmp_path / "root")
    views_dir = root / "views"
    shard = Manifest.load(views_dir).shards[0]
    table = pq.read_table(views_dir / shard["file"])
    lost = table.slice(5, 1).to_pylist()[0]
    rewrite_shard(views_dir, shard, table.take([i for i in range(table.num_rows) if i != 5]), rows=table.num_rows - 1)
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1, result.output
    assert f"{views_dir / shard['file']} shape {lost['shape_id']}: 3 views, expected 4" in result.output


@pytest.mark.ray
def test_validate_names_a_duplicated_view_index(small_root, tmp_path):
    import pyarrow as pa

    root = copy_root(small_root, tmp_path / "root")
    views_dir = root / "views"
    shard = Manifest.load(views_dir).shards[1]
    table = pq.read_table(views_dir / shard["file"])
    views = table.column("view").to_pylist()
    sid = table.column("shape_id")[1].as_py()
    views[1] = views[0]  # the shape now has views 0, 0, 2, 3
    table = table.set_column(table.schema.get_field_index("view"), table.schema.field("view"), pa.array(views, pa.int32()))
    rewrite_shard(views_dir, shard, table)
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1, result.output
    assert f"{views_dir / shard['file']} shape {sid}: view indices [0, 0, 2, 3]" in result.output


@pytest.mark.ray
def test_validate_names_a_truncated_normal_map(small_root, tmp_path):
    import pyarrow as pa

    root = copy_root(small_root, tmp_path / "root")
    views_dir = root / "views"
    shard = Manifest.load(views_dir).shards[0]
    table = pq.read_table(views_dir / shard["file"])
    normals = table.column("normal").to_pylist()
    normals[2] = normals[2][:-6]
    row = table.slice(2, 1).to_pylist()[0]
    table = table.set_column(table.schema.get_field_index("normal"), table.schema.field("normal"), pa.array(normals, pa.binary()))
    rewrite_shard(views_dir, shard, table)
    result = run_cli("validate", "--root", str(root))
    assert result.exit_code == 1, result.output
    assert f"shape {row['shape_id']} view {row['view']}: normal holds" in result.output


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.ray
def test_render_without_shapes_names_the_path(ray_local, tmp_path):
    root = tmp_path / "nothing-here"
    result = run_cli("render", "--root", str(root), "--resolution", "32", "--engine", "cycles", "--no-progress")
    assert result.exit_code != 0
    assert f"{root / 'shapes'} has no shapes manifest" in result.output
    assert "zeroverse generate" in result.output
    assert not root.exists()  # nothing was created on the way to the error


@pytest.mark.ray
def test_render_eevee_without_gpu_is_refused(ray_local, small_root, tmp_path):
    if ray_local.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this Ray cluster has a GPU")
    root = copy_root(small_root, tmp_path / "root")
    result = run_cli("render", "--root", str(root), "--engine", "eevee", "--resolution", "32", "--no-progress")
    assert result.exit_code != 0
    assert "--engine eevee needs an NVIDIA GPU" in result.output and "--engine cycles" in result.output


@pytest.mark.parametrize("resolution", ["8", "0", "5000"])
def test_render_bad_resolution_is_refused(tmp_path, resolution):
    result = run_cli("render", "--root", str(tmp_path / "r"), "--resolution", resolution, "--engine", "cycles", "--no-progress")
    assert result.exit_code != 0
    assert f"--resolution {resolution}: use 16..4096 pixels" in result.output


@pytest.mark.parametrize("args, named", [(["--views", "0"], "0 is not positive"), (["--samples", "0"], "0 is not positive"), (["--engine", "vulkan"], "'vulkan'"), (["--rig", "dome"], "'dome'")])
def test_render_bad_options_are_refused(tmp_path, args, named):
    result = run_cli("render", "--root", str(tmp_path / "r"), *args, "--no-progress")
    assert result.exit_code != 0 and named in result.output


@pytest.mark.ray
def test_render_refuses_to_mix_configs_in_one_root(small_root, tmp_path):
    root = copy_root(small_root, tmp_path / "root")
    before = (root / "views" / "manifest.json").read_bytes()
    result = run_cli("render", "--root", str(root), "--views", "4", "--resolution", "32", "--samples", "4",
                     "--engine", "cycles", "--shapes-per-shard", "4", "--no-progress")
    assert result.exit_code != 0
    assert "was made with another config" in result.output and "Nothing was changed" in result.output
    assert (root / "views" / "manifest.json").read_bytes() == before
