"""Shape export: records from shard rows, the texture atlas, GLB / OBJ / PLY round trips, errors.

Most tests build meshes with zeroverse.scene.primitives (numpy only) and a tiny gradient texture bank;
the tests marked ray + blender export shapes of one real generated root (made once per module).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from zeroverse.scene.primitives import concatenate, quads_to_triangles, unit_quad_mesh
from zeroverse.store.shape_io import (
    EXPORT_FORMATS,
    ShapeRecord,
    build_atlas,
    corner_normals,
    export_shape,
    load_shape,
    sample_bilinear,
    texture_bank_for_root,
)

TEX = 32  # texture resolution of the gradient bank


class GradientBank:
    """Texture t: red grows left to right, green grows top to bottom, blue = 8 * t: every texel
    and every texture is distinguishable, so UV orientation and tile mapping can be checked."""

    def get(self, texture_id: int) -> np.ndarray:
        ramp = (np.arange(TEX) * 255 // (TEX - 1)).astype(np.uint8)
        image = np.zeros((TEX, TEX, 3), np.uint8)
        image[..., 0] = ramp[None, :]
        image[..., 1] = ramp[:, None]
        image[..., 2] = (8 * texture_id) % 256
        return image


def nearest(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of image [H, W, 3] at uv [N, 2] (v up)."""
    h, w = image.shape[:2]
    col = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return image[row, col].astype(int)


def box_and_ball(shape_id: int = 7) -> ShapeRecord:
    """A box (6 regions) beside a sphere (1 region), 7 distinct textures, as a shard row."""
    box = quads_to_triangles(unit_quad_mesh("box", 16, 3))
    ball = quads_to_triangles(unit_quad_mesh("ellipsoid", 24, 1))
    box.vertices = box.vertices * 0.45 + np.array([-0.5, 0, 0])
    ball.vertices = ball.vertices * 0.45 + np.array([0.5, 0, 0])
    mesh = concatenate([box, ball], [0, 6])
    row = {
        "shape_id": shape_id,
        "seed": 3,
        "recipe": json.dumps({"shape_id": shape_id, "note": "test"}),
        "vertices": mesh.vertices.reshape(-1).tolist(),
        "faces": mesh.faces.reshape(-1).tolist(),
        "uvs": mesh.uvs.reshape(-1).tolist(),
        "face_regions": mesh.regions.tolist(),
        "region_textures": [10, 11, 12, 13, 14, 15, 20],
    }
    return ShapeRecord.from_row(row)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROVERSE_CACHE", str(tmp_path / "cache"))


# --- records ---------------------------------------------------------------------------------


def test_record_from_row_shapes_and_recipe():
    rec = box_and_ball()
    assert rec.vertices.shape[1] == 3 and rec.faces.shape[1] == 3
    assert rec.uvs.shape == (len(rec.faces), 3, 2) and rec.regions.shape == (len(rec.faces),)
    assert rec.recipe == {"shape_id": 7, "note": "test"} and rec.seed == 3


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("uvs", [0.0] * 6, "uv floats"),
        ("faces", [0, 1, 99999], "face indices"),
        ("face_regions", None, "face regions span"),
    ],
)
def test_record_rejects_inconsistent_rows(field, value, message):
    rec = box_and_ball()
    row = {
        "shape_id": 1,
        "vertices": rec.vertices.reshape(-1),
        "faces": rec.faces.reshape(-1),
        "uvs": rec.uvs.reshape(-1),
        "face_regions": rec.regions,
        "region_textures": rec.region_textures,
    }
    if field == "face_regions":
        value = np.full(len(rec.faces), 50)
    if field == "faces":
        row["uvs"], row["face_regions"] = [0.0] * 6, [0]
    row[field] = value
    with pytest.raises(ValueError, match=message):
        ShapeRecord.from_row(row)


# --- atlas -----------------------------------------------------------------------------------


def test_atlas_tiles_are_edge_padded_and_uvs_land_on_the_same_texels():
    bank = GradientBank()
    region_textures = np.array([5, 6, 5, 9, 2])  # region 2 reuses texture 5: one tile for both
    atlas = build_atlas(region_textures, bank, padding=3)
    assert atlas.tile_of_region[0] == atlas.tile_of_region[2]
    assert len(atlas.tile_origin) == 4 and atlas.image.shape == (2 * (TEX + 6), 2 * (TEX + 6), 3)
    for region, texture_id in enumerate(region_textures):
        x, y = atlas.tile_origin[atlas.tile_of_region[region]]
        tile = atlas.image[y - 3 : y + TEX + 3, x - 3 : x + TEX + 3]
        texture = bank.get(int(texture_id))
        assert np.array_equal(tile[3:-3, 3:-3], texture)
        assert np.array_equal(tile[:3, 3:-3], np.broadcast_to(texture[:1], (3, TEX, 3)))  # edge extension
        assert np.array_equal(tile[3:-3, -3:], np.broadcast_to(texture[:, -1:], (TEX, 3, 3)))
    rng = np.random.default_rng(0)
    uv = rng.uniform(-0.05, 1.05, size=(500, 2))  # outside [0, 1] must clamp
    regions = rng.integers(0, len(region_textures), 500)
    mapped = atlas.remap(uv, regions)
    for region in range(len(region_textures)):
        sel = regions == region
        want = nearest(bank.get(int(region_textures[region])), np.clip(uv[sel], 0, 1 - 1e-7))
        assert np.array_equal(nearest(atlas.image, mapped[sel]), want)
    # Bilinear filtering at a tile's very corner reads only that tile's texels.
    corners = atlas.remap(np.array([[0, 0], [1, 1], [0, 1], [1, 0]], float), np.full(4, 3))
    tex = bank.get(9).astype(int)
    got = sample_bilinear(atlas.image, corners).astype(int)
    assert np.abs(got - tex[[-1, 0, 0, -1], [0, -1, 0, -1]]).max() <= 1


def test_corner_normals_are_hard_on_box_edges_and_smooth_on_spheres():
    box = quads_to_triangles(unit_quad_mesh("box", 16, 2))
    normals = corner_normals(box.vertices, box.faces)
    # Every box corner normal is an axis (the 90 degree edges stay hard).
    assert np.allclose(np.abs(normals).max(axis=2), 1.0, atol=1e-6)
    ball = quads_to_triangles(unit_quad_mesh("ellipsoid", 32, 1))
    normals = corner_normals(ball.vertices, ball.faces)
    radial = ball.vertices[ball.faces] / np.linalg.norm(ball.vertices[ball.faces], axis=2, keepdims=True)
    assert np.einsum("fck,fck->fc", normals, radial).min() > 0.99  # smooth, outward


# --- export round trips ----------------------------------------------------------------------


def _check_corner_colours(rec: ShapeRecord, image: np.ndarray, corner_uv: np.ndarray, bank) -> None:
    """The loaded texture at each loaded corner UV shows what the region texture shows at the
    original UV (up to one texel of the gradient)."""
    uv = corner_uv.reshape(-1, 2)
    want = np.concatenate([nearest(bank.get(int(rec.region_textures[r])), np.clip(u, 0, 1 - 1e-7)) for r, u in zip(rec.regions, rec.uvs)])
    got = nearest(image, np.clip(uv, 0, 1 - 1e-7))
    step = 255 // (TEX - 1) + 1
    assert np.abs(got[:, :2] - want[:, :2]).max() <= step  # red/green: the texel position
    assert np.array_equal(got[:, 2], want[:, 2])  # blue: the right texture


def test_glb_round_trip(tmp_path):
    import trimesh

    rec, bank = box_and_ball(), GradientBank()
    result = export_shape(rec, tmp_path / "shape.glb", "glb", bank)
    assert result.files == [tmp_path / "shape.glb"] and result.num_faces == len(rec.faces)
    assert result.num_vertices > len(rec.vertices)  # split at seams and region boundaries
    mesh = trimesh.load(tmp_path / "shape.glb", force="mesh", process=False)
    assert len(mesh.faces) == len(rec.faces)
    uv = np.asarray(mesh.visual.uv)
    assert uv.min() >= 0 and uv.max() <= 1
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape[:2] == (result.atlas_size[1], result.atlas_size[0])
    _check_corner_colours(rec, image, uv[mesh.faces], bank)
    # Same geometry: every corner sits where the record's corner does.
    assert np.allclose(mesh.vertices[mesh.faces], rec.vertices[rec.faces], atol=1e-6)
    assert mesh.metadata.get("zeroverse", {}).get("shape_id") == 7


def test_obj_and_ply_round_trip(tmp_path):
    import trimesh

    rec, bank = box_and_ball(), GradientBank()
    result = export_shape(rec, tmp_path / "out" / "s7.obj", "obj", bank)
    assert [p.name for p in result.files] == ["s7.obj", "s7.mtl", "s7.png"]
    assert all(p.is_file() for p in result.files)
    assert "map_Kd s7.png" in (tmp_path / "out" / "s7.mtl").read_text()
    mesh = trimesh.load(tmp_path / "out" / "s7.obj", force="mesh", process=False, maintain_order=True)
    assert len(mesh.faces) == len(rec.faces)
    image = np.asarray(mesh.visual.material.image.convert("RGB"))
    _check_corner_colours(rec, image, np.asarray(mesh.visual.uv)[mesh.faces], bank)

    result = export_shape(rec, tmp_path / "s7", "ply", bank)  # suffix added from the format
    assert result.files == [tmp_path / "s7.ply"]
    mesh = trimesh.load(tmp_path / "s7.ply", process=False)
    assert len(mesh.faces) == len(rec.faces)
    colours = np.asarray(mesh.visual.vertex_colors)
    assert colours.shape == (result.num_vertices, 4) and len(np.unique(colours[:, 2])) == 7  # 7 textures


def test_export_errors(tmp_path):
    rec, bank = box_and_ball(), GradientBank()
    with pytest.raises(ValueError, match=r"'fbx'.*glb, obj, ply"):
        export_shape(rec, tmp_path / "a.fbx", "fbx", bank)
    with pytest.raises(ValueError, match=r"glb, obj, ply"):
        export_shape(rec, tmp_path / "a.fbx", None, bank)
    with pytest.raises(ValueError, match=r"suffix '.obj'.*'glb'"):
        export_shape(rec, tmp_path / "a.obj", "glb", bank)
    with pytest.raises(ValueError, match="no manifest"):
        load_shape(tmp_path / "nowhere", 0)


# --- a real generated root ---------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.blender
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_real_shape_exports_and_loads(four_shapes_root, tmp_path, fmt):
    import trimesh

    rec = load_shape(four_shapes_root, 1)
    bank = texture_bank_for_root(four_shapes_root, cache_dir=tmp_path / "cache")
    result = export_shape(rec, tmp_path / f"shape1.{fmt}", fmt, bank)
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files)
    mesh = trimesh.load(result.files[0], force="mesh", process=False)
    assert len(mesh.faces) == len(rec.faces)
    if fmt == "ply":
        assert np.asarray(mesh.visual.vertex_colors).shape == (len(mesh.vertices), 4)
    else:
        uv = np.asarray(mesh.visual.uv)
        assert uv.min() >= 0 and uv.max() <= 1
        material = mesh.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        assert image is not None and min(image.size) >= 256


@pytest.mark.ray
@pytest.mark.blender
def test_unknown_shape_id_names_the_available_range(four_shapes_root):
    with pytest.raises(ValueError, match=r"shape id 99 .*0\.\.3 \(4 shapes\)"):
        load_shape(four_shapes_root, 99)
    assert load_shape(four_shapes_root, 3).shape_id == 3


def test_texture_bank_for_root_follows_the_recorded_bank(tmp_path):
    import warnings

    from zeroverse.store.manifest import Manifest
    from zeroverse.scene.textures import TextureBank, TextureBankConfig

    recorded = TextureBank(TextureBankConfig(seed=5, size=300, resolution=32), cache_dir=tmp_path / "c").describe()
    for name in ("a", "b"):
        (tmp_path / name / "shapes").mkdir(parents=True)
    Manifest("shapes", 0, {"textures": recorded}, "x", [], []).save(tmp_path / "a" / "shapes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same presets: no warning
        bank = texture_bank_for_root(tmp_path / "a", cache_dir=tmp_path / "c")
    assert (bank.config.seed, len(bank), bank.config.resolution) == (5, 300, 32)
    assert bank.get(7).tobytes() == TextureBank(TextureBankConfig(seed=5, resolution=32), cache_dir=tmp_path / "d").get(7).tobytes()
    # A root that recorded no bank: the default bank, sized by the recipe.
    Manifest("shapes", 0, {"recipe": {"texture_bank_size": 64}}, "x", [], []).save(tmp_path / "b" / "shapes")
    bank = texture_bank_for_root(tmp_path / "b", cache_dir=tmp_path / "c")
    assert (bank.config.seed, len(bank)) == (0, 64)
    with pytest.raises(ValueError, match="shape id 0 is not in .*Available shape ids: none"):
        load_shape(tmp_path / "b", 0)
