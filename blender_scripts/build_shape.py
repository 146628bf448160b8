"""ShapeRecipe -> Shape mesh, assembled in headless Blender (bpy, numpy, stdlib, pure zeroverse).

Primitives and height fields are built in numpy (zeroverse.scene.primitives: exact UVs and regions,
watertight by construction, ~1.5 ms each). Blender does what numpy cannot do well: the boolean
difference (Manifold solver: robust and fast on closed meshes) and the wireframe struts
(Wireframe modifier); their results come back through Blender's evaluated mesh, with UVs and
the region attribute carried along. Plain primitives skip the round trip: it would copy the
same arrays in and out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from blender_scripts.blender_mesh import evaluated_triangles, new_polygon_object, new_triangle_object, reset_scene
from zeroverse.scene.primitives import (
    MeshArrays,
    concatenate,
    drop_degenerate_faces,
    normalise_into_cube,
    primitive_mesh,
    primitive_quads,
    quad_polygons,
)
from zeroverse.scene.recipe import REGIONS_PER_KIND, ShapeRecipe


@dataclass
class BuiltShape:
    mesh: MeshArrays  # inside [-1, 1]^3
    region_textures: np.ndarray  # [R] int32: texture id of each region
    stats: dict = field(default_factory=dict)


def build_shape(recipe: ShapeRecipe) -> BuiltShape:
    """Builds the mesh of `recipe` (no randomness: the recipe fixes everything)."""
    import bpy  # noqa: F401  (documents the dependency; the helpers use it)

    t0 = time.perf_counter()
    reset_scene()
    region_textures: list[int] = []
    pieces: list[MeshArrays] = []
    offsets: list[int] = []
    stats: dict = {"boolean_removed_volume": 0.0}

    for index, prim in enumerate(recipe.primitives):
        mesh = primitive_mesh(prim, recipe.box_grid)
        offset = len(region_textures)
        region_textures.extend(prim.textures)
        if recipe.boolean is not None and recipe.boolean.target == index:
            cutter = recipe.boolean.cutter
            cutter_offset = len(region_textures)
            region_textures.extend(cutter.textures)
            mesh, removed = _boolean_difference(mesh, primitive_mesh(cutter, recipe.box_grid), cutter_offset - offset)
            stats["boolean_removed_volume"] = removed
        pieces.append(mesh)
        offsets.append(offset)

    if recipe.wireframe is not None:
        wire = recipe.wireframe
        offsets.append(len(region_textures))
        region_textures.extend(wire.primitive.textures)
        pieces.append(_wireframe(wire.primitive, wire.thickness, max(1, wire.primitive.segments // 4)))

    joined = concatenate(pieces, offsets)
    normalised, _, scale = normalise_into_cube(joined)
    cleaned = drop_degenerate_faces(normalised)
    # Boolean cuts interpolate UVs along new edges and can overshoot [0, 1] by float rounding.
    np.clip(cleaned.uvs, 0.0, 1.0, out=cleaned.uvs)
    if len(cleaned.faces) == 0:
        raise RuntimeError(f"shape {recipe.shape_id}: the build produced no faces")
    if np.any(cleaned.regions < 0) or np.any(cleaned.regions >= len(region_textures)):
        raise RuntimeError(f"shape {recipe.shape_id}: Blender lost the region attribute of some faces")
    stats.update(
        num_vertices=int(len(cleaned.vertices)),
        num_faces=int(len(cleaned.faces)),
        normalisation_scale=float(scale),
        build_seconds=time.perf_counter() - t0,
    )
    return BuiltShape(cleaned, np.asarray(region_textures, dtype=np.int32), stats)


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices.astype(np.float64)
    return float(np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum() / 6.0)


def _boolean_difference(target: MeshArrays, cutter: MeshArrays, cutter_region_offset: int) -> tuple[MeshArrays, float]:
    """target minus cutter with Blender's Manifold solver. The new faces that the cutter leaves on
    the target keep the cutter's UVs and get the cutter's regions (shifted by the offset), so the
    cavity draws its own textures. Returns the result and the volume it removed."""
    import bpy

    a = new_triangle_object("zv_target", target.vertices, target.faces, target.uvs, target.regions)
    b = new_triangle_object("zv_cutter", cutter.vertices, cutter.faces, cutter.uvs, cutter.regions + cutter_region_offset)
    b.hide_render = True
    modifier = a.modifiers.new("zv_boolean", "BOOLEAN")
    modifier.operation = "DIFFERENCE"
    modifier.solver = "MANIFOLD"
    modifier.object = b
    vertices, faces, uvs, regions = evaluated_triangles(a)
    bpy.data.objects.remove(b, do_unlink=True)
    bpy.data.objects.remove(a, do_unlink=True)
    removed = _signed_volume(target.vertices, target.faces) - _signed_volume(vertices, faces)
    return MeshArrays(vertices, faces, uvs, regions), removed


def _wireframe(prim, thickness: float, box_grid: int) -> MeshArrays:
    """The primitive's coarse quad edges as struts of the given thickness."""
    import bpy

    quads = primitive_quads(prim, box_grid)
    polygons = quad_polygons(quads)
    # Each polygon's UVs, in the same corner order as quad_polygons keeps.
    uv_rows, regions = [], []
    for q, uv, region in zip(quads.quads.tolist(), quads.uvs, quads.regions):
        keep = [k for k in range(4) if q[k] != q[k - 1]]
        if len(set(q[k] for k in keep)) >= 3:
            uv_rows.append(uv[keep])
            regions.append(region)
    obj = new_polygon_object("zv_wire", quads.vertices, polygons, uv_rows, np.asarray(regions, np.int32))
    modifier = obj.modifiers.new("zv_wireframe", "WIREFRAME")
    modifier.thickness = thickness
    modifier.use_even_offset = True
    modifier.use_relative_offset = False
    modifier.use_replace = True
    modifier.use_boundary = True
    vertices, faces, uvs, regions_out = evaluated_triangles(obj)
    bpy.data.objects.remove(obj, do_unlink=True)
    return MeshArrays(vertices, faces, uvs, regions_out)


def region_count(recipe: ShapeRecipe) -> int:
    """Number of texture regions the built shape will have."""
    n = sum(REGIONS_PER_KIND[p.kind] for p in recipe.primitives)
    if recipe.boolean is not None:
        n += REGIONS_PER_KIND[recipe.boolean.cutter.kind]
    if recipe.wireframe is not None:
        n += REGIONS_PER_KIND[recipe.wireframe.primitive.kind]
    return n
