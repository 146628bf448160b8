"""Closed, outward-oriented primitive meshes with UVs and texture regions (pure numpy).

Every primitive is a union of parametric patches P(s, t), (s, t) in [0, 1]^2, one patch per
texture region. Patches are tessellated into quads, then coincident vertices (seams, poles, the
rims between caps and sides) are welded so that each primitive is a watertight 2-manifold:
Blender's Manifold boolean solver refuses anything else. Orientation is fixed by construction
(dP/ds x dP/dt points outward on every patch) and checked by tests.

Imports: numpy and the standard library only (this module runs inside Blender's Python).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zeroverse.scene.recipe import HeightField, Primitive, quaternion_matrix

TWO_PI = 2.0 * math.pi


@dataclass
class MeshArrays:
    """A triangle mesh. vertices [V, 3] float32, faces [F, 3] int32, uvs [F, 3, 2] float32 (per
    corner), regions [F] int32 (texture region of each face)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    regions: np.ndarray


@dataclass
class QuadMesh:
    """Welded quads; at poles and cap centres two corners of a quad may share a vertex."""

    vertices: np.ndarray  # [V, 3] float64
    quads: np.ndarray  # [Q, 4] int64
    uvs: np.ndarray  # [Q, 4, 2] float64
    regions: np.ndarray  # [Q] int64


def _grid(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.meshgrid(np.linspace(0.0, 1.0, nu + 1), np.linspace(0.0, 1.0, nv + 1), indexing="ij")
    return s, t


def _patch_quads(points: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points [nu+1, nv+1, 3], uv [nu+1, nv+1, 2] -> vertices, quads (a, b, c, d) with
    a=(i,j), b=(i+1,j), c=(i+1,j+1), d=(i,j+1), so the normal follows dP/ds x dP/dt."""
    nu1, nv1 = points.shape[:2]
    idx = np.arange(nu1 * nv1).reshape(nu1, nv1)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], axis=-1).reshape(-1, 4)
    flat_uv = uv.reshape(-1, 2)
    return points.reshape(-1, 3), quads, flat_uv[quads]


def _rotation_to(normal: str) -> np.ndarray:
    """Proper rotations carrying the +z box face onto each face (orientation preserved)."""
    return {
        "+z": np.eye(3),
        "-z": np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=float),
        "+x": np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float),
        "-x": np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=float),
        "+y": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float),
        "-y": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float),
    }[normal]


def _unit_patches(kind: str, segments: int, box_grid: int, tube_ratio: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(points, uv) grids of the unit primitive, one per texture region, in region order."""
    n = max(3, int(segments))
    rings = max(2, n // 2)
    cap_rings = max(1, n // 8)
    patches = []
    if kind == "ellipsoid":
        s, t = _grid(n, rings)
        phi, theta = TWO_PI * s, math.pi * (1.0 - t)  # t = 0 at the south pole keeps normals outward
        pts = np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], -1)
        patches.append((pts, np.stack([s, t], -1)))
    elif kind == "box":
        g = max(1, int(box_grid))
        s, t = _grid(g, g)
        face = np.stack([2 * s - 1, 2 * t - 1, np.ones_like(s)], -1)
        for name in ("+x", "-x", "+y", "-y", "+z", "-z"):
            patches.append((face @ _rotation_to(name).T, np.stack([s, t], -1)))
    elif kind in ("cylinder", "cone"):
        s, t = _grid(n, rings)
        phi, z = TWO_PI * s, 2 * t - 1
        radius = np.ones_like(z) if kind == "cylinder" else (1 - z) / 2
        side = np.stack([radius * np.cos(phi), radius * np.sin(phi), z], -1)
        patches.append((side, np.stack([s, t], -1)))
        s, t = _grid(n, cap_rings)
        phi = TWO_PI * s
        if kind == "cylinder":  # top cap: radius shrinks with t so the normal points up
            top = np.stack([(1 - t) * np.cos(phi), (1 - t) * np.sin(phi), np.ones_like(t)], -1)
            patches.append((top, 0.5 + 0.5 * top[..., :2]))
        bottom = np.stack([t * np.cos(phi), t * np.sin(phi), -np.ones_like(t)], -1)
        patches.append((bottom, 0.5 + 0.5 * bottom[..., :2]))
    elif kind == "torus":
        s, t = _grid(n, rings)
        ring = 1.0 / (1.0 + tube_ratio)  # spans [-1, 1] in x and y before scaling
        tube = ring * tube_ratio
        phi, psi = TWO_PI * s, TWO_PI * t
        r = ring + tube * np.cos(psi)
        pts = np.stack([r * np.cos(phi), r * np.sin(phi), tube * np.sin(psi)], -1)
        patches.append((pts, np.stack([s, t], -1)))
    else:
        raise ValueError(f"unknown primitive kind {kind!r}")
    return patches


def _weld(vertices: np.ndarray, quads: np.ndarray, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Merges coincident vertices; returns (unique vertices, re-indexed quads)."""
    keys = np.round(vertices, decimals)
    keys[keys == 0] = 0.0  # -0.0 and 0.0 must weld
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return vertices[first], inverse.reshape(-1)[quads]


def unit_quad_mesh(kind: str, segments: int, box_grid: int, tube_ratio: float = 0.0) -> QuadMesh:
    """The welded quad mesh of the unit primitive (fits in [-1, 1]^3), regions 0..R-1."""
    verts, quads, uvs, regions = [], [], [], []
    offset = 0
    for region, (pts, uv) in enumerate(_unit_patches(kind, segments, box_grid, tube_ratio)):
        v, q, u = _patch_quads(pts, uv)
        verts.append(v)
        quads.append(q + offset)
        uvs.append(u)
        regions.append(np.full(len(q), region))
        offset += len(v)
    vertices, quad_idx = _weld(np.concatenate(verts), np.concatenate(quads))
    return QuadMesh(vertices, quad_idx, np.concatenate(uvs), np.concatenate(regions))


def quad_polygons(mesh: QuadMesh) -> list[tuple[int, ...]]:
    """Quads as polygons for Blender, with the corners that welding collapsed removed (poles and
    cap centres become triangles; anything with fewer than 3 distinct corners is dropped)."""
    polygons = []
    for q in mesh.quads.tolist():
        poly = [v for k, v in enumerate(q) if v != q[k - 1]]
        if len(set(poly)) >= 3:
            polygons.append(tuple(poly))
    return polygons


def quads_to_triangles(mesh: QuadMesh) -> MeshArrays:
    """Splits each quad along (a, c); drops the second triangle of collapsed quads."""
    q = mesh.quads
    tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    uv = np.concatenate([mesh.uvs[:, [0, 1, 2]], mesh.uvs[:, [0, 2, 3]]])
    reg = np.concatenate([mesh.regions, mesh.regions])
    ok = (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 2] != tri[:, 0])
    return MeshArrays(mesh.vertices, tri[ok], uv[ok], reg[ok])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [V, 3] of a triangle mesh."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    face_n = np.cross(b - a, c - a)
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def height_field_values(field: HeightField, points: np.ndarray) -> np.ndarray:
    """d(x) in [-amplitude, amplitude] at points [N, 3] of the unit primitive."""
    freqs = np.asarray(field.frequencies)  # [K, 3]
    phase = TWO_PI * points @ freqs.T + np.asarray(field.phases)  # [N, K]
    return field.amplitude * (np.sin(phase) @ np.asarray(field.weights))


def _place(prim: Primitive, vertices_local: np.ndarray) -> np.ndarray:
    return vertices_local @ quaternion_matrix(prim.rotation).T + np.asarray(prim.translation)


def primitive_quads(prim: Primitive, box_grid: int) -> QuadMesh:
    """The primitive in world units (scaled, height field applied, rotated, translated)."""
    unit = unit_quad_mesh(prim.kind, prim.segments, box_grid, prim.tube_ratio)
    local = unit.vertices * np.asarray(prim.semi_axes)
    if prim.height_field is not None:
        tri = quads_to_triangles(QuadMesh(local, unit.quads, unit.uvs, unit.regions))
        normals = vertex_normals(local, tri.faces)
        local = local + normals * height_field_values(prim.height_field, unit.vertices)[:, None]
    return QuadMesh(_place(prim, local), unit.quads, unit.uvs, unit.regions)


def primitive_mesh(prim: Primitive, box_grid: int) -> MeshArrays:
    return quads_to_triangles(primitive_quads(prim, box_grid))


def concatenate(meshes: list[MeshArrays], region_offsets: list[int]) -> MeshArrays:
    """Joins meshes, shifting vertex indices and region ids (region_offsets[i] for mesh i)."""
    verts, faces, uvs, regions = [], [], [], []
    v_off = 0
    for m, r_off in zip(meshes, region_offsets):
        verts.append(m.vertices)
        faces.append(m.faces + v_off)
        uvs.append(m.uvs)
        regions.append(m.regions + r_off)
        v_off += len(m.vertices)
    return MeshArrays(
        np.concatenate(verts).astype(np.float32),
        np.concatenate(faces).astype(np.int32),
        np.concatenate(uvs).astype(np.float32),
        np.concatenate(regions).astype(np.int32),
    )


def normalise_into_cube(mesh: MeshArrays) -> tuple[MeshArrays, np.ndarray, float]:
    """Centres the bounding box at the origin and scales its largest half-side to 1.
    Returns (mesh, original centre [3], scale applied)."""
    v = mesh.vertices.astype(np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    centre = (lo + hi) / 2
    half = float(np.max(hi - lo) / 2)
    if not np.isfinite(half) or half <= 0:
        raise ValueError("cannot normalise an empty or degenerate mesh")
    scaled = np.clip((v - centre) / half, -1.0, 1.0)
    return MeshArrays(scaled.astype(np.float32), mesh.faces, mesh.uvs, mesh.regions), centre, 1.0 / half


def drop_degenerate_faces(mesh: MeshArrays, min_area: float = 1e-10) -> MeshArrays:
    """Removes zero-area triangles (boolean cuts can leave slivers) and unused vertices."""
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    area2 = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    keep = (area2 > 2 * min_area) & (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[keep]
    used, remap = np.unique(f, return_inverse=True)
    return MeshArrays(
        mesh.vertices[used], remap.reshape(-1, 3).astype(np.int32), mesh.uvs[keep], mesh.regions[keep]
    )
