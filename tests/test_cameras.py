"""Camera conventions and rigs (pure numpy: no bpy, no ray).

The convention is OpenCV: x right, y down, z forward, right-handed, c2w camera-to-world, pixel
centres at +0.5. The Blender side of the same convention is proven in test_render.py (an analytic
box rendered by Blender against a numpy ray caster, and multi-view consistency of real renders).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeroverse.scene.cameras import (
    EVAL_INPUT_AZIMUTHS,
    EVAL_INPUT_ELEVATION,
    EVAL_TARGET_AZIMUTHS,
    EVAL_TARGET_ELEVATIONS,
    RigConfig,
    intrinsics_matrix,
    look_at,
    make_cameras,
    pinhole_intrinsics,
    project,
    rig_rng,
    spherical_eye,
    unproject_depth,
)

SQRT3 = math.sqrt(3.0)


def eye_angles(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radius, azimuth in [0, 360), elevation) in degrees of the camera centres of c2w [V, 4, 4]."""
    eyes = c2w[:, :3, 3]
    r = np.linalg.norm(eyes, axis=1)
    az = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])) % 360.0
    el = np.degrees(np.arcsin(np.clip(eyes[:, 2] / r, -1, 1)))
    return r, az, el


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed a - b wrapped to (-180, 180]."""
    return (np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0


# ---- look_at and the OpenCV convention -----------------------------------------------------------


def test_look_at_axis_aligned_example():
    # From +X looking at the origin with +Z up: forward -X, right +Y, down -Z.
    c2w = look_at(np.array([3.0, 0.0, 0.0]))
    np.testing.assert_allclose(c2w[:3, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [3, 0, 0])
    np.testing.assert_array_equal(c2w[3], [0, 0, 0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_look_at_is_opencv_right_handed(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        eye = rng.normal(size=3) * rng.uniform(0.5, 5.0)
        target = rng.normal(size=3) * 0.3
        c2w = look_at(eye, target)
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)  # right-handed: x cross y = z
        np.testing.assert_allclose(np.cross(R[:, 0], R[:, 1]), R[:, 2], atol=1e-12)
        forward = (target - eye) / np.linalg.norm(target - eye)
        np.testing.assert_allclose(R[:, 2], forward, atol=1e-12)  # z forward
        assert R[:, 0] @ np.array([0, 0, 1.0]) == pytest.approx(0.0, abs=1e-12)  # no roll: x horizontal
        if abs(forward[2]) < 0.99:
            assert R[2, 1] < 0  # y points down (its world-z component is negative)

        # Semantics in pixels: above the target is higher in the image (smaller v), the camera's
        # right is to the right (larger u).
        K = pinhole_intrinsics(50.0, 64, 64)
        (u0, v0), (u_up, v_up), (u_r, v_r) = project(np.stack([target, target + [0, 0, 0.1], target + 0.1 * R[:, 0]]), c2w, K)[0]
        if abs(forward[2]) < 0.99:
            assert v_up < v0
        assert u_r > u0 and v_r == pytest.approx(v0, abs=1e-9)


@pytest.mark.parametrize("eye", [(0, 0, 3.0), (0, 0, -3.0), (0, 0, 1e-3)])
def test_look_at_straight_up_or_down_is_a_rotation(eye):
    c2w = look_at(np.array(eye))
    R = c2w[:3, :3]
    assert np.all(np.isfinite(R))
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], -np.sign(eye[2]) * np.array([0, 0, 1.0]), atol=1e-12)


def test_intrinsics_from_fov():
    fx, fy, cx, cy = pinhole_intrinsics(90.0, 64, 48)
    assert fx == pytest.approx(32.0) and fy == pytest.approx(32.0)
    assert (cx, cy) == (32.0, 24.0)
    K = intrinsics_matrix(np.array([fx, fy, cx, cy]))
    np.testing.assert_allclose(K, [[32, 0, 32], [0, 32, 24], [0, 0, 1]])
    # A point on the edge of the horizontal field of view lands on the image's edge.
    c2w = np.eye(4)
    uv, z = project(np.array([[1.0, 0, 1.0], [-1.0, 0, 1.0]]), c2w, np.array([fx, fy, cx, cy]))
    np.testing.assert_allclose(uv, [[64, 24], [0, 24]], atol=1e-9)
    np.testing.assert_allclose(z, [1, 1])


@pytest.mark.parametrize("kind", ["random", "eval", "orbit", "spiral"])
def test_origin_projects_to_principal_point(kind):
    cams = make_cameras(RigConfig(kind=kind, num_views=16), rig_rng(3, 11), 64)
    for c2w, intr in zip(cams.c2w, cams.intrinsics):
        uv, z = project(np.zeros((1, 3)), c2w, intr)
        np.testing.assert_allclose(uv[0], intr[2:], atol=1e-9)
        assert z[0] == pytest.approx(np.linalg.norm(c2w[:3, 3]))


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
@pytest.mark.parametrize("seed", range(3))
def test_unproject_then_project_round_trip(projection, seed):
    rng = np.random.default_rng(seed)
    h, w = 24, 40
    depth = rng.uniform(0.5, 4.0, size=(h, w))
    depth[rng.uniform(size=(h, w)) < 0.2] = 0.0  # empty pixels
    c2w = look_at(rng.normal(size=3) * 3, rng.normal(size=3) * 0.2)
    intr = np.array([rng.uniform(20, 60), 0, rng.uniform(15, 25), rng.uniform(8, 16)])
    intr[1] = intr[0] * rng.uniform(0.9, 1.1)
    world = unproject_depth(depth, c2w, intr, projection)
    assert world.shape == (h, w, 3)
    np.testing.assert_array_equal(world[depth == 0], 0.0)
    covered = depth > 0
    uv, z = project(world[covered], c2w, intr, projection)
    vs, us = np.nonzero(covered)
    np.testing.assert_allclose(uv, np.stack([us + 0.5, vs + 0.5], -1), atol=1e-9)  # pixel centres at +0.5
    np.testing.assert_allclose(z, depth[covered], rtol=1e-12)


def test_project_z_is_planar_depth():
    c2w = look_at(np.array([0, -2.0, 0]))
    intr = pinhole_intrinsics(60.0, 32, 32)
    # Points on the plane y = 0 (2 units in front of the camera) all have z = 2, centre or edge.
    points = np.array([[0, 0, 0], [0.5, 0, 0.3], [-0.7, 0, -0.6]], float)
    _, z = project(points, c2w, intr)
    np.testing.assert_allclose(z, 2.0)


# ---- rigs ------------------------------------------------------------------------------------------


def test_eval_rig_follows_the_gso_protocol():
    cfg = RigConfig(kind="eval")
    cams = make_cameras(cfg, rig_rng(0, 0), 64)
    assert len(cams) == 4 + 64
    assert cams.roles == ["input"] * 4 + ["target"] * 64
    assert cams.projections == ["perspective"] * 68
    r, az, el = eye_angles(cams.c2w)
    np.testing.assert_allclose(r, cfg.radius)
    np.testing.assert_allclose(el[:4], EVAL_INPUT_ELEVATION, atol=1e-9)
    np.testing.assert_allclose(angle_diff(az[:4], [45, 135, 225, 315]), 0, atol=1e-9)
    assert EVAL_INPUT_AZIMUTHS == (45.0, 135.0, 225.0, 315.0)
    assert EVAL_TARGET_ELEVATIONS == (0.0, 20.0, 40.0, 60.0) and EVAL_TARGET_AZIMUTHS == 16
    targets = sorted((round(e, 6), round(a, 6) % 360) for e, a in zip(el[4:], az[4:]))
    expected = sorted((e, a) for e in (0.0, 20.0, 40.0, 60.0) for a in np.arange(16) * 22.5)
    assert targets == expected
    # A fixed ring: the same for every shape and seed.
    other = make_cameras(cfg, rig_rng(9, 123), 64)
    np.testing.assert_array_equal(cams.c2w, other.c2w)


def test_eval_rig_radius_is_raised_beyond_the_shape():
    cams = make_cameras(RigConfig(kind="eval", radius=1.0, near=0.05), rig_rng(0, 0), 32, bound_radius=1.6)
    r, _, _ = eye_angles(cams.c2w)
    np.testing.assert_allclose(r, 1.6 + 2 * 0.05)


@pytest.mark.parametrize("bound", [0.5, SQRT3, 1.9])
def test_random_rig_radii_within_range_and_beyond_the_shape(bound):
    cfg = RigConfig(kind="random", num_views=32)
    lo, hi = cfg.radius_range
    radii = []
    for shape_id in range(40):
        cams = make_cameras(cfg, rig_rng(0, shape_id), 32, bound_radius=bound)
        assert cams.roles == ["view"] * 32
        r, _, _ = eye_angles(cams.c2w)
        radii.append(r)
    radii = np.concatenate(radii)
    floor = max(lo, bound + 2 * cfg.near)
    assert radii.min() >= floor - 1e-9
    assert radii.max() <= max(hi, floor) + 1e-9
    assert np.all(radii >= bound + 2 * cfg.near)  # the rig's guarantee: outside the shape, near plane clear
    if floor < hi:
        assert radii.max() - radii.min() > 0.8 * (hi - floor)  # the range is really used


def test_random_rig_default_never_inside_the_cube():
    cams = make_cameras(RigConfig(), rig_rng(1, 2), 32)  # bound defaults to the cube's corner
    r, _, _ = eye_angles(cams.c2w)
    assert r.min() >= SQRT3 + 2 * 0.05


@pytest.mark.parametrize("band", [(10.0, 40.0), (-30.0, 0.0), (0.0, 90.0), (45.0, 45.0)])
def test_random_rig_elevation_band_respected(band):
    cfg = RigConfig(kind="random", num_views=64, elevation_range_deg=band)
    els = np.concatenate([eye_angles(make_cameras(cfg, rig_rng(4, s), 32).c2w)[2] for s in range(30)])
    assert els.min() >= band[0] - 1e-6 and els.max() <= band[1] + 1e-6
    # Uniform on the band of the sphere: z = sin(elevation) is uniform, so its mean is the middle.
    z = np.sin(np.radians(els))
    z_lo, z_hi = np.sin(np.radians(band))
    assert z.mean() == pytest.approx((z_lo + z_hi) / 2, abs=0.03 + 1e-9)


def test_orbit_rig_ordering():
    cfg = RigConfig(kind="orbit", num_views=12, orbit_elevation_deg=20.0)
    cams = make_cameras(cfg, rig_rng(0, 5), 32)
    r, az, el = eye_angles(cams.c2w)
    np.testing.assert_allclose(r, cfg.radius)
    np.testing.assert_allclose(el, 20.0, atol=1e-9)
    np.testing.assert_allclose(angle_diff(az[1:], az[:-1]), 30.0, atol=1e-9)  # counter-clockwise, even steps
    assert cams.roles == ["view"] * 12
    # Each shape starts elsewhere, but the path is the same ring.
    az_other = eye_angles(make_cameras(cfg, rig_rng(0, 6), 32).c2w)[1]
    assert abs(angle_diff(az_other[0], az[0])) > 1e-3


def test_spiral_rig_ordering():
    cfg = RigConfig(kind="spiral", num_views=9, spiral_elevation_range_deg=(-20.0, 60.0), spiral_turns=2.0)
    cams = make_cameras(cfg, rig_rng(0, 5), 32)
    r, az, el = eye_angles(cams.c2w)
    np.testing.assert_allclose(r, cfg.radius)
    np.testing.assert_allclose(el, np.linspace(-20.0, 60.0, 9), atol=1e-9)  # climbs from low to high
    np.testing.assert_allclose(angle_diff(az[1:], az[:-1]), 360.0 * 2 / 9, atol=1e-9)


def test_single_view_spiral_does_not_divide_by_zero():
    cams = make_cameras(RigConfig(kind="spiral", num_views=1), rig_rng(0, 0), 32)
    assert len(cams) == 1 and np.all(np.isfinite(cams.c2w))


@pytest.mark.parametrize("kind", ["random", "orbit"])
def test_bev_view_is_orthographic_looking_down(kind):
    res = 64
    cams = make_cameras(RigConfig(kind=kind, num_views=3, bev=True), rig_rng(0, 1), res)
    assert len(cams) == 4
    assert cams.roles[-1] == "bev" and cams.projections[-1] == "orthographic"
    assert cams.projections[:-1] == ["perspective"] * 3
    c2w, intr = cams.c2w[-1], cams.intrinsics[-1]
    np.testing.assert_allclose(c2w[:3, 2], [0, 0, -1], atol=1e-12)  # z forward = straight down
    assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    assert c2w[2, 3] >= SQRT3 + cams.near  # above the shape's bounding sphere
    # The cube's top face fills the image exactly: x right = +X, image up = +Y.
    corners = np.array([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1]], float)
    uv, z = project(corners, c2w, intr, "orthographic")
    np.testing.assert_allclose(uv, [[0, 0], [res, 0], [0, res], [res, res]], atol=1e-9)
    assert np.all(z > 0)
    # Orthographic unprojection of a constant depth is a plane parallel to the ground.
    world = unproject_depth(np.full((res, res), 0.5), c2w, intr, "orthographic")
    np.testing.assert_allclose(world[..., 2], c2w[2, 3] - 0.5)


def test_camera_set_image_size():
    cams = make_cameras(RigConfig(num_views=2), rig_rng(0, 0), 48)
    assert (cams.width, cams.height) == (48, 48)
    np.testing.assert_allclose(cams.intrinsics[:, 2:], 24.0)
    assert cams.c2w.shape == (2, 4, 4) and cams.intrinsics.shape == (2, 4)


# ---- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "orbit", "spiral"])
def test_same_seed_same_cameras_other_shape_other_cameras(kind):
    cfg = RigConfig(kind=kind, num_views=8, bev=True)
    a = make_cameras(cfg, rig_rng(7, 3), 64)
    b = make_cameras(cfg, rig_rng(7, 3), 64)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    np.testing.assert_array_equal(a.intrinsics, b.intrinsics)
    assert a.roles == b.roles and a.projections == b.projections
    other_shape = make_cameras(cfg, rig_rng(7, 4), 64)
    other_seed = make_cameras(cfg, rig_rng(8, 3), 64)
    assert not np.allclose(a.c2w[:-1], other_shape.c2w[:-1])  # the bev view is fixed by design
    assert not np.allclose(a.c2w[:-1], other_seed.c2w[:-1])


def test_camera_stream_is_independent_of_other_draws():
    # rig_rng is derived from (seed, shape id, camera stream) alone: drawing from another generator
    # (e.g. the recipe's) in between changes nothing.
    first = make_cameras(RigConfig(), rig_rng(0, 0), 32).c2w
    np.random.default_rng(0).uniform(size=1000)
    np.testing.assert_array_equal(first, make_cameras(RigConfig(), rig_rng(0, 0), 32).c2w)


def test_spherical_eye():
    np.testing.assert_allclose(spherical_eye(2.0, 90.0, 0.0), [0, 2, 0], atol=1e-12)
    np.testing.assert_allclose(spherical_eye(2.0, 0.0, 90.0), [0, 0, 2], atol=1e-12)


# ---- bad configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"kind": "sphere"}, "'sphere'"),
        ({"num_views": 0}, "0"),
        ({"num_views": -3}, "-3"),
        ({"fov_deg": 0.0}, "0.0"),
        ({"fov_deg": 180.0}, "180.0"),
        ({"radius_range": (2.0, 1.0)}, "[2.0, 1.0]"),
        ({"radius_range": (0.0, 1.0)}, "[0.0, 1.0]"),
        ({"radius_range": (-1.0, 2.0)}, "[-1.0, 2.0]"),
        ({"elevation_range_deg": (-100.0, 0.0)}, "[-100.0, 0.0]"),
        ({"elevation_range_deg": (50.0, 10.0)}, "[50.0, 10.0]"),
        ({"elevation_range_deg": (0.0, 95.0)}, "[0.0, 95.0]"),
        ({"radius": 0.0}, "radius=0.0"),
        ({"radius": -2.0}, "radius=-2.0"),
        ({"near": 0.0}, "near=0.0"),
        ({"near": -0.1}, "near=-0.1"),
        ({"far": 0.01}, "far=0.01"),
        ({"orbit_elevation_deg": 120.0}, "120.0"),
        ({"spiral_elevation_range_deg": (-95.0, 60.0)}, "[-95.0, 60.0]"),
    ],
)
def test_bad_rig_config_raises_naming_the_value(kwargs, named):
    with pytest.raises(ValueError) as info:
        RigConfig(**kwargs)
    assert named in str(info.value)


def test_good_rig_configs_are_accepted():
    RigConfig(kind="eval", fov_deg=1.0)
    RigConfig(fov_deg=170.0, elevation_range_deg=(-90.0, 90.0), radius_range=(2.0, 2.0))
    RigConfig(kind="spiral", spiral_elevation_range_deg=(60.0, -20.0))  # descending spirals are fine
