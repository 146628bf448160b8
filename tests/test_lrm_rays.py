import pytest
import torch

from zeroverse.lrm.camera_rays import (
    look_at,
    plucker_rays,
    ray_origins_directions,
    world_to_camera,
)


def _camera_on_minus_y():
    """Camera at (0, -3, 0) looking at the origin, Z up: OpenCV x -> +X, y -> -Z, z -> +Y."""
    c2w = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0],
         [0.0, 0.0, 1.0, -3.0],
         [0.0, -1.0, 0.0, 0.0],
         [0.0, 0.0, 0.0, 1.0]]
    )
    K = torch.tensor([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])
    return c2w, K


def test_look_at_matches_hand_built_camera():
    c2w, _ = _camera_on_minus_y()
    got = look_at(torch.tensor([0.0, -3.0, 0.0]), torch.zeros(3))
    torch.testing.assert_close(got, c2w)


def test_plucker_hand_computed_pixel():
    c2w, K = _camera_on_minus_y()
    pl = plucker_rays(c2w[None], K[None], 10, 10)
    assert pl.shape == (1, 6, 10, 10)
    # Pixel row 0, column 9: centre (u, v) = (9.5, 0.5) -> camera direction (0.45, -0.45, 1)
    # -> world 0.45 * X + (-0.45) * (-Z) + 1 * Y = (0.45, 1, 0.45).
    d = torch.tensor([0.45, 1.0, 0.45])
    d = d / d.norm()
    o = torch.tensor([0.0, -3.0, 0.0])
    m = torch.tensor([-3.0 * d[2], 0.0, 3.0 * d[0]])  # o x d by hand
    torch.testing.assert_close(pl[0, :3, 0, 9], d)
    torch.testing.assert_close(pl[0, 3:, 0, 9], m)
    torch.testing.assert_close(torch.linalg.cross(o, d), m)
    # Principal point sits on the corner of four pixels; pixel (4, 4) centre is (4.5, 4.5).
    d44 = torch.tensor([-0.05, 1.0, 0.05])
    torch.testing.assert_close(pl[0, :3, 4, 4], d44 / d44.norm())


def test_rays_unit_and_moment_invariant_along_ray():
    torch.manual_seed(0)
    eye = torch.randn(3, 3) * 2 + torch.tensor([0.0, 0.0, 3.0])
    c2w = look_at(eye, torch.zeros(3))
    K = torch.tensor([[20.0, 0.0, 8.0], [0.0, 22.0, 7.0], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    o, d = ray_origins_directions(c2w, K, 14, 16)
    assert o.shape == d.shape == (3, 14, 16, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3, 14, 16))
    pl = plucker_rays(c2w, K, 14, 16)
    moved = torch.linalg.cross(o + 1.7 * d, d, dim=-1)  # another point on the same ray
    torch.testing.assert_close(pl[:, 3:].movedim(1, -1), moved, atol=1e-5, rtol=1e-5)
    # Projecting a point along a pixel's ray lands on that pixel's centre.
    w2c = world_to_camera(c2w)
    p = o[:, 3, 5] + 2.0 * d[:, 3, 5]
    pc = (w2c[:, :3, :3] @ p[..., None])[..., 0] + w2c[:, :3, 3]
    uv = (K @ pc[..., None])[..., 0]
    torch.testing.assert_close(uv[:, :2] / uv[:, 2:], torch.tensor([[5.5, 3.5]] * 3))


def test_world_to_camera_is_inverse():
    c2w = look_at(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3))
    torch.testing.assert_close(world_to_camera(c2w) @ c2w, torch.eye(4)[None], atol=1e-6, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="c2w"):
        plucker_rays(torch.eye(3), torch.eye(3), 4, 4)
