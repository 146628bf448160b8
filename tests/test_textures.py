"""Texture bank: determinism, variety, tiling, caches, folder banks and the no-PIL guarantee."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from zeroverse.scene.files import TEMPORARY_PREFIX
from zeroverse.scene.textures import generators as G
from zeroverse.scene.textures import presets as P
from zeroverse.scene.textures import (
    DEFAULT_BANK_SIZE,
    BankDescription,
    KINDS,
    PROCEDURAL_LICENCE,
    UNKNOWN_LICENCE,
    TextureBank,
    TextureBankConfig,
    contact_sheet,
    generate_texture,
    load_presets,
    prepare_folder_bank,
    texture_kind,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "textures" / "sample"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # No test may write into the user's real ~/.cache.
    monkeypatch.setenv("ZEROVERSE_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def small_bank() -> list[np.ndarray]:
    """The whole default bank at 32 px (about a second)."""
    return [generate_texture(0, i, 32) for i in range(DEFAULT_BANK_SIZE)]


def _sha(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


# --- determinism and variety -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_seed_and_id_give_same_bytes(seed):
    for texture_id in range(0, 200, 7):
        a = generate_texture(seed, texture_id, 48)
        b = generate_texture(seed, texture_id, 48)
        assert a.tobytes() == b.tobytes()


def test_bank_regenerates_identical_bytes_after_cache_is_cleared(tmp_path):
    config = TextureBankConfig(seed=3, size=64, resolution=40)
    first = [TextureBank(config, cache_dir=tmp_path).get(i).copy() for i in range(0, 64, 5)]
    for path in tmp_path.rglob("*.npy"):
        path.unlink()
    fresh = TextureBank(config, cache_dir=tmp_path)
    assert all(np.array_equal(a, fresh.get(i)) for a, i in zip(first, range(0, 64, 5)))
    assert all(
        np.array_equal(a, generate_texture(3, i, 40)) for a, i in zip(first, range(0, 64, 5))
    )


def test_default_bank_has_over_1000_distinct_textures(small_bank):
    assert len({_sha(image) for image in small_bank}) >= 1000


def test_seeds_give_different_banks():
    assert _sha(generate_texture(0, 5, 32)) != _sha(generate_texture(1, 5, 32))


def test_every_kind_has_a_generator_and_a_weight():
    assert tuple(G.GENERATORS) == KINDS == tuple(load_presets()["weights"])


def test_every_kind_appears_in_the_default_bank():
    counts = Counter(texture_kind(0, i) for i in range(DEFAULT_BANK_SIZE))
    assert set(counts) == set(KINDS)
    assert min(counts.values()) >= 20, counts


def test_texture_kind_names_the_generator_actually_used():
    # The kind is one draw whatever the weights, so forcing a texture's own kind (weight 1, the
    # rest 0) must leave its bytes unchanged, while forcing another kind must change them.
    for texture_id in range(0, 60, 3):
        kind = texture_kind(0, texture_id)
        only = {"weights": {k: float(k == kind) for k in KINDS}}
        assert texture_kind(0, texture_id, only) == kind
        assert np.array_equal(
            generate_texture(0, texture_id, 32, only), generate_texture(0, texture_id, 32)
        )
        other = KINDS[(KINDS.index(kind) + 1) % len(KINDS)]
        forced = {"weights": {k: float(k == other) for k in KINDS}}
        assert not np.array_equal(
            generate_texture(0, texture_id, 32, forced), generate_texture(0, texture_id, 32)
        )


@pytest.mark.parametrize("resolution", [8, 37, 64, 256])
def test_dtype_shape_and_range(resolution):
    for texture_id in range(12):
        image = generate_texture(0, texture_id, resolution)
        assert image.dtype == np.uint8 and image.shape == (resolution, resolution, 3)
        assert image.flags.c_contiguous


def test_textures_use_a_useful_tonal_range(small_bank):
    spreads = np.array([int(image.max()) - int(image.min()) for image in small_bank])
    means = np.array([image.mean() for image in small_bank])
    assert np.median(spreads) > 60
    assert (spreads > 10).mean() > 0.98  # flat colour squares teach a reconstructor nothing
    assert 50 < means.mean() < 200


def test_same_pattern_at_any_resolution():
    # No draw depends on the resolution: a box-downsampled 128 px texture matches the 32 px one.
    errors = []
    for texture_id in range(40):
        big = generate_texture(0, texture_id, 128).astype(np.float64)
        small = generate_texture(0, texture_id, 32).astype(np.float64)
        errors.append(np.abs(big.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3)) - small).mean())
    assert np.median(errors) < 12, errors


def test_textures_tile_without_visible_seams(small_bank):
    # Rank of the wrap-around difference (last column/row against the first) among all adjacent
    # pixel pairs: about 0.5 when the border is no different from the interior, near 1 at a seam.
    ranks = defaultdict(list)
    for texture_id, image in enumerate(small_bank[:600]):
        im = image.astype(np.float64)
        for axis in (0, 1):
            wrapped = np.concatenate([im, np.take(im, [0], axis=axis)], axis=axis)
            step = np.abs(np.diff(wrapped, axis=axis)).mean(axis=(1 - axis, 2))
            ranks[texture_kind(0, texture_id)].append((step < step[-1]).mean())
    for kind, values in ranks.items():
        assert np.mean(values) < 0.7, (kind, np.mean(values))


# --- presets -----------------------------------------------------------------------------------


def test_bundled_presets_file_equals_builtin_defaults():
    assert load_presets() == P.DEFAULT_PRESETS
    assert load_presets(REPO / "textures" / "presets.toml") == P.DEFAULT_PRESETS


def test_missing_bundled_presets_fall_back_to_builtin_defaults(tmp_path, monkeypatch):
    expected = TextureBank(TextureBankConfig(), cache_dir=tmp_path).describe()["presets_hash"]
    monkeypatch.setattr(P, "BUNDLED_PRESETS", tmp_path / "not-shipped.toml")
    P.bundled_presets.cache_clear()
    try:
        bank = TextureBank(TextureBankConfig(), cache_dir=tmp_path)
        assert bank.presets_source == "built-in defaults"
        assert bank.describe()["presets_hash"] == expected
    finally:
        P.bundled_presets.cache_clear()


def test_user_presets_file_changes_bank_and_hash(tmp_path):
    path = tmp_path / "stripes_only.toml"
    path.write_text("[weights]\n" + "".join(f"{k} = {float(k == 'stripes')}\n" for k in KINDS))
    bank = TextureBank(TextureBankConfig(presets=str(path), resolution=16), cache_dir=tmp_path)
    default = TextureBank(TextureBankConfig(resolution=16), cache_dir=tmp_path)
    assert bank.describe()["presets_hash"] != default.describe()["presets_hash"]
    assert bank.cache_dir != default.cache_dir
    assert {texture_kind(0, i, load_presets(path)) for i in range(50)} == {"stripes"}


@pytest.mark.parametrize(
    "toml, named",
    [
        ("[fbm]\noctavez = [1, 2]\n", "fbm.octavez"),
        ("[sparkles]\nx = 1\n", "sparkles"),
        ("[palette]\nsaturation = [0.2, 1.5]\n", "palette.saturation"),
        ("[fbm]\noctaves = [4, 2]\n", "fbm.octaves"),
        ("[fbm]\noctaves = [1.5, 2]\n", "fbm.octaves"),
        ("[dots]\nhex_probability = 2.0\n", "dots.hex_probability"),
        ("[weights]\n" + "".join(f"{k} = 0\n" for k in KINDS), "weights"),
        ("[fbm\n", "not valid TOML"),
    ],
)
def test_bad_presets_raise_value_error_naming_the_key(tmp_path, toml, named):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_presets(path)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        TextureBank(TextureBankConfig(presets=str(path)), cache_dir=tmp_path)


def test_unknown_key_in_presets_dict_is_rejected():
    with pytest.raises(ValueError, match="stripes.angle"):
        generate_texture(0, 0, 16, {"stripes": {"angle": 45}})


def test_missing_presets_file_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TextureBank(TextureBankConfig(presets=str(tmp_path / "nope.toml")), cache_dir=tmp_path)


# --- bad input ---------------------------------------------------------------------------------


def test_resolution_below_8_is_rejected():
    with pytest.raises(ValueError, match="resolution 7"):
        generate_texture(0, 0, 7)
    with pytest.raises(ValueError, match="resolution 4"):
        TextureBankConfig(resolution=4)


def test_out_of_range_ids_raise_index_error_naming_id_and_size(tmp_path):
    bank = TextureBank(TextureBankConfig(size=10, resolution=16), cache_dir=tmp_path)
    for bad in (10, 11, -1):
        with pytest.raises(IndexError, match=rf"texture id {bad} .* 10 textures"):
            bank.get(bad)
        with pytest.raises(IndexError, match=rf"texture id {bad}"):
            bank.licence(bad)
    with pytest.raises(ValueError, match=">= 0"):
        generate_texture(0, -1, 16)


# --- the bank and its caches -------------------------------------------------------------------


def test_cache_round_trip(tmp_path):
    config = TextureBankConfig(seed=7, size=20, resolution=24)
    bank = TextureBank(config, cache_dir=tmp_path)
    assert len(bank) == 20
    assert bank.cache_dir == tmp_path / "textures" / "v1" / bank.describe()["bank_hash"]
    image = bank.get(4)
    path = bank.cache_dir / "000004.npy"
    assert path.is_file() and np.array_equal(np.load(path), image)
    assert not list(bank.cache_dir.glob(TEMPORARY_PREFIX + "*"))  # atomic writes leave no temporaries
    assert bank.get(4) is image  # the in-memory LRU
    assert not image.flags.writeable  # so callers cannot corrupt the cache

    # A new bank reads the .npy rather than regenerating: prove it with a doctored cache file.
    doctored = np.full_like(image, 9)
    np.save(path, doctored)
    assert np.array_equal(TextureBank(config, cache_dir=tmp_path).get(4), doctored)
    # A bank of another size shares the cache; a corrupt or mis-shaped entry is regenerated.
    np.save(path, np.zeros((3, 3, 3), np.uint8))
    assert np.array_equal(
        TextureBank(TextureBankConfig(seed=7, size=99, resolution=24), tmp_path).get(4), image
    )
    path.write_bytes(b"garbage")
    assert np.array_equal(TextureBank(config, cache_dir=tmp_path).get(4), image)


def test_memory_lru_is_bounded(tmp_path):
    bank = TextureBank(
        TextureBankConfig(size=10, resolution=16), cache_dir=tmp_path, memory_items=3
    )
    for i in range(10):
        bank.get(i)
    assert list(bank._memory) == [7, 8, 9]


def test_default_cache_dir_follows_zeroverse_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROVERSE_CACHE", str(tmp_path / "zc"))
    bank = TextureBank(TextureBankConfig(resolution=16))
    bank.get(0)
    assert bank.cache_dir.parent == tmp_path / "zc" / "textures" / "v1"
    assert (bank.cache_dir / "000000.npy").is_file()


def test_unwritable_cache_warns_and_keeps_working(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bank = TextureBank(TextureBankConfig(resolution=16), cache_dir=blocker)
    with pytest.warns(UserWarning, match="not writable"):
        image = bank.get(1)
    assert np.array_equal(image, generate_texture(0, 1, 16))


def test_procedural_describe_and_licence(tmp_path):
    bank = TextureBank(TextureBankConfig(seed=2, size=5, resolution=16), cache_dir=tmp_path)
    info = json.loads(json.dumps(bank.describe()))
    assert info["kind"] == "procedural" and info["seed"] == 2 and info["size"] == 5
    assert info["resolution"] == 16 and len(info["presets_hash"]) == 16
    assert bank.licence(3) == PROCEDURAL_LICENCE == info["licence"]
    other = TextureBank(TextureBankConfig(seed=3, size=5, resolution=16), cache_dir=tmp_path)
    assert other.describe()["bank_hash"] != info["bank_hash"]


# --- folder banks ------------------------------------------------------------------------------


def _make_folder(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    # b.png: a wide image whose centre third is green, so the centre crop must be all green.
    wide = np.zeros((60, 180, 3), np.uint8)
    wide[:, :60] = (255, 0, 0)
    wide[:, 60:120] = (0, 255, 0)
    wide[:, 120:] = (0, 0, 255)
    Image.fromarray(wide).save(folder / "b.png")
    Image.fromarray(np.full((50, 40), 200, np.uint8), "L").save(folder / "a.jpg", quality=95)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., 2] = 250
    Image.fromarray(rgba, "RGBA").save(folder / "c.webp", lossless=True)
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "d.png")  # 16-bit grey
    (folder / "notes.txt").write_text("not an image")


def test_folder_bank_round_trip_and_licences(tmp_path):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _make_folder(folder)
    (folder / "licences.json").write_text(json.dumps({"b.png": "CC-BY-4.0 (Jane Doe)"}))
    (folder / "LICENSE").write_text("\nCC0 1.0 Universal\n\nlong text ...\n")

    index = prepare_folder_bank(str(folder), str(cache), resolution=16)
    assert [e["file"] for e in index["images"]] == ["a.jpg", "b.png", "c.webp", "d.png"]
    assert (
        index["images"][1]["sha256"] == hashlib.sha256((folder / "b.png").read_bytes()).hexdigest()
    )
    assert (cache / "index.json").is_file() and not list(cache.glob(TEMPORARY_PREFIX + "*"))

    bank = TextureBank(TextureBankConfig(resolution=16), cache_dir=cache, folder=str(folder))
    assert len(bank) == 4
    images = [bank.get(i) for i in range(4)]
    assert all(im.dtype == np.uint8 and im.shape == (16, 16, 3) for im in images)
    assert np.abs(images[0].astype(int) - 200).max() <= 3  # grey JPEG
    assert (images[1][..., 1] > 200).all() and (images[1][..., [0, 2]] < 40).all()  # centre crop
    assert images[2][..., 2].min() > 240  # alpha composited, colour kept
    assert np.abs(images[3].astype(int) - round(40000 / 65535 * 255)).max() <= 1  # 16-bit scaled

    assert bank.licence(1) == "CC-BY-4.0 (Jane Doe)"
    assert bank.licence(0) == "CC0 1.0 Universal (from LICENSE)"
    info = json.loads(json.dumps(bank.describe()))
    assert info["kind"] == "folder" and info["size"] == 4 and info["resolution"] == 16
    assert info["licences"] == {"CC0 1.0 Universal (from LICENSE)": 3, "CC-BY-4.0 (Jane Doe)": 1}
    with pytest.raises(IndexError, match="texture id 4 .* 4 textures"):
        bank.get(4)


def test_folder_without_licence_files_is_unknown(tmp_path):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _make_folder(folder)
    prepare_folder_bank(str(folder), str(cache), resolution=8)
    bank = TextureBank(TextureBankConfig(resolution=8), cache_dir=cache, folder=str(folder))
    assert {bank.licence(i) for i in range(len(bank))} == {UNKNOWN_LICENCE}


def test_folder_bank_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="missing.*does not exist"):
        prepare_folder_bank(str(missing), str(tmp_path / "c1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty.*has no images"):
        prepare_folder_bank(str(empty), str(tmp_path / "c2"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="x.png.*cannot be decoded"):
        prepare_folder_bank(str(broken), str(tmp_path / "c3"))

    with pytest.raises(ValueError, match="prepare_folder_bank"):
        TextureBank(TextureBankConfig(), cache_dir=tmp_path / "never-prepared", folder=str(empty))
    with pytest.raises(ValueError, match="cache_dir"):
        TextureBank(TextureBankConfig(), folder=str(empty))

    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _make_folder(folder)
    prepare_folder_bank(str(folder), str(cache), resolution=16)
    with pytest.raises(ValueError, match="holds 16 px textures but the config asks for 32"):
        TextureBank(TextureBankConfig(resolution=32), cache_dir=cache, folder=str(folder))


# --- a recorded description, read back ---------------------------------------------------------


def test_description_reopens_the_bank_it_describes(tmp_path):
    procedural = TextureBank(TextureBankConfig(seed=4, size=40, resolution=16), cache_dir=tmp_path / "p")
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _make_folder(folder)
    prepare_folder_bank(str(folder), str(cache), resolution=16)
    from_folder = TextureBank(TextureBankConfig(resolution=16), cache_dir=cache, folder=str(folder))
    for bank, cache_dir in ((procedural, tmp_path / "p"), (from_folder, cache)):
        recorded = json.loads(json.dumps(bank.describe()))  # as a manifest stores it
        again = BankDescription.from_json(recorded).open(cache_dir)
        assert again.describe() == bank.describe()
        assert again.get(3).tobytes() == bank.get(3).tobytes()


def test_description_defaults_and_errors():
    assert BankDescription.from_json(None) == BankDescription()
    assert BankDescription.from_json({}, default_size=64).size == 64
    assert BankDescription.from_json({"size": 10}, default_size=64).size == 10
    with pytest.raises(ValueError, match="unknown texture bank kind 'photos'"):
        BankDescription.from_json({"kind": "photos"})
    with pytest.raises(ValueError, match="not its folder"):
        BankDescription.from_json({"kind": "folder"})


# --- purity: no PIL in the core ----------------------------------------------------------------


def test_module_works_without_pil(tmp_path):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _make_folder(folder)
    prepare_folder_bank(str(folder), str(cache), resolution=8)
    script = f"""
import sys
sys.modules["PIL"] = None  # any `import PIL` now raises ImportError, as in Blender's Python
import numpy as np
from zeroverse.scene import textures as T
image = T.generate_texture(0, 1, 16)
assert image.shape == (16, 16, 3)
config = T.TextureBankConfig(resolution=8)
bank = T.TextureBank(config, cache_dir={str(cache)!r}, folder={str(folder)!r})
assert bank.get(0).shape == (8, 8, 3)
T.contact_sheet([image, image], columns=2, tile=8)
try:
    T.prepare_folder_bank({str(folder)!r}, {str(tmp_path / "c2")!r})
except ValueError as exc:
    assert "Pillow" in str(exc)
else:
    raise AssertionError("prepare_folder_bank ran without PIL")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_core_imports_only_numpy_and_stdlib():
    # numpy.random's compiled extensions register _cython_* and cython_runtime pseudo-modules.
    script = (
        "import sys; before = set(sys.modules); import zeroverse.scene.textures; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "third = {m for m in new - set(sys.stdlib_module_names) - {'numpy', 'zeroverse'} "
        "         if not m.startswith(('_cython', 'cython_runtime'))}; "
        "assert not third, third; print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# --- helpers and the committed sample ----------------------------------------------------------


def test_contact_sheet_layout():
    images = [np.full((32, 32, 3), i * 40, np.uint8) for i in range(5)]
    sheet = contact_sheet(images, columns=3, tile=16, gap=2)
    assert sheet.shape == (2 * 18 + 2, 3 * 18 + 2, 3) and sheet.dtype == np.uint8
    assert (sheet[2:18, 2:18] == 0).all() and (sheet[20:36, 20:36] == 160).all()
    assert (sheet[20:36, 38:54] == 255).all()  # the empty slot keeps the background
    odd = contact_sheet([np.zeros((30, 50, 3), np.uint8)], columns=4, tile=16)
    assert odd.shape == (16, 16, 3)
    with pytest.raises(ValueError):
        contact_sheet([], columns=2, tile=8)
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet([np.zeros((8, 8), np.uint8)], columns=1, tile=8)


def test_committed_sample_matches_the_generator():
    # Fails when a generator's output changes: regenerate the sample (python bench/textures.py
    # --write-sample textures/sample) and bump GENERATOR_VERSION so old caches are not reused.
    from PIL import Image

    pngs = sorted(SAMPLE.glob("[0-9]*-*.png"))
    assert len(pngs) >= 16
    assert {p.stem.split("-", 1)[1] for p in pngs} == set(KINDS)
    for png in pngs:
        texture_id, kind = png.stem.split("-", 1)
        assert texture_kind(0, int(texture_id)) == kind
        stored = np.asarray(Image.open(png).convert("RGB"))
        assert np.array_equal(stored, generate_texture(0, int(texture_id), stored.shape[0])), (
            png.name
        )
    assert (SAMPLE / "sheet.png").is_file()
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 1_200_000
