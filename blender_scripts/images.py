"""Image files read through Blender, for Blender Pythons that have no PIL (bpy, numpy only)."""

from __future__ import annotations

import bpy
import numpy as np


def read_image_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3], top row first, of any image format Blender reads."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = image.size
        pixels = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(pixels)
        # Blender stores rows bottom-up and colour as floats; 8-bit sources round-trip exactly.
        return np.round(pixels.reshape(h, w, 4)[::-1, :, :3] * 255.0).astype(np.uint8)
    finally:
        bpy.data.images.remove(image)
