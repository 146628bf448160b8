"""A contact sheet: many images tiled into one (numpy only), for looking at a bank at a glance."""

from __future__ import annotations

import numpy as np


def contact_sheet(
    images: list[np.ndarray], columns: int, tile: int, *, gap: int = 0, background: int = 255
) -> np.ndarray:
    """Tile images into one uint8 sheet [H, W, 3], H = rows*tile + (rows+1)*gap, likewise W.

    Each image [h, w, 3] uint8 is resized to tile x tile: box-averaged when h and w are
    multiples of ``tile``, nearest-neighbour otherwise. Rows fill left to right.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if columns < 1 or tile < 1 or gap < 0:
        raise ValueError(f"columns ({columns}) and tile ({tile}) must be >= 1 and gap ({gap}) >= 0")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    step = tile + gap
    sheet = np.full((rows * step + gap, columns * step + gap, 3), background, np.uint8)
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i} is {image.dtype} {image.shape}: expected uint8 [h, w, 3]")
        h, w = image.shape[:2]
        if h % tile == 0 and w % tile == 0:
            small = image.reshape(tile, h // tile, tile, w // tile, 3).mean(axis=(1, 3))
            small = (small + 0.5).astype(np.uint8)
        else:
            ys = ((np.arange(tile) + 0.5) * h / tile).astype(np.intp)
            xs = ((np.arange(tile) + 0.5) * w / tile).astype(np.intp)
            small = image[ys[:, None], xs[None, :]]
        top, left = gap + (i // columns) * step, gap + (i % columns) * step
        sheet[top : top + tile, left : left + tile] = small
    return sheet
