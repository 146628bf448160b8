"""Small but geometrically real view shards for tests and benchmarks (numpy ray casting, no Blender).

Every shape is a sphere plus an axis-aligned box inside [-1, 1]^3, textured and lit by a fixed
directional light. Each pixel centre (u = j + 0.5, v = i + 0.5) is ray-cast analytically, so the
shards obey the same contracts as rendered ones (docs/architecture.md): straight-alpha sRGB8 PNG,
planar z-depth (0 where empty), world-space unit normals (float16), world positions (float32),
OpenCV camera-to-world matrices and pixel intrinsics. Depth is one sample per pixel, like Cycles'
depth pass, which is what makes multi-view consistency exactly checkable.

Usage (other tests may reuse it):
    >>> from synthetic_views import write_view_shards
    >>> manifest = write_view_shards(tmp_path, num_shapes=6, views_per_shape=8, resolution=32)
    >>> # tmp_path/views/views-*.parquet + tmp_path/views/manifest.json

`texture="noise"` gives fine random detail so PNG sizes resemble real renders (for benchmarks);
`rig="eval"` renders the GSO evaluation rig (4 `input` views at elevation 20 degrees, azimuths
45/135/225/315, then `target` views); `bev=True` adds one orthographic top view (role `bev`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
from PIL import Image

from zeroverse.scene.cameras import look_at, spherical_eye
from zeroverse.store.manifest import Failure, Manifest, ShardRecord, config_digest
from zeroverse.store.shards import VIEW_SCHEMA, file_metadata, shard_name, shard_ranges, write_shard

FOV_DEG = 50.0
LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])


@dataclass(frozen=True)
class SyntheticShape:
    sphere_centre: np.ndarray  # [3]
    sphere_radius: float
    box_min: np.ndarray  # [3]
    box_max: np.ndarray  # [3]
    texture: np.ndarray  # [T, T, 3] float in [0, 1], sRGB albedo


def make_shape(rng: np.random.Generator, texture: str = "smooth", texture_size: int = 128) -> SyntheticShape:
    """A sphere and a box that overlap (occlusions and depth edges), both inside [-0.9, 0.9]^3."""
    centre = rng.uniform(-0.15, 0.15, 3)
    radius = float(rng.uniform(0.45, 0.7))
    box_centre = rng.uniform(-0.35, 0.35, 3) + np.array([0.35, 0.0, -0.25])
    half = rng.uniform(0.2, 0.45, 3)
    box_min = np.clip(box_centre - half, -0.9, 0.9)
    box_max = np.clip(box_centre + half, -0.9, 0.9)
    t = np.linspace(0.0, 1.0, texture_size, endpoint=False)
    uu, vv = np.meshgrid(t, t, indexing="xy")
    base = rng.uniform(0.2, 0.9, 3)
    freq = rng.uniform(2.0, 6.0, 2)
    smooth = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * uu[..., None] + freq[1] * vv[..., None]) + rng.uniform(0, 6.3, 3))
    tex = 0.6 * base + 0.4 * smooth
    if texture == "noise":
        # Fine detail at several scales, like procedural materials: PNGs stop compressing well.
        coarse = rng.uniform(0.0, 1.0, (texture_size // 8, texture_size // 8, 3)).repeat(8, 0).repeat(8, 1)
        fine = rng.uniform(0.0, 1.0, (texture_size, texture_size, 3))
        tex = 0.45 * tex + 0.3 * coarse + 0.25 * fine
    elif texture != "smooth":
        raise ValueError(f"texture={texture!r}: use 'smooth' or 'noise'")
    return SyntheticShape(centre, radius, box_min, box_max, np.clip(tex, 0.0, 1.0))


def perspective_intrinsics(height: int, width: int, fov_deg: float = FOV_DEG) -> np.ndarray:
    """(fx, fy, cx, cy): horizontal field of view, square pixels, principal point at the centre."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([f, f, width / 2, height / 2])


def rig_cameras(rig: str, num_views: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """[(role, c2w)]: `random` (LRM-Zero-like, radius 2.2-2.8 so cameras stay outside the shape)
    or `eval` (GSO protocol: 4 inputs at elevation 20, azimuths 45/135/225/315; then targets)."""
    cams = []
    if rig == "random":
        for _ in range(num_views):
            radius, el, az = rng.uniform(2.2, 2.8), rng.uniform(-20.0, 60.0), rng.uniform(0.0, 360.0)  # draw order kept
            eye = spherical_eye(radius, az, el)
            cams.append(("view", look_at(eye)))
    elif rig == "eval":
        for az in (45.0, 135.0, 225.0, 315.0)[:num_views]:
            cams.append(("input", look_at(spherical_eye(2.4, az, 20.0))))
        targets = num_views - len(cams)
        for k in range(targets):
            el = (0.0, 35.0)[k % 2]
            cams.append(("target", look_at(spherical_eye(2.4, 360.0 * k / max(targets, 1) + 10.0, el))))
    else:
        raise ValueError(f"rig={rig!r}: use 'random' or 'eval'")
    return cams


def _hit_sphere(o: np.ndarray, d: np.ndarray, shape: SyntheticShape) -> np.ndarray:
    oc = o - shape.sphere_centre
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - shape.sphere_radius**2
    a = np.einsum("ij,ij->i", d, d)
    disc = b * b - a * c
    t = np.full(len(o), np.inf)
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t0, t1 = (-b - sq) / a, (-b + sq) / a
    t = np.where(ok & (t0 > 1e-6), t0, np.where(ok & (t1 > 1e-6), t1, np.inf))
    return t


def _hit_box(o: np.ndarray, d: np.ndarray, shape: SyntheticShape) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        ta = (shape.box_min - o) * inv
        tb = (shape.box_max - o) * inv
    tmin = np.nanmax(np.minimum(ta, tb), axis=1)
    tmax = np.nanmin(np.maximum(ta, tb), axis=1)
    return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)


def _texture_lookup(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    T = tex.shape[0]
    i = (np.mod(v, 1.0) * T).astype(int) % T
    j = (np.mod(u, 1.0) * T).astype(int) % T
    return tex[i, j]


def render_view(
    shape: SyntheticShape, c2w: np.ndarray, intrinsics: np.ndarray, height: int, width: int, projection: str = "perspective"
) -> dict[str, np.ndarray]:
    """Ray-casts every pixel centre. Returns rgba uint8 [H, W, 4] (straight alpha), depth float32
    [H, W] (planar z, 0 empty), normal float32 [H, W, 3] and position float32 [H, W, 3] (world)."""
    fx, fy, cx, cy = intrinsics
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5, indexing="xy")
    x = ((jj - cx) / fx).ravel()
    y = ((ii - cy) / fy).ravel()
    R, t = c2w[:3, :3], c2w[:3, 3]
    if projection == "perspective":
        d_cam = np.stack([x, y, np.ones_like(x)], axis=1)
        d = d_cam @ R.T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(t, d.shape)
    elif projection == "orthographic":  # fx, fy are pixels per world unit; c2w places the image plane
        o = np.stack([x, y, np.zeros_like(x)], axis=1) @ R.T + t
        d = np.broadcast_to(R[:, 2], o.shape).copy()
    else:
        raise ValueError(projection)
    ts = _hit_sphere(o, d, shape)
    tb = _hit_box(o, d, shape)
    t_hit = np.minimum(ts, tb)
    hit = np.isfinite(t_hit)
    p = o + np.where(hit, t_hit, 0.0)[:, None] * d
    on_sphere = hit & (ts <= tb)
    normal = np.zeros_like(p)
    normal[on_sphere] = (p[on_sphere] - shape.sphere_centre) / shape.sphere_radius
    on_box = hit & ~on_sphere
    centre, half = (shape.box_min + shape.box_max) / 2, (shape.box_max - shape.box_min) / 2
    rel = (p[on_box] - centre) / half
    axis = np.argmax(np.abs(rel), axis=1)
    nb = np.zeros_like(rel)
    nb[np.arange(len(rel)), axis] = np.sign(rel[np.arange(len(rel)), axis])
    normal[on_box] = nb
    # Texture coordinates: spherical for the sphere, planar (the two other axes) for the box.
    uv = np.zeros((len(p), 2))
    ns = normal[on_sphere]
    uv[on_sphere, 0] = (np.arctan2(ns[:, 1], ns[:, 0]) / (2 * np.pi)) * 3.0
    uv[on_sphere, 1] = np.arccos(np.clip(ns[:, 2], -1, 1)) / np.pi * 2.0
    pb = p[on_box]
    other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    uv[on_box, 0] = pb[np.arange(len(pb)), other[:, 0]] * 0.7 + 0.5
    uv[on_box, 1] = pb[np.arange(len(pb)), other[:, 1]] * 0.7 + 0.5
    albedo = _texture_lookup(shape.texture, uv[:, 0], uv[:, 1])
    shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0.0, 1.0)
    rgb = np.where(hit[:, None], albedo * shade[:, None], 0.0)
    rgba = np.zeros((len(p), 4), dtype=np.uint8)
    rgba[:, :3] = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    rgba[:, 3] = np.where(hit, 255, 0)
    depth = np.where(hit, (p - t) @ R[:, 2], 0.0) if projection == "perspective" else np.where(hit, t_hit, 0.0)
    position = np.where(hit[:, None], p, 0.0)
    return {
        "rgba": rgba.reshape(height, width, 4),
        "depth": depth.reshape(height, width).astype(np.float32),
        "normal": normal.reshape(height, width, 3).astype(np.float32),
        "position": position.reshape(height, width, 3).astype(np.float32),
    }


def encode_png(rgba: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def shape_rows(
    shape_id: int,
    num_views: int,
    resolution: int,
    seed: int = 0,
    rig: str = "random",
    texture: str = "smooth",
    with_position: bool = True,
    bev: bool = False,
    texture_size: int = 128,
    fov_deg: float = FOV_DEG,
) -> list[dict]:
    """The VIEW_SCHEMA rows of one shape, in view order; seeded by (seed, shape_id)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shape_id,)))
    shape = make_shape(rng, texture=texture, texture_size=texture_size)
    H = W = resolution
    cams = [(role, c2w, "perspective", perspective_intrinsics(H, W, fov_deg)) for role, c2w in rig_cameras(rig, num_views, rng)]
    if bev:
        top = look_at(np.array([0.0, 0.0, 3.0]), up=np.array([0.0, 1.0, 0.0]))
        cams.append(("bev", top, "orthographic", np.array([W / 2.4, H / 2.4, W / 2, H / 2])))
    rows = []
    for view, (role, c2w, projection, intr) in enumerate(cams):
        out = render_view(shape, c2w, intr, H, W, projection)
        rows.append(
            {
                "shape_id": shape_id,
                "view": view,
                "role": role,
                "projection": projection,
                "width": W,
                "height": H,
                "c2w": c2w.astype(np.float32).ravel().tolist(),
                "intrinsics": np.asarray(intr, np.float32).tolist(),
                "rgba": encode_png(out["rgba"]),
                "depth": out["depth"].astype("<f4").tobytes(),
                "normal": out["normal"].astype("<f2").tobytes(),
                "position": out["position"].astype("<f4").tobytes() if with_position else None,
            }
        )
    return rows


def write_view_shards(
    root: Path,
    num_shapes: int = 6,
    views_per_shape: int = 8,
    resolution: int = 32,
    shard_size: int = 4,
    seed: int = 0,
    rig: str = "random",
    texture: str = "smooth",
    with_position: bool = True,
    bev: bool = False,
    views_for: Mapping[int, int] | None = None,
    failed: tuple[int, ...] = (),
    texture_size: int = 128,
    fov_deg: float = FOV_DEG,
) -> Manifest:
    """Writes ROOT/views/views-*.parquet (one row group per shape, one row per view) and, last,
    ROOT/views/manifest.json. `views_for` overrides the view count of some shapes; `failed`
    shapes are left out of the shards and recorded as failures, as the render farm does."""
    views_dir = Path(root) / "views"
    config = {
        "generator": "tests/synthetic_views.py",
        "num_shapes": num_shapes,
        "views_per_shape": views_per_shape,
        "resolution": resolution,
        "rig": rig,
        "texture": texture,
        "bev": bev,
        "texture_size": texture_size,
        "fov_deg": fov_deg,
    }
    manifest = Manifest("views", seed, config, config_digest(config), [], [])
    meta = file_metadata("views", config, seed, extra={"render": {"engine": "numpy-raycast", "rig": rig, "fov_deg": fov_deg}})
    for first, last in shard_ranges(num_shapes, shard_size):
        rows, counts, ids = [], [], []
        for shape_id in range(first, last + 1):
            if shape_id in failed:
                manifest.failures.append(Failure(shape_id, "synthetic failure"))
                continue
            n = (views_for or {}).get(shape_id, views_per_shape)
            shape = shape_rows(shape_id, n, resolution, seed, rig, texture, with_position, bev, texture_size, fov_deg)
            rows.extend(shape)
            counts.append(len(shape))
            ids.append(shape_id)
        if not ids:
            continue
        table = pa.Table.from_pylist(rows, schema=VIEW_SCHEMA)
        path = views_dir / shard_name("views", first, last)
        written = write_shard(table, path, meta, row_group_rows=counts)
        manifest.replace_shard(ShardRecord.of(written, first, last, ids))
    manifest.save(views_dir)
    return manifest
