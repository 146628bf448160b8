"""zeroverse.scene.imageio: the numpy-only PNG encoder against PIL's decoder, raw float maps, sRGB, and
the EXR reader against files written by Blender itself (the multi-part multilayer EXR of real
render passes is exercised by test_render.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from zeroverse.scene.imageio import decode_array, encode_array, encode_png, read_exr_channels, srgb_encode


def pil_decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (64, 64), (37, 101)])
@pytest.mark.parametrize("seed", range(3))
def test_encode_png_decodes_to_the_same_pixels(channels, mode, size, seed):
    rng = np.random.default_rng(seed)
    h, w = size
    image = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    if seed == 1:  # smooth content too (the 'Up' filter's deltas are then small and wrap rarely)
        image = (np.add.outer(np.arange(h), np.arange(w))[..., None] * 7 + np.arange(channels) * 50).astype(np.uint8)
    data = encode_png(image, level=6)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == mode and decoded.size == (w, h)
    got = pil_decode(data)
    np.testing.assert_array_equal(got.reshape(h, w, channels), image)


@pytest.mark.parametrize("level", [0, 1, 9])
def test_encode_png_levels_decode_identically(level):
    image = np.random.default_rng(5).integers(0, 256, size=(16, 24, 4), dtype=np.uint8)
    np.testing.assert_array_equal(pil_decode(encode_png(image, level)), image)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_encode_png_rle_decodes_identically(channels, seed):
    """The renderer's default (run-length zlib strategy) is lossless like every level."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(33, 47, channels), dtype=np.uint8)
    image[:, :20] = 0  # runs, as a transparent background makes
    image[5:9] = image[4]
    data = encode_png(image, rle=True)
    np.testing.assert_array_equal(pil_decode(data).reshape(image.shape), image)
    assert data != encode_png(image, level=4)  # it is another encoding, not the level-4 one


def test_encode_png_wraps_deltas_modulo_256():
    # Rows 255, 0, 255, ...: the 'Up' deltas are +1 / -1 modulo 256.
    image = np.zeros((6, 4, 3), np.uint8)
    image[::2] = 255
    np.testing.assert_array_equal(pil_decode(encode_png(image)), image)


def test_encode_png_accepts_non_contiguous_views():
    base = np.random.default_rng(2).integers(0, 256, size=(20, 30, 4), dtype=np.uint8)
    view = base[::2, ::3, :3]  # strided, not contiguous
    np.testing.assert_array_equal(pil_decode(encode_png(view)), view)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 4), np.float32),  # wrong dtype
        np.zeros((4, 4), np.uint8),  # no channel axis
        np.zeros((4, 4, 2), np.uint8),  # grey + alpha is not supported
        np.zeros((2, 4, 4, 4), np.uint8),
    ],
)
def test_encode_png_rejects_bad_input_naming_it(bad):
    with pytest.raises(ValueError, match=r"encode_png needs uint8 \[H, W, 1\|3\|4\], got"):
        encode_png(bad)


@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
def test_raw_maps_round_trip(dtype):
    array = np.random.default_rng(0).normal(size=(6, 5, 3)).astype(np.float32)
    data = encode_array(array, dtype)
    assert len(data) == array.size * np.dtype(dtype).itemsize
    back = decode_array(data, dtype, (6, 5, 3))
    np.testing.assert_array_equal(back, array.astype(dtype))
    with pytest.raises(ValueError, match="expected"):
        decode_array(data[:-1], dtype, (6, 5, 3))


def test_raw_maps_are_little_endian():
    assert encode_array(np.array([1.0], np.float32), "<f4") == b"\x00\x00\x80\x3f"


def test_srgb_encode_known_values():
    x = np.array([-1.0, 0.0, 0.0031308, 0.18, 0.5, 1.0, 2.0])
    y = srgb_encode(x)
    np.testing.assert_allclose(y, [0.0, 0.0, 0.04045, 0.46135, 0.73536, 1.0, 1.0], atol=1e-4)
    # Continuous at the knee and monotonic.
    knee = 0.0031308
    assert srgb_encode(np.array([knee - 1e-9]))[0] == pytest.approx(srgb_encode(np.array([knee + 1e-9]))[0], abs=1e-6)
    ramp = srgb_encode(np.linspace(0, 1, 1001))
    assert np.all(np.diff(ramp) > 0)


# ---- EXR written by Blender --------------------------------------------------------------------


def _blender_exr(path, pixels: np.ndarray, depth: str, codec: str = "NONE") -> None:
    """Writes float RGBA pixels [H, W, 4] (row 0 = top) with Blender's own EXR writer."""
    bpy = pytest.importorskip("bpy")
    h, w = pixels.shape[:2]
    image = bpy.data.images.new("zv_exr_test", w, h, alpha=True, float_buffer=True)
    try:
        image.pixels.foreach_set(np.ascontiguousarray(pixels[::-1], np.float32).reshape(-1))  # Blender: bottom row first
        scene = bpy.context.scene
        settings = scene.render.image_settings
        settings.media_type = "IMAGE"
        settings.file_format = "OPEN_EXR"
        settings.color_mode = "RGBA"
        settings.color_depth = depth
        settings.exr_codec = codec
        image.save_render(str(path), scene=scene)
    finally:
        bpy.data.images.remove(image)


@pytest.mark.blender
@pytest.mark.parametrize("depth, dtype", [("32", np.float32), ("16", np.float16)])
def test_read_exr_channels_on_a_blender_exr(tmp_path, depth, dtype):
    h, w = 5, 7  # not square: a transposed reader would fail
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-2.0, 3.0, size=(h, w, 4)).astype(np.float32)  # negative and > 1: no clamping
    path = tmp_path / f"image-{depth}.exr"
    _blender_exr(path, pixels, depth)
    channels = read_exr_channels(str(path))
    assert sorted(channels) == ["A", "B", "G", "R"]
    for k, name in enumerate("RGBA"):
        assert channels[name].shape == (h, w) and channels[name].dtype == np.float32
        np.testing.assert_array_equal(channels[name], pixels[..., k].astype(dtype).astype(np.float32))


def _reverse_chunks(data: bytes) -> bytes:
    """The same single-part scanline EXR with its line chunks stored bottom line first (the
    offset table rewritten to match): legal, and not what Blender writes."""
    import struct

    buf = bytearray(data)
    pos = 8
    while buf[pos] != 0:  # attributes: name\0 type\0 size value
        end = buf.index(b"\0", pos)
        tend = buf.index(b"\0", end + 1)
        pos = tend + 5 + struct.unpack_from("<i", buf, tend + 1)[0]
    table = pos + 1
    count = (struct.unpack_from("<Q", buf, table)[0] - table) // 8  # the first chunk follows the table
    offsets = [struct.unpack_from("<Q", buf, table + 8 * i)[0] for i in range(count)]
    ends = offsets[1:] + [len(buf)]
    chunks = [bytes(buf[o:e]) for o, e in zip(offsets, ends)]
    out = bytearray(buf[:table + 8 * count])
    new_offsets = [0] * count
    for i in reversed(range(count)):
        new_offsets[i] = len(out)
        out += chunks[i]
    struct.pack_into(f"<{count}Q", out, table, *new_offsets)
    return bytes(out)


@pytest.mark.blender
def test_read_exr_channels_gathers_lines_stored_out_of_order(tmp_path):
    """The fast path takes evenly spaced lines in order as one strided block; any other layout
    must still read right, line by line."""
    h, w = 6, 5
    pixels = np.random.default_rng(1).uniform(-1.0, 2.0, size=(h, w, 4)).astype(np.float32)
    path = tmp_path / "image.exr"
    _blender_exr(path, pixels, "32")
    reversed_path = tmp_path / "reversed.exr"
    reversed_path.write_bytes(_reverse_chunks(path.read_bytes()))
    assert reversed_path.read_bytes() != path.read_bytes()
    for p in (path, reversed_path):
        channels = read_exr_channels(str(p))
        for k, name in enumerate("RGBA"):
            np.testing.assert_array_equal(channels[name], pixels[..., k])


@pytest.mark.blender
def test_read_exr_channels_refuses_compressed_and_non_exr(tmp_path):
    path = tmp_path / "zip.exr"
    _blender_exr(path, np.zeros((4, 4, 4), np.float32), "32", codec="ZIP")
    with pytest.raises(ValueError, match="compression .* not supported; write with codec 'NONE'"):
        read_exr_channels(str(path))
    png = tmp_path / "not.exr"
    png.write_bytes(encode_png(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(ValueError, match="not an OpenEXR file"):
        read_exr_channels(str(png))
