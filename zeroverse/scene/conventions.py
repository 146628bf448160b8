"""Coordinate, camera and image conventions shared by every stage (pure Python).

These values are also written into every shard's Parquet metadata, so a reader never has to
guess them.
"""

SCHEMA_VERSION = 1

CONVENTIONS = {
    "world": "right-handed, +Z up; every shape centred and scaled into the cube [-1, 1]^3",
    "camera": "OpenCV: x right, y down, z forward; c2w is camera-to-world 4x4 row-major float32",
    "intrinsics": "fx, fy, cx, cy in pixels; pixel centres at +0.5 (the first pixel's centre is 0.5, 0.5)",
    "orthographic": "for projection='orthographic' fx, fy are pixels per world unit and c2w places the image plane",
    "rgba": "PNG, straight (not premultiplied) alpha, 8-bit sRGB",
    "depth": "float32 little-endian [H, W], z along the camera axis (planar) in world units, 0 where empty",
    "normal": "float16 little-endian [H, W, 3], world space, unit length, 0 where empty",
    "position": "float32 little-endian [H, W, 3], world xyz, 0 where empty (optional column)",
    "uv": "per triangle corner, (u, v) in [0, 1], v up as in Blender",
}
