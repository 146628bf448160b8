"""Camera rigs and conventions (pure numpy; runs inside Blender's Python too).

Conventions (zeroverse.scene.conventions): OpenCV cameras, x right, y down, z forward; c2w is
camera-to-world; intrinsics fx, fy, cx, cy in pixels with pixel centres at +0.5.

What the rigs guarantee: every perspective camera looks at the origin from outside the shape's
bounding sphere with at least `near` to spare (radius >= bound_radius + 2 * near), so no camera
sits inside the shape and the near plane never clips it. Shapes live in [-1, 1]^3, whose
corners are sqrt(3) = 1.73 from the origin; the default radius range U(1.67, 3.11) is LRM-Zero's
U(1.5, 2.8) for shapes of largest side 1.8 carried into our units (x 1/0.9), and its lower end
is raised per shape to the bound above when the shape reaches that far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

RIG_KINDS = ("random", "eval", "orbit", "spiral")
RIG_STREAM = 1  # SeedSequence stream id of camera draws: recipes use (seed, shape_id) alone

# GSO evaluation protocol (as used by GS-LRM / LRM-Zero): 4 inputs at elevation 20 deg.
EVAL_INPUT_ELEVATION = 20.0
EVAL_INPUT_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
EVAL_TARGET_ELEVATIONS = (0.0, 20.0, 40.0, 60.0)
EVAL_TARGET_AZIMUTHS = 16


@dataclass(frozen=True)
class RigConfig:
    kind: str = "random"
    num_views: int = 32  # random, orbit, spiral
    fov_deg: float = 50.0  # horizontal field of view
    radius_range: tuple[float, float] = (1.67, 3.11)  # random rig
    elevation_range_deg: tuple[float, float] = (-90.0, 90.0)  # random rig: uniform on this band of the sphere
    radius: float = 2.7  # eval, orbit, spiral
    orbit_elevation_deg: float = 20.0
    spiral_elevation_range_deg: tuple[float, float] = (-20.0, 60.0)
    spiral_turns: float = 2.0
    eval_targets_per_ring: int = EVAL_TARGET_AZIMUTHS  # eval rig: fewer targets for quick checks
    bev: bool = False  # add one top-down orthographic view
    near: float = 0.05
    far: float = 100.0
    # Random rig: the first `layout_views` views of each shape follow the evaluation layout
    # (one shared elevation and radius, azimuths 360/k apart, each jittered), role "layout";
    # the others stay uniform on the sphere. A trainer can then give a share of its samples the
    # input layout it is scored on (zeroverse.data: view_sampling="mixed") while the rest, and
    # every held-out evaluation, stay random. 0 (default) keeps the plain random rig.
    layout_views: int = 0
    layout_elevation_range_deg: tuple[float, float] = (0.0, 40.0)
    layout_jitter_deg: float = 10.0  # per-view azimuth and elevation jitter

    def __post_init__(self) -> None:
        if self.kind not in RIG_KINDS:
            raise ValueError(f"--rig {self.kind!r} is unknown; choose one of {', '.join(RIG_KINDS)}")
        if self.num_views < 1:
            raise ValueError(f"--views {self.num_views}: need at least one view")
        if not (1 <= self.eval_targets_per_ring <= 360):
            raise ValueError(f"eval_targets_per_ring={self.eval_targets_per_ring}: use 1..360")
        if not (1.0 <= self.fov_deg <= 170.0):
            raise ValueError(f"fov_deg={self.fov_deg}: use a field of view in [1, 170] degrees")
        lo, hi = self.radius_range
        if not (0 < lo <= hi):
            raise ValueError(f"radius_range={[lo, hi]}: need 0 < low <= high")
        elo, ehi = self.elevation_range_deg
        if not (-90.0 <= elo <= ehi <= 90.0):
            raise ValueError(f"elevation_range_deg={[elo, ehi]}: need -90 <= low <= high <= 90")
        if not self.radius > 0:
            raise ValueError(f"radius={self.radius}: the eval/orbit/spiral camera distance must be > 0")
        if not (0 < self.near < self.far):
            raise ValueError(f"near={self.near}, far={self.far}: need 0 < near < far (clip planes in world units)")
        if not 0 <= self.layout_views <= self.num_views or (self.layout_views and self.kind != "random"):
            raise ValueError(
                f"layout_views={self.layout_views}: use 0..--views ({self.num_views}), with the random rig only"
            )
        llo, lhi = self.layout_elevation_range_deg
        if not (-90.0 <= llo <= lhi <= 90.0) or not 0 <= self.layout_jitter_deg <= 45:
            raise ValueError(
                f"layout_elevation_range_deg={[llo, lhi]}, layout_jitter_deg={self.layout_jitter_deg}: "
                "need -90 <= low <= high <= 90 and a jitter in 0..45 degrees"
            )
        if not -90.0 <= self.orbit_elevation_deg <= 90.0:
            raise ValueError(f"orbit_elevation_deg={self.orbit_elevation_deg}: use -90..90 degrees")
        slo, shi = self.spiral_elevation_range_deg
        if not (-90.0 <= slo <= 90.0 and -90.0 <= shi <= 90.0):
            raise ValueError(f"spiral_elevation_range_deg={[slo, shi]}: both ends must lie in -90..90 degrees")


@dataclass
class CameraSet:
    """V cameras of one shape. c2w [V, 4, 4] float64 (OpenCV), intrinsics [V, 4] (fx, fy, cx,
    cy, pixels), roles and projections per view, image size shared by all."""

    c2w: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    roles: list[str] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)
    near: float = 0.05
    far: float = 100.0

    def __len__(self) -> int:
        return len(self.c2w)


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """OpenCV camera-to-world [4, 4] at `eye` looking at `target` (default origin), world +Z up."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight up or down: any horizontal right works
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def spherical_eye(radius: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def pinhole_intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """(fx, fy, cx, cy) for a horizontal field of view, square pixels, centred principal point."""
    fx = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([fx, fx, width / 2.0, height / 2.0])


def intrinsics_matrix(intrinsics: np.ndarray) -> np.ndarray:
    """[..., 4] (fx, fy, cx, cy) -> [..., 3, 3] K."""
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    K = np.zeros(intrinsics.shape[:-1] + (3, 3))
    K[..., 0, 0], K[..., 1, 1] = intrinsics[..., 0], intrinsics[..., 1]
    K[..., 0, 2], K[..., 1, 2] = intrinsics[..., 2], intrinsics[..., 3]
    K[..., 2, 2] = 1.0
    return K


def rig_identity(cfg: RigConfig) -> dict:
    """The rig's fields as they enter a views root's config identity. Fields added after roots
    were first written (layout_*) appear only when they differ from their defaults, so those
    roots still resume."""
    later = {"layout_views", "layout_elevation_range_deg", "layout_jitter_deg"}
    defaults = RigConfig()
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in later and value == getattr(defaults, f.name):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def rig_rng(seed: int, shape_id: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(shape_id), RIG_STREAM]))


def make_cameras(cfg: RigConfig, rng: np.random.Generator, resolution: int, bound_radius: float = math.sqrt(3.0)) -> CameraSet:
    """The cameras of one shape. `bound_radius` is the shape's bounding-sphere radius about the
    origin (at most sqrt(3) for a shape in the cube); radii are kept beyond it (module docstring)."""
    min_radius = bound_radius + 2 * cfg.near
    eyes, roles = [], []
    if cfg.kind == "random":
        lo = max(cfg.radius_range[0], min_radius)
        hi = max(cfg.radius_range[1], lo)
        z_lo, z_hi = (math.sin(math.radians(e)) for e in cfg.elevation_range_deg)
        if cfg.layout_views:
            elevation = rng.uniform(*cfg.layout_elevation_range_deg)
            start, radius, j = rng.uniform(0.0, 360.0), rng.uniform(lo, hi), cfg.layout_jitter_deg
            for k in range(cfg.layout_views):
                az = start + k * 360.0 / cfg.layout_views + rng.uniform(-j, j)
                el = float(np.clip(elevation + rng.uniform(-j, j) / 2, -89.0, 89.0))
                eyes.append(spherical_eye(radius, az, el))
                roles.append("layout")
        for _ in range(cfg.num_views - cfg.layout_views):
            z = rng.uniform(z_lo, z_hi)  # uniform in z = uniform in area on the sphere band
            az = rng.uniform(0.0, 2 * math.pi)
            r = rng.uniform(lo, hi)
            rho = math.sqrt(max(0.0, 1 - z * z))
            eyes.append(r * np.array([rho * math.cos(az), rho * math.sin(az), z]))
            roles.append("view")
    else:
        radius = max(cfg.radius, min_radius)
        if cfg.kind == "eval":
            for az in EVAL_INPUT_AZIMUTHS:
                eyes.append(spherical_eye(radius, az, EVAL_INPUT_ELEVATION))
                roles.append("input")
            for el in EVAL_TARGET_ELEVATIONS:
                for k in range(cfg.eval_targets_per_ring):
                    eyes.append(spherical_eye(radius, k * 360.0 / cfg.eval_targets_per_ring, el))
                    roles.append("target")
        else:
            start = rng.uniform(0.0, 360.0)  # each shape's path starts somewhere else
            for k in range(cfg.num_views):
                frac = k / cfg.num_views
                if cfg.kind == "orbit":
                    eyes.append(spherical_eye(radius, start + 360.0 * frac, cfg.orbit_elevation_deg))
                else:
                    lo_el, hi_el = cfg.spiral_elevation_range_deg
                    elevation = lo_el + (hi_el - lo_el) * (k / max(1, cfg.num_views - 1))
                    eyes.append(spherical_eye(radius, start + 360.0 * cfg.spiral_turns * frac, elevation))
                roles.append("view")
    c2w = [look_at(e) for e in eyes]
    intr = [pinhole_intrinsics(cfg.fov_deg, resolution, resolution)] * len(eyes)
    projections = ["perspective"] * len(eyes)
    if cfg.bev:
        c2w.append(look_at(np.array([0.0, 0.0, bound_radius + 1.0]), up=np.array([0.0, 1.0, 0.0])))
        # Orthographic: fx = pixels per world unit, so the cube's side of 2 spans the image.
        intr.append(np.array([resolution / 2.0, resolution / 2.0, resolution / 2.0, resolution / 2.0]))
        roles.append("bev")
        projections.append("orthographic")
    return CameraSet(np.stack(c2w), np.stack(intr), resolution, resolution, roles, projections, cfg.near, cfg.far)


def project(points: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, projection: str = "perspective") -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> (pixel coordinates [N, 2] (continuous, centres at +0.5), z [N])."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    fx, fy, cx, cy = intrinsics
    z = cam[:, 2]
    if projection == "orthographic":
        return np.stack([fx * cam[:, 0] + cx, fy * cam[:, 1] + cy], -1), z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy], -1), z


def unproject_depth(depth: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, projection: str = "perspective") -> np.ndarray:
    """Planar depth [H, W] -> world positions [H, W, 3] at pixel centres (0 where depth is 0)."""
    h, w = depth.shape
    fx, fy, cx, cy = intrinsics
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    if projection == "orthographic":
        cam = np.stack([(u - cx) / fx, (v - cy) / fy, depth], -1)
    else:
        cam = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], -1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return np.where(depth[..., None] > 0, world, 0.0)
