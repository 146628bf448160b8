"""Primitive meshes are closed, outward, UV-mapped and region-labelled: the boolean solver and the
renderer rely on all four."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeroverse.scene.primitives import (
    drop_degenerate_faces,
    normalise_into_cube,
    primitive_mesh,
    quad_polygons,
    primitive_quads,
)
from zeroverse.scene.recipe import REGIONS_PER_KIND, HeightField, Primitive, RecipeConfig, sample_recipe

IDENTITY = (1.0, 0.0, 0.0, 0.0)


def signed_volume(v, f):
    v = v.astype(np.float64)
    return np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6


def is_closed_and_consistent(f):
    """Every directed edge appears once and its reverse once: closed, consistently oriented."""
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    directed = set(map(tuple, edges.tolist()))
    return len(directed) == len(edges) and all((b, a) in directed for a, b in directed)


TUBE = 0.3
ANALYTIC = {
    "ellipsoid": 4 / 3 * math.pi,
    "box": 8.0,
    "cylinder": 2 * math.pi,
    "cone": 2 * math.pi / 3,
    "torus": 2 * math.pi**2 * (1 / (1 + TUBE)) * (TUBE / (1 + TUBE)) ** 2,
}


@pytest.mark.parametrize("kind", sorted(REGIONS_PER_KIND))
def test_unit_primitives_are_closed_outward_and_labelled(kind):
    prim = Primitive(kind, (1.0, 1.0, 1.0), IDENTITY, (0.0, 0.0, 0.0), (0,) * REGIONS_PER_KIND[kind], TUBE, 48)
    m = primitive_mesh(prim, 12)
    assert is_closed_and_consistent(m.faces)
    vol = signed_volume(m.vertices, m.faces)
    assert vol > 0, "faces must point outward"
    assert abs(vol - ANALYTIC[kind]) / ANALYTIC[kind] < 0.02
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1
    assert sorted(set(m.regions.tolist())) == list(range(REGIONS_PER_KIND[kind]))
    assert np.abs(m.vertices).max() <= 1 + 1e-9


def test_height_field_keeps_the_mesh_closed_and_moves_it():
    hf = HeightField(0.1, ((1.0, 0.5, 0.0), (0.0, 1.0, 2.0)), (0.3, 1.0), (0.5, 0.5))
    base = Primitive("box", (1.0, 0.5, 0.8), IDENTITY, (0.0, 0.0, 0.0), (0,) * 6, 0.0, 48)
    bumpy = Primitive("box", (1.0, 0.5, 0.8), IDENTITY, (0.0, 0.0, 0.0), (0,) * 6, 0.0, 48, hf)
    a, b = primitive_mesh(base, 12), primitive_mesh(bumpy, 12)
    assert is_closed_and_consistent(b.faces)
    offset = np.linalg.norm(b.vertices - a.vertices, axis=1)
    assert 0.01 < offset.max() <= 0.1 + 1e-9


def test_random_recipes_primitives_and_normalisation():
    cfg = RecipeConfig(height_field_prob=1.0)
    for shape_id in range(30):
        recipe = sample_recipe(cfg, 1, shape_id)
        for prim in recipe.primitives:
            m = primitive_mesh(prim, recipe.box_grid)
            assert is_closed_and_consistent(m.faces)
            assert np.all(np.isfinite(m.vertices))
        n, centre, scale = normalise_into_cube(m)
        lo, hi = n.vertices.min(0), n.vertices.max(0)
        assert np.all(lo >= -1) and np.all(hi <= 1) and abs(max(hi - lo) - 2) < 1e-5
        assert len(drop_degenerate_faces(n).faces) == len(n.faces)


def test_wireframe_polygons_drop_collapsed_corners():
    prim = Primitive("ellipsoid", (1.0, 1.0, 1.0), IDENTITY, (0.0, 0.0, 0.0), (0,), 0.0, 6)
    polys = quad_polygons(primitive_quads(prim, 1))
    sizes = sorted(set(len(p) for p in polys))
    assert sizes == [3, 4]  # triangles at the poles, quads elsewhere
    assert all(len(set(p)) == len(p) for p in polys)


@pytest.mark.parametrize("kind", sorted(REGIONS_PER_KIND))
def test_boolean_cutters_are_centred_on_the_target_surface(kind):
    """The cutter centre must lie on the unit primitive's boundary, or the cut may miss."""
    from zeroverse.scene.recipe import surface_point

    rng = np.random.default_rng(0)
    ring = 1 / (1 + TUBE)
    for _ in range(200):
        p = surface_point(kind, rng.normal(size=3), TUBE)
        rho, z = math.hypot(p[0], p[1]), p[2]
        residual = {
            "ellipsoid": np.linalg.norm(p) - 1,
            "box": np.abs(p).max() - 1,
            "cylinder": max(rho, abs(z)) - 1,
            "cone": min(abs(rho - (1 - z) / 2), abs(z + 1) + max(0.0, rho - 1)),
            "torus": math.hypot(rho - ring, z) - ring * TUBE,
        }[kind]
        assert abs(residual) < 1e-9, (kind, p)
