"""Shape shard rows -> textured meshes on disk (GLB, OBJ + MTL + PNG, PLY with vertex colours).

A shape row stores UVs per triangle corner and a texture id per material region; every region
has its own [0, 1]^2 UV square. Mesh formats want one material and per-vertex UVs, so export
packs the region textures into one per-shape atlas (a grid of tiles, each padded by
edge-extension so that bilinear filtering and the first mip levels do not bleed neighbouring
tiles in), moves every corner's UV into its region's tile, and splits vertices wherever the
corners that meet at a vertex disagree on UV (seams, region boundaries).

Example::

    >>> record = load_shape("/data/zv", shape_id=3)                           # doctest: +SKIP
    >>> export_shape(record, "shape3.glb", "glb", texture_bank_for_root("/data/zv"))  # doctest: +SKIP

Imports: numpy and the standard library at module level; PIL and trimesh where they are used.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from zeroverse.store.manifest import Manifest
from zeroverse.store.fs import Location, read_table
from zeroverse.store.shards import MANIFEST_NAME, shard_path

EXPORT_FORMATS = ("glb", "obj", "ply")
# Smooth normals across edges flatter than this; sharper edges (box edges, boolean rims) stay
# hard. 40 degrees keeps the 32-segment primitives smooth (11.25 degrees between facets).
DEFAULT_CREASE_DEG = 40.0


class TextureSource(Protocol):
    """Anything that maps a texture id to an image, e.g. zeroverse.scene.textures.TextureBank."""

    def get(self, texture_id: int) -> np.ndarray:  # uint8 [R, R, 3]
        ...


@dataclass(frozen=True)
class ShapeRecord:
    """One shape of a shape shard, as arrays.

    vertices [V, 3] float32 inside [-1, 1]^3; faces [F, 3] int32; uvs [F, 3, 2] float32 per
    triangle corner (v up, as in Blender); regions [F] int32 (index into region_textures);
    region_textures [R] int32 (texture id of each region); recipe: the ShapeRecipe as a dict.
    """

    shape_id: int
    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    regions: np.ndarray
    region_textures: np.ndarray
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ShapeRecord":
        """Builds a record from a shape-shard row (a dict as read by read_shape_rows), checking
        that the flat columns agree with each other."""
        shape_id = int(row["shape_id"])
        vertices = np.asarray(row["vertices"], dtype=np.float32)
        faces = np.asarray(row["faces"], dtype=np.int32)
        uvs = np.asarray(row["uvs"], dtype=np.float32)
        regions = np.asarray(row["face_regions"], dtype=np.int32)
        region_textures = np.asarray(row["region_textures"], dtype=np.int32)
        where = f"shape {shape_id}"
        if vertices.size % 3 or faces.size % 3:
            raise ValueError(f"{where}: vertices ({vertices.size}) and faces ({faces.size}) must be flat xyz / triangle lists")
        num_faces = faces.size // 3
        if uvs.size != 6 * num_faces or regions.size != num_faces:
            raise ValueError(
                f"{where}: {num_faces} faces need {6 * num_faces} uv floats and {num_faces} face_regions, "
                f"got {uvs.size} and {regions.size}; the shard is damaged or from another schema"
            )
        num_vertices = vertices.size // 3
        if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
            raise ValueError(f"{where}: face indices span {faces.min()}..{faces.max()} but there are {num_vertices} vertices")
        if regions.size and (regions.min() < 0 or regions.max() >= region_textures.size):
            raise ValueError(f"{where}: face regions span {regions.min()}..{regions.max()} but there are {region_textures.size} regions")
        recipe = row.get("recipe") or {}
        if isinstance(recipe, str):
            recipe = json.loads(recipe)
        seed = row.get("seed")
        return cls(
            shape_id=shape_id,
            vertices=vertices.reshape(-1, 3),
            faces=faces.reshape(-1, 3),
            uvs=uvs.reshape(-1, 3, 2),
            regions=regions,
            region_textures=region_textures,
            recipe=recipe,
            seed=None if seed is None else int(seed),
        )


# ---------------------------------------------------------------------------------------------
# Reading shapes and the texture bank of a root


def shapes_dir(root: str | Path) -> Path:
    """ROOT/shapes; `root` may also be the shapes directory itself."""
    root = Path(root)
    if (root / "manifest.json").is_file() and not (root / "shapes").is_dir():
        return root
    return root / "shapes"


def require_manifest(directory: Path, kind: str) -> Manifest:
    """The manifest of `directory` (`kind`: 'shapes' or 'views', for the message); ValueError
    naming the fix when there is none."""
    manifest = Manifest.load(directory)
    if manifest is None:
        raise ValueError(f"{directory} has no manifest.json: no {kind} there (check --root, or run `zeroverse generate` first)")
    return manifest


def describe_ids(ids: list[int]) -> str:
    """'0..15 (16 shapes)', or '16 shapes between 0 and 40' when the ids have gaps."""
    if not ids:
        return "none"
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 == len(ids):
        return f"{lo}..{hi} ({len(ids)} shapes)"
    return f"{len(ids)} shapes between {lo} and {hi}"


def load_shape(root: str | Path, shape_id: int) -> ShapeRecord:
    """The shape `shape_id` of the root's shape shards. ValueError names the available ids (and
    the failure reason when the shape failed to build)."""
    directory = shapes_dir(root)
    manifest = require_manifest(directory, "shapes")
    ids = manifest.shape_ids()
    if shape_id not in set(ids):
        failed = [f for f in manifest.failures if f.get("shape_id") == shape_id]
        why = f"; it failed to build: {failed[0].get('reason')}" if failed else ""
        raise ValueError(f"shape id {shape_id} is not in {directory}{why}. Available shape ids: {describe_ids(ids)}")
    for record in iter_shape_records(directory, shape_ids=[shape_id]):
        return record
    raise ValueError(f"shape id {shape_id} is listed in {directory}/manifest.json but missing from its shard file")


_RECORD_COLUMNS = ("shape_id", "seed", "recipe", "vertices", "faces", "uvs", "face_regions", "region_textures")


def shape_table_rows(table) -> list[dict[str, Any]]:
    """A shape table (pyarrow) -> row dicts whose list columns are numpy views of one flat array
    per column: rows as Python lists (to_pylist) cost ~30-75 ms per 10k-face shape."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            offsets = column.offsets.to_numpy()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            columns[name] = [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        else:
            columns[name] = column.to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def iter_shape_records(root: str | Path, shape_ids: list[int] | None = None) -> Iterator[ShapeRecord]:
    """Records of the shapes the manifest lists (optionally only `shape_ids`), in shard order."""
    import pyarrow.parquet as pq

    directory = shapes_dir(root)
    manifest = require_manifest(directory, "shapes")
    wanted = None if shape_ids is None else {int(i) for i in shape_ids}
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        if wanted is not None and not wanted.intersection(shard["shape_ids"]):
            continue
        table = pq.read_table(shard_path(directory, shard), columns=list(_RECORD_COLUMNS))
        for row in shape_table_rows(table):
            if wanted is None or row["shape_id"] in wanted:
                yield ShapeRecord.from_row(row)


def texture_bank_for_root(root: str | Path, cache_dir: str | Path | None = None) -> TextureSource:
    """The texture bank a root's shapes were generated against.

    Read from the shapes manifest's config (`textures`: TextureBank.describe()); a root that
    recorded none gets the default procedural bank, sized by the recipe's texture_bank_size. A
    folder bank needs the `cache_dir` that prepare_folder_bank wrote.
    """
    from zeroverse.scene.textures import BankDescription

    manifest = require_manifest(shapes_dir(root), "shapes")
    recipe_size = (manifest.config.get("recipe") or {}).get("texture_bank_size")
    description = BankDescription.from_json(manifest.config.get("textures"), default_size=recipe_size)
    if description.kind == "folder" and cache_dir is None:
        raise ValueError(
            f"{root} was made with the texture folder {description.folder!r}: pass the cache_dir "
            "that zeroverse.scene.textures.prepare_folder_bank wrote for it"
        )
    bank = description.open(cache_dir)
    used = bank.describe().get("presets_hash")
    if description.presets_hash and used != description.presets_hash:
        warnings.warn(
            f"{root} was generated with texture presets {description.presets_hash}, this bank uses "
            f"{used}: textures will differ from the rendered views",
            stacklevel=2,
        )
    return bank


# ---------------------------------------------------------------------------------------------
# Geometry helpers shared with the preview rasterizer


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted face normals [F, 3] float64 (length = twice the triangle's area)."""
    v = vertices.astype(np.float64)
    return np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])


def corner_normals(
    vertices: np.ndarray,
    faces: np.ndarray,
    crease_deg: float = DEFAULT_CREASE_DEG,
    face_subset: np.ndarray | None = None,
) -> np.ndarray:
    """Per-corner unit normals [F, 3, 3] with a crease angle (Blender's auto smooth): a corner
    averages the area-weighted normals of the faces around its vertex that lie within
    `crease_deg` of its own face, so curved patches shade smooth and hard edges stay hard.
    With `face_subset` [S] only those faces' corners are computed: [S, 3, 3].

    Vectorised over (corner, corner) pairs that share a vertex: sum(degree) pairs per queried
    corner, about 6 on these meshes (48 at cap centres).
    """
    fn = face_normals(vertices, faces)
    unit = fn / np.maximum(np.linalg.norm(fn, axis=1), 1e-20)[:, None]
    corner_vertex = faces.reshape(-1).astype(np.int64)
    if face_subset is None:
        query = np.arange(corner_vertex.size)
    else:
        query = (np.asarray(face_subset, dtype=np.int64)[:, None] * 3 + np.arange(3)).reshape(-1)
    if query.size == 0:
        return np.zeros((0, 3, 3))
    order = np.argsort(corner_vertex, kind="stable")  # corners grouped by vertex
    vertex_degree = np.bincount(corner_vertex, minlength=len(vertices))
    vertex_start = np.cumsum(vertex_degree) - vertex_degree
    qv = corner_vertex[query]
    degree = vertex_degree[qv]
    pair_start = np.cumsum(degree) - degree
    a = np.repeat(np.arange(query.size), degree)  # queried corner of each pair
    b = order[vertex_start[qv][a] + (np.arange(a.size) - pair_start[a])]  # a corner at the same vertex
    fa, fb = query[a] // 3, b // 3
    keep = np.einsum("ij,ij->i", unit[fa], unit[fb]) >= math.cos(math.radians(crease_deg))
    target, fb = a[keep], fb[keep]
    acc = np.stack([np.bincount(target, weights=fn[fb, k], minlength=query.size) for k in range(3)], axis=1)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    out = np.where(norm > 1e-20, acc / np.maximum(norm, 1e-20), unit[query // 3])
    return out.reshape(-1, 3, 3)


# ---------------------------------------------------------------------------------------------
# The per-shape texture atlas


@dataclass(frozen=True)
class TextureAtlas:
    """A grid of the shape's region textures in one image.

    image uint8 [H, W, 3] (row 0 at the top); tile_of_region [R] int (-1: region unused by any
    face); tile_origin [T, 2] int: pixel (x, y) of each tile's texture area (inside its padding);
    every tile's texture area is tile_size x tile_size pixels.
    """

    image: np.ndarray
    tile_of_region: np.ndarray
    tile_origin: np.ndarray
    tile_size: int
    padding: int

    def remap(self, uvs: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """Region UVs [..., 2] (v up, clamped to [0, 1] first) with their regions [...] ->
        atlas UVs [..., 2] (v up), centred on the same texels."""
        uv = np.clip(uvs.astype(np.float64), 0.0, 1.0)
        regions = np.asarray(regions)
        while regions.ndim < uv.ndim - 1:  # one region per face -> per corner
            regions = regions[..., None]
        tile = self.tile_of_region[np.broadcast_to(regions, uv.shape[:-1])]
        if np.any(tile < 0):
            raise ValueError("remap got a region that has no tile in this atlas")
        origin = self.tile_origin[tile].astype(np.float64)
        height, width = self.image.shape[:2]
        x = origin[..., 0] + uv[..., 0] * self.tile_size
        y = origin[..., 1] + (1.0 - uv[..., 1]) * self.tile_size  # image rows grow downwards
        return np.stack([x / width, 1.0 - y / height], axis=-1).astype(np.float32)


def build_atlas(
    region_textures: np.ndarray,
    bank: TextureSource,
    used_regions: np.ndarray | None = None,
    tile_size: int | None = None,
    padding: int | None = None,
) -> TextureAtlas:
    """Packs the textures of the used regions (one tile per distinct texture id) into a grid of
    ceil(sqrt(n)) columns. `tile_size` resizes the textures (default: the bank's resolution);
    `padding` is the edge-extension border of every tile (default tile_size // 32, at least 2:
    8 px at 256 px keeps bilinear filtering and three mip levels inside the tile)."""
    region_textures = np.asarray(region_textures, dtype=np.int64)
    if used_regions is None:
        used_regions = np.arange(region_textures.size)
    used = np.zeros(region_textures.size, dtype=bool)
    used[np.asarray(used_regions, dtype=np.int64)] = True
    texture_ids, inverse = np.unique(region_textures[used], return_inverse=True)
    if texture_ids.size == 0:
        raise ValueError("cannot build a texture atlas for a shape with no faces")
    images = [_texture_rgb(bank, int(t), tile_size) for t in texture_ids]
    size = images[0].shape[0]
    pad = max(2, size // 32) if padding is None else int(padding)
    cell = size + 2 * pad
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    atlas = np.zeros((rows * cell, columns * cell, 3), dtype=np.uint8)
    origins = np.zeros((len(images), 2), dtype=np.int64)
    for k, image in enumerate(images):
        top, left = (k // columns) * cell, (k % columns) * cell
        atlas[top : top + cell, left : left + cell] = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        origins[k] = (left + pad, top + pad)
    tile_of_region = np.full(region_textures.size, -1, dtype=np.int64)
    tile_of_region[used] = inverse
    return TextureAtlas(atlas, tile_of_region, origins, size, pad)


def _texture_rgb(bank: TextureSource, texture_id: int, size: int | None) -> np.ndarray:
    image = np.asarray(bank.get(texture_id))
    if image.ndim != 3 or image.shape[2] < 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"texture {texture_id} is {image.dtype} {image.shape}: expected uint8 [R, R, 3]")
    image = image[..., :3]
    if size is not None and image.shape[0] != size:
        from PIL import Image

        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX))
    return image


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples [N, 3] uint8 of `image` [H, W, 3] at uv [N, 2] (v up, texel centres at
    +0.5, clamped at the border)."""
    height, width = image.shape[:2]
    x = np.clip(uv[:, 0] * width - 0.5, 0, width - 1)
    y = np.clip((1.0 - uv[:, 1]) * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Export


@dataclass(frozen=True)
class ExportMesh:
    """A shape ready for a mesh file: vertices split so that each has one UV and one normal.

    vertices [N, 3] float32, faces [F, 3] int32, uv [N, 2] float32 (atlas, v up), normals
    [N, 3] float32, atlas: the texture every uv points into.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray
    atlas: TextureAtlas


@dataclass(frozen=True)
class ExportResult:
    files: list[Path]  # the main file first (.glb / .obj / .ply), then its companions
    num_vertices: int  # after splitting at UV seams
    num_faces: int
    atlas_size: tuple[int, int]  # (width, height) in pixels


def export_mesh(
    record: ShapeRecord,
    bank: TextureSource,
    tile_size: int | None = None,
    crease_deg: float = DEFAULT_CREASE_DEG,
) -> ExportMesh:
    """Builds the atlas, remaps the UVs into it and splits vertices per unique (vertex, uv, ...)
    so that every corner's UV is a vertex UV. Normals use a crease angle and are averaged over the
    corners a split vertex stands for."""
    if len(record.faces) == 0:
        raise ValueError(f"shape {record.shape_id} has no faces: nothing to export")
    atlas = build_atlas(record.region_textures, bank, used_regions=np.unique(record.regions), tile_size=tile_size)
    corner_uv = atlas.remap(record.uvs, record.regions).reshape(-1, 2)
    corner_uv = corner_uv + np.float32(0.0)  # -0.0 -> 0.0 so equal UVs have equal bits
    corner_vertex = record.faces.reshape(-1).astype(np.int64)
    key = np.empty((corner_vertex.size, 3), dtype=np.int64)
    key[:, 0] = corner_vertex
    key[:, 1:] = corner_uv.view(np.int32)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    normals = corner_normals(record.vertices, record.faces, crease_deg).reshape(-1, 3)
    acc = np.stack([np.bincount(inverse, weights=normals[:, k], minlength=first.size) for k in range(3)], axis=1)
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    return ExportMesh(
        vertices=record.vertices[corner_vertex[first]].astype(np.float32),
        faces=inverse.reshape(-1, 3).astype(np.int32),
        uv=corner_uv[first],
        normals=acc.astype(np.float32),
        atlas=atlas,
    )


def _metadata(record: ShapeRecord) -> dict[str, Any]:
    return {
        "zeroverse": {
            "shape_id": record.shape_id,
            "seed": record.seed,
            "recipe": record.recipe,
            "region_textures": record.region_textures.tolist(),
            "conventions": "right-handed, +Z up, shape inside [-1, 1]^3",
        }
    }


def check_format(fmt: str) -> str:
    name = str(fmt).lower().lstrip(".")
    if name not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    return name


def export_shape(
    record: ShapeRecord,
    path: str | Path,
    format: str | None = None,
    bank: TextureSource | None = None,
    tile_size: int | None = None,
) -> ExportResult:
    """Writes `record` as a textured mesh.

    format: "glb" (one file, atlas embedded as PNG, normals, recipe in the mesh extras), "obj"
    (path + .mtl + .png atlas beside it, named after path's stem), or "ply" (binary, per-vertex
    colours sampled bilinearly from the atlas; a PLY has no texture, so detail finer than the
    mesh is lost). None takes the format from path's suffix. bank: where texture ids come from
    (default: the default procedural bank). Returns the files written and the split mesh size.
    """
    path = Path(path)
    fmt = check_format(format if format is not None else (path.suffix or "<no suffix>"))
    if path.suffix == "":
        path = path.with_suffix(f".{fmt}")
    elif path.suffix.lower().lstrip(".") != fmt:
        raise ValueError(
            f"{path} has suffix {path.suffix!r} but the format is {fmt!r}: "
            f"use a .{fmt} path or --format {path.suffix.lstrip('.').lower()}"
        )
    if bank is None:
        from zeroverse.scene.textures import TextureBank, TextureBankConfig

        bank = TextureBank(TextureBankConfig())
    mesh = export_mesh(record, bank, tile_size=tile_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = {"glb": _write_glb, "obj": _write_obj, "ply": _write_ply}[fmt]
    files = writer(record, mesh, path)
    height, width = mesh.atlas.image.shape[:2]
    return ExportResult(files, len(mesh.vertices), len(mesh.faces), (width, height))


def _write_glb(record: ShapeRecord, mesh: ExportMesh, path: Path) -> list[Path]:
    import trimesh
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        name=f"shape_{record.shape_id}",
        baseColorTexture=Image.fromarray(mesh.atlas.image),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    tri = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_normals=mesh.normals,
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material),
        metadata=_metadata(record),
        process=False,  # processing would merge the split vertices back and lose the seams
        validate=False,
    )
    scene = trimesh.Scene()
    scene.add_geometry(tri, geom_name=f"shape_{record.shape_id}", node_name=f"shape_{record.shape_id}")
    path.write_bytes(trimesh.exchange.gltf.export_glb(scene, include_normals=True))
    return [path]


def _write_obj(record: ShapeRecord, mesh: ExportMesh, path: Path) -> list[Path]:
    from PIL import Image

    # Companions are named after the OBJ (not trimesh's fixed "material0") so that several
    # shapes can be exported into one folder.
    mtl_path, png_path = path.with_suffix(".mtl"), path.with_suffix(".png")
    Image.fromarray(mesh.atlas.image).save(png_path)
    mtl_path.write_text(
        f"# zeroverse shape {record.shape_id}\n"
        f"newmtl shape_{record.shape_id}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 1\nd 1\nillum 1\nmap_Kd {png_path.name}\n"
    )
    n = len(mesh.vertices)
    # Vertices were split per (vertex, uv), so position, uv and normal share one index.
    idx = mesh.faces.astype(np.int64).reshape(-1) + 1
    header = (
        f"# zeroverse shape {record.shape_id}, seed {record.seed}; right-handed, +Z up, inside [-1, 1]^3\n"
        f"# recipe: {json.dumps(record.recipe, sort_keys=True)}\n"
        f"mtllib {mtl_path.name}\no shape_{record.shape_id}\n"
    )
    body = [
        ("v %.6f %.6f %.6f\n" * n) % tuple(mesh.vertices.astype(np.float64).reshape(-1)),
        ("vt %.6f %.6f\n" * n) % tuple(mesh.uv.astype(np.float64).reshape(-1)),
        ("vn %.5f %.5f %.5f\n" * n) % tuple(mesh.normals.astype(np.float64).reshape(-1)),
        f"usemtl shape_{record.shape_id}\ns off\n",
        ("f %d/%d/%d %d/%d/%d %d/%d/%d\n" * len(mesh.faces)) % tuple(np.repeat(idx, 3)),
    ]
    with open(path, "w") as f:
        f.write(header)
        f.writelines(body)
    return [path, mtl_path, png_path]


def _write_ply(record: ShapeRecord, mesh: ExportMesh, path: Path) -> list[Path]:
    import trimesh

    colours = sample_bilinear(mesh.atlas.image, mesh.uv)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    tri = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_normals=mesh.normals,
        vertex_colors=rgba,
        process=False,
        validate=False,
    )
    path.write_bytes(trimesh.exchange.ply.export_ply(tri, encoding="binary", include_attributes=False))
    return [path]


def default_export_path(root: str | Path, shape_id: int, fmt: str) -> Path:
    """ROOT/exports/shape-<id>.<fmt>: where `zeroverse export` writes without --out."""
    return Path(root) / "exports" / f"shape-{shape_id:09d}.{check_format(fmt)}"


def export_from_root(
    root: str | Path,
    shape_id: int,
    format: str = "glb",
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """`zeroverse export SHAPE_ID --root DIR --format F [--out PATH]` in one call: loads the
    shape, the root's texture bank, and writes the file(s)."""
    fmt = check_format(format)
    record = load_shape(root, shape_id)
    bank = texture_bank_for_root(root, cache_dir=cache_dir)
    return export_shape(record, out if out is not None else default_export_path(root, shape_id, fmt), fmt, bank)


def read_shape_rows(directory: Location, shape_ids: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yields shape rows (as Python dicts) listed by the manifest, optionally only `shape_ids`."""
    manifest = Manifest.load(directory)
    if manifest is None:
        raise ValueError(f"{directory} has no {MANIFEST_NAME}; run `zeroverse generate --root {str(directory).rstrip('/').rsplit('/', 1)[0]}` first")
    wanted = None if shape_ids is None else set(shape_ids)
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        if wanted is not None and not wanted.intersection(shard["shape_ids"]):
            continue
        table = read_table(shard_path(directory, shard))
        for row in table.to_pylist():
            if wanted is None or row["shape_id"] in wanted:
                yield row
