"""Image encoding and decoding with numpy and zlib only (runs inside Blender's Python, which has
no PIL): PNG encode for RGBA8 views, raw little-endian float maps, and a reader for the
uncompressed multilayer OpenEXR files that Blender writes for render passes."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 6, rle: bool = False) -> bytes:
    """uint8 [H, W, C] (C = 1, 3 or 4) -> PNG bytes. Every row uses the 'Up' filter: one
    vectorised subtraction, and on rendered images it compresses nearly as well as adaptive
    filtering at a fraction of the cost. `rle`: zlib's run-length strategy instead of `level`;
    on 512² renders it encoded in half the time of level 4 for 5% more bytes, and decodes to the
    same pixels as fast (any PNG decoder reads it)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"encode_png needs uint8 [H, W, 1|3|4], got {image.dtype} {image.shape}")
    h, w, c = image.shape
    colour_type = {1: 0, 3: 2, 4: 6}[c]
    rows = image.reshape(h, w * c)
    raw = np.empty((h, w * c + 1), np.uint8)
    raw[:, 0] = 2
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    if rle:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        data = compressor.compress(raw) + compressor.flush()
    else:
        data = zlib.compress(raw, level)
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def encode_array(array: np.ndarray, dtype: str) -> bytes:
    """Raw little-endian bytes of `array` as `dtype` ('<f4' or '<f2')."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()


def decode_array(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(f"raw map holds {len(data)} bytes, expected {expected} for {dtype} {shape}")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> sRGB-encoded [0, 1] (the standard piecewise OETF)."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def _read_header(buf: bytes, pos: int) -> tuple[dict, int]:
    """One EXR header (attributes up to a null byte) -> ({channels, dataWindow, ...}, new pos)."""
    header: dict = {"channels": []}
    while buf[pos] != 0:
        end = buf.index(b"\0", pos)
        name = buf[pos:end].decode()
        tend = buf.index(b"\0", end + 1)
        kind = buf[end + 1:tend].decode()
        size = struct.unpack_from("<i", buf, tend + 1)[0]
        value = buf[tend + 5:tend + 5 + size]
        pos = tend + 5 + size
        if name == "channels" and kind == "chlist":
            p = 0
            while value[p] != 0:
                cend = value.index(b"\0", p)
                header["channels"].append((value[p:cend].decode(), struct.unpack_from("<i", value, cend + 1)[0]))
                p = cend + 1 + 16
        elif name == "dataWindow":
            header["dataWindow"] = struct.unpack("<iiii", value)
        elif name == "compression":
            header["compression"] = value[0]
        elif name == "chunkCount":
            header["chunkCount"] = struct.unpack("<i", value)[0]
    return header, pos + 1


def read_exr_headers(buf: bytes, multipart: bool) -> tuple[list[dict], int]:
    """Every part's header -> (headers, position of the first offset table)."""
    pos = 8
    headers = []
    while True:
        header, pos = _read_header(buf, pos)
        headers.append(header)
        if not multipart or buf[pos] == 0:
            break
    return headers, pos + 1 if multipart else pos  # multi-part: an empty header ends the list


EXR_SIZES = {0: 4, 1: 2, 2: 4}  # UINT, HALF, FLOAT
EXR_DTYPES = {0: "<u4", 1: "<f2", 2: "<f4"}


def read_exr_channels(path: str) -> dict[str, np.ndarray]:
    """Channels of an uncompressed scanline OpenEXR file (single- or multi-part) as float32
    [H, W] arrays, keyed by channel name.

    Blender writes its multilayer EXR this way when the codec is 'NONE' (Blender 5: one part per
    pass). Reading it needs no OpenEXR library: headers of attributes, a table of chunk offsets
    per part, then chunks of ([part number,] line number, byte count, each channel's samples of
    that line in channel-name order).

    The file is read once into one (not zero-filled) buffer and float32 channels are strided
    views into it (no copy); a part whose chunks are not evenly spaced lines in increasing order is gathered line
    by line. Per 512² view (8 float channels) this cost 10 ms with a copy per line and channel.
    """
    with open(path, "rb") as f:
        raw = np.empty(os.fstat(f.fileno()).st_size, np.uint8)  # not zero-filled, unlike bytearray(n)
        f.readinto(raw)
    if raw[:4].tobytes() != b"\x76\x2f\x31\x01":
        raise ValueError(f"{path} is not an OpenEXR file")
    flags = struct.unpack_from("<I", raw, 4)[0]
    if flags & 0x200:
        raise ValueError(f"{path}: tiled EXR is not supported")
    multipart = bool(flags & 0x1000)
    try:  # the headers sit at the start: parse them from a small copy, the whole file if they are longer
        headers, pos = read_exr_headers(raw[:65536].tobytes(), multipart)
    except (IndexError, ValueError, struct.error):
        headers, pos = read_exr_headers(raw.tobytes(), multipart)
    out: dict[str, np.ndarray] = {}
    for header in headers:
        if header.get("compression", 0) != 0:
            raise ValueError(f"{path}: EXR compression {header['compression']} is not supported; write with codec 'NONE'")
        xmin, ymin, xmax, ymax = header["dataWindow"]
        width, height = xmax - xmin + 1, ymax - ymin + 1
        count = header.get("chunkCount", height)
        offsets = np.frombuffer(raw, "<u8", count=count, offset=pos).astype(np.int64)
        pos += 8 * count
        prefix = 12 if multipart else 8  # [part number,] line number, byte count
        line_bytes = sum(EXR_SIZES[t] for _, t in header["channels"]) * width
        stride = prefix + line_bytes
        lines = None
        if count == height and (count == 1 or np.all(np.diff(offsets) == stride)) and offsets[-1] + stride <= len(raw):
            block = raw[offsets[0]:offsets[0] + count * stride].reshape(count, stride)
            ys = block[:, prefix - 8:prefix - 4].copy().view("<i4")[:, 0] - ymin
            if np.array_equal(ys, np.arange(height)):
                lines = block[:, prefix:]
        if lines is None:  # any other chunk order: gather line by line
            ys = np.array([struct.unpack_from("<i", raw, int(o) + prefix - 8)[0] for o in offsets]) - ymin
            lines = np.empty((height, line_bytes), np.uint8)
            for y, o in zip(ys.tolist(), offsets.tolist()):
                lines[y] = raw[o + prefix:o + prefix + line_bytes]
        offset = 0
        for name, pixel_type in header["channels"]:
            n = EXR_SIZES[pixel_type] * width
            values = lines[:, offset:offset + n].view(EXR_DTYPES[pixel_type])
            out[name] = values if pixel_type == 2 else values.astype(np.float32)
            offset += n
    return out
