"""The 11 texture generators and the pure function ``(bank_seed, texture_id) -> texture``.

A texture's random stream is ``np.random.default_rng(np.random.SeedSequence([bank_seed,
texture_id]))``, whose first draw picks a generator kind (weights from the presets) and whose
later draws pick that generator's parameters and random lattices. No draw depends on the
resolution, so one texture id is the same pattern at 32 and at 1024 pixels.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Callable

import numpy as np

from zeroverse.scene.textures.noise import (
    LUT_SIZE,
    bias_curve,
    chance,
    direction,
    draw_float,
    draw_int,
    fbm,
    grid,
    hsv_to_rgb,
    lattice_axis,
    lookup,
    lookup_periodic,
    neutral,
    normalise,
    palette,
    periodic_distance,
    ramp_lut,
    resample,
    sin_turns,
    smoothstep,
    value_noise,
)
from zeroverse.scene.textures.presets import resolve_presets

DEFAULT_TEXTURE_SIZE: int = 256
MIN_RESOLUTION: int = 8

# Part of every bank hash: bump it whenever a generator's output changes, so that stale cached
# textures are never served (tests/test_textures.py compares the committed sample to catch this).
GENERATOR_VERSION: int = 1

KINDS: tuple[str, ...] = (
    "fbm_value",
    "fbm_gradient",
    "cells",
    "stripes",
    "checkers",
    "bricks",
    "dots",
    "gradient_linear",
    "gradient_radial",
    "marble",
    "wood",
)


# ---------------------------------------------------------------------------------------------
# Generators: (rng, presets, resolution) -> float32 [R, R, 3] sRGB, roughly in [0, 1].
# No draw depends on the resolution, so a texture is the same pattern at every size.


def _gen_fbm(rng: np.random.Generator, presets: dict, res: int, gradient: bool) -> np.ndarray:
    p = presets["fbm"]
    octaves, cells = draw_int(rng, p["octaves"]), draw_int(rng, p["cells"])
    gain = draw_float(rng, p["gain"])
    ridged = gradient and chance(rng, p["ridged_probability"])
    warp = draw_float(rng, p["warp"]) if chance(rng, p["warp_probability"]) else 0.0
    lut = ramp_lut(rng, palette(rng, presets["palette"]))
    field = fbm(rng, res, octaves, cells, gain, gradient, ridged)
    if warp:
        du = fbm(rng, res, 3, cells, 0.5) - np.float32(0.5)
        dv = fbm(rng, res, 3, cells, 0.5) - np.float32(0.5)
        field = resample(field, du * np.float32(2 * warp), dv * np.float32(2 * warp))
    return lookup(lut, normalise(field))


def _gen_fbm_value(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    return _gen_fbm(rng, presets, res, gradient=False)


def _gen_fbm_gradient(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    return _gen_fbm(rng, presets, res, gradient=True)


def _gen_cells(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    """Worley cells on a jittered g x g grid: flat cell colours, domed shading, optional grout."""
    p = presets["cells"]
    g = draw_int(rng, p["cells"])
    jitter, shade = draw_float(rng, p["jitter"]), draw_float(rng, p["shade"])
    grout = draw_float(rng, p["grout"]) if chance(rng, p["grout_probability"]) else 0.0
    colours = palette(rng, presets["palette"])
    grout_colour = neutral(rng)
    points = np.float32(0.5) + (rng.random((2, g * g), np.float32) - 0.5) * np.float32(jitter)
    cell_colours = colours[rng.integers(0, len(colours), g * g)]
    cell_colours *= rng.uniform(0.85, 1.15, (g * g, 1)).astype(np.float32)
    phase = rng.random(2)

    ix, _, fx, _ = lattice_axis(g, res, quintic=False, phase=phase[0])
    iy, _, fy, _ = lattice_axis(g, res, quintic=False, phase=phase[1])
    f1 = np.full((res, res), np.inf, np.float32)
    f2 = np.full((res, res), np.inf, np.float32)
    nearest = np.zeros((res, res), np.intp)
    # Only the 3 x 3 neighbouring cells can hold the nearest points of a jittered grid.
    for oy in (-1, 0, 1):
        row = ((iy + oy) % g * g)[:, None]
        to_row = (fy - oy)[:, None]
        for ox in (-1, 0, 1):
            cell = row + ((ix + ox) % g)[None, :]
            dx = np.take(points[0], cell) + np.float32(ox) - fx[None, :]
            dy = np.take(points[1], cell) - to_row
            dx *= dx
            dy *= dy
            dx += dy
            np.copyto(nearest, cell, where=dx < f1)
            np.minimum(f2, np.maximum(f1, dx), out=f2)
            np.minimum(f1, dx, out=f1)
    f1, f2 = np.sqrt(f1), np.sqrt(f2)
    image = np.take(cell_colours, nearest, axis=0)
    image *= (1 - np.float32(shade) * np.clip(f1, 0, 1))[..., None]
    if grout:
        inside = smoothstep(grout, grout * 1.6, f2 - f1)[..., None]
        image = image * inside + grout_colour * (1 - inside)
    return image


def _gen_stripes(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    """Bands of random widths repeating along an integer wave vector (so at any of many angles)."""
    p = presets["stripes"]
    a, b = direction(rng, draw_int(rng, p["frequency"]))
    bands = draw_int(rng, p["bands"])
    softness = draw_float(rng, p["softness"])
    wobble = draw_float(rng, p["wobble"]) if chance(rng, p["wobble_probability"]) else 0.0
    colours = palette(rng, presets["palette"])
    widths = rng.random(bands) + 0.05
    if chance(rng, 0.4):
        widths = widths * widths * widths  # skewed: pinstripes beside broad bands
    order = (np.arange(bands) + rng.integers(len(colours))) % len(colours)
    phase = rng.random()
    wobble_field = fbm(rng, res, 3, 4, 0.5) if wobble else None

    cumulative = np.cumsum(widths)
    edges = cumulative[:-1] / cumulative[-1]
    band = np.searchsorted(edges, np.arange(LUT_SIZE) / LUT_SIZE, side="right")
    lut = colours[order[band]]
    blur = int(softness * LUT_SIZE)
    if blur > 1:
        # Circular box blur of the colour table softens band edges, wrapping across t = 0.
        padded = np.concatenate([lut[-blur:], lut, lut[:blur]])
        summed = np.cumsum(padded, axis=0, dtype=np.float64)
        lut = ((summed[2 * blur :] - summed[: -2 * blur]) / (2 * blur)).astype(np.float32)
        lut = lut[:LUT_SIZE]
    u, v = grid(res)
    t = np.float32(a) * u + np.float32(b) * v + np.float32(phase)
    if wobble_field is not None:
        t = t + (wobble_field - np.float32(0.5)) * np.float32(2 * wobble * max(abs(a), abs(b)))
    return lookup_periodic(lut, t)


def _gen_checkers(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    p = presets["checkers"]
    nx = draw_int(rng, p["cells"])
    diagonal = chance(rng, p["diagonal_probability"])
    # Diagonal checks need ny == nx for the per-tile gains to wrap as well as the pattern.
    ny = nx if diagonal or chance(rng, 0.6) else draw_int(rng, p["cells"])
    jitter = draw_float(rng, p["jitter"])
    gap = draw_float(rng, p["gap"]) if chance(rng, p["gap_probability"]) else 0.0
    colours = palette(rng, presets["palette"], count=2)
    gap_colour = neutral(rng)
    tile_gain = rng.uniform(1 - jitter, 1 + jitter, (ny, nx)).astype(np.float32)

    u, v = grid(res, rng.random(2))
    if diagonal:
        # (u + v) and (u - v) scaled by an integer count stay periodic on the unit tile.
        x, y = (u + v) * np.float32(nx), (u - v) * np.float32(nx)
    else:
        x = np.broadcast_to(u * np.float32(nx), (res, res))
        y = np.broadcast_to(v * np.float32(ny), (res, res))
    ix, iy = np.floor(x), np.floor(y)
    cx, cy = ix.astype(np.intp), iy.astype(np.intp)
    image = np.take(colours, (cx + cy) & 1, axis=0)
    image *= tile_gain[cy % ny, cx % nx][..., None]
    if gap:
        fx, fy = x - ix, y - iy
        edge = np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy))
        inside = smoothstep(gap * 0.5, gap * 0.5 + 0.02, edge)[..., None]
        image = image * inside + gap_colour * (1 - inside)
    return image


def _gen_bricks(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    p = presets["bricks"]
    # An even row count lets the half-brick offset of alternate rows wrap vertically.
    rows = 2 * draw_int(rng, p["rows"])
    per_row = draw_int(rng, p["per_row"])
    mortar = draw_float(rng, p["mortar"])
    jitter = draw_float(rng, p["jitter"])
    stack = chance(rng, p["stack_probability"])
    vertical = chance(rng, p["vertical_probability"])
    colours = palette(rng, presets["palette"])
    mortar_colour = neutral(rng)
    brick_colour = colours[rng.integers(0, len(colours), (rows, per_row))]
    brick_colour *= rng.uniform(1 - jitter, 1 + jitter, (rows, per_row, 1)).astype(np.float32)

    u, v = grid(res, rng.random(2))
    y = v * np.float32(rows)
    iy = np.floor(y)
    fy = y - iy
    r = iy.astype(np.intp) % rows
    offset = np.zeros_like(y) if stack else (r % 2).astype(np.float32) * np.float32(0.5)
    x = u * np.float32(per_row) + offset
    ix = np.floor(x)
    fx = x - ix
    c = ix.astype(np.intp) % per_row
    image = brick_colour[r, c]
    # Mortar of one physical thickness: horizontal joints in brick heights, vertical in widths.
    edge_y = np.minimum(fy, 1 - fy) / np.float32(mortar)
    edge_x = np.minimum(fx, 1 - fx) / np.float32(mortar * per_row / rows)
    edge = np.minimum(edge_x, edge_y)
    inside = smoothstep(0.5, 0.8, edge)
    bevel = np.float32(0.8) + np.float32(0.2) * smoothstep(0.5, 2.0, edge)
    image *= (inside * bevel)[..., None]
    image += mortar_colour * (1 - inside)[..., None]
    return image.transpose(1, 0, 2) if vertical else image


def _gen_dots(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    p = presets["dots"]
    n = draw_int(rng, p["cells"])
    hexagonal = chance(rng, p["hex_probability"])
    if hexagonal:
        n += n % 2  # shifted alternate rows wrap only for an even row count
    radius, softness = draw_float(rng, p["radius"]), draw_float(rng, p["softness"])
    radius_jitter = draw_float(rng, p["radius_jitter"])
    multicolour = chance(rng, p["multicolour_probability"])
    colours = palette(
        rng, presets["palette"], count=max(2, draw_int(rng, presets["palette"]["colours"]))
    )
    radii = radius * rng.uniform(1 - radius_jitter, 1 + radius_jitter, (n, n)).astype(np.float32)
    dot_index = rng.integers(1, len(colours), (n, n)) if multicolour else np.ones((n, n), np.intp)

    u, v = grid(res, rng.random(2))
    y = v * np.float32(n)
    iy = np.floor(y)
    fy = y - iy - np.float32(0.5)
    r = iy.astype(np.intp) % n
    shift = (r % 2).astype(np.float32) * np.float32(0.5) if hexagonal else np.float32(0.0)
    x = u * np.float32(n) + shift
    ix = np.floor(x)
    fx = x - ix - np.float32(0.5)
    c = ix.astype(np.intp) % n
    rad = radii[r, c]
    d = np.sqrt(fx * fx + fy * fy)
    half = np.float32(softness * 0.5)
    mask = 1 - np.clip((d - rad + half) / (2 * half + np.float32(1e-6)), 0, 1)
    mask = (mask * mask * (3 - 2 * mask))[..., None]
    return colours[0] * (1 - mask) + np.take(colours, dot_index[r, c], axis=0) * mask


def _gen_gradient_linear(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    a, b = direction(rng, draw_int(rng, presets["gradient_linear"]["frequency"]))
    phase = rng.random()
    lut = ramp_lut(rng, palette(rng, presets["palette"]))
    u, v = grid(res)
    t = np.float32(a) * u + np.float32(b) * v + np.float32(phase)
    # A triangle wave instead of a sawtooth ramps back down, so the tile wraps without a jump.
    t = 1 - np.abs(2 * (t - np.floor(t)) - 1)
    return lookup(lut, t)


def _gen_gradient_radial(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    p = presets["gradient_radial"]
    rings, bias = draw_int(rng, p["rings"]), draw_float(rng, p["bias"])
    centre = rng.random(2)
    lut = ramp_lut(rng, palette(rng, presets["palette"]))
    u, v = grid(res)
    d = periodic_distance(u, v, centre)
    t = bias_curve(d, bias) * np.float32(rings * 0.5)
    return lookup(lut, 1 - np.abs(2 * (t - np.floor(t)) - 1))


def _gen_marble(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    """Veins: a sine along an integer wave vector, its phase turbulently warped by fBm."""
    p = presets["marble"]
    a, b = direction(rng, draw_int(rng, p["frequency"]))
    cells, octaves = draw_int(rng, p["cells"]), draw_int(rng, p["octaves"])
    turbulence, bias = draw_float(rng, p["turbulence"]), draw_float(rng, p["bias"])
    lut = ramp_lut(rng, palette(rng, presets["palette"]))
    noise = fbm(rng, res, octaves, cells, 0.5, gradient=True)
    u, v = grid(res)
    turns = np.float32(a) * u + np.float32(b) * v
    turns = turns + (noise - np.float32(0.5)) * np.float32(turbulence / math.pi)
    t = bias_curve(np.float32(0.5) + np.float32(0.5) * sin_turns(turns), bias)
    return lookup(lut, t)


def _gen_wood(rng: np.random.Generator, presets: dict, res: int) -> np.ndarray:
    """Plank rings: level sets of rows + cathedral arches + warp, with fine grain streaks.

    The ring field is an integer count times v plus periodic terms, so its fractional part wraps
    on the tile; the arch term bends rings into the cone-cut loops of flat-sawn boards.
    """
    p = presets["wood"]
    rings, arch = draw_int(rng, p["rings"]), draw_float(rng, p["arch"])
    warp, bias = draw_float(rng, p["warp"]), draw_float(rng, p["bias"])
    grain = draw_float(rng, p["grain"])
    vertical = chance(rng, 0.5)
    arch_centre = rng.random()
    if chance(rng, p["warm_probability"]):
        n = int(rng.integers(2, 4))
        hue, saturation = rng.uniform(0.02, 0.11, n), rng.uniform(0.35, 0.85, n)
        colours = hsv_to_rgb(hue, saturation, np.sort(rng.uniform(0.15, 0.85, n)))
    else:
        colours = palette(rng, presets["palette"])
    lut = ramp_lut(rng, colours)
    warp_field = fbm(rng, res, 3, 2, 0.5)
    # Coarse along the rings, fine across them: streaks follow the grain.
    streaks = value_noise(rng.random((96, 3), np.float32), res)

    u, v = grid(res)
    bend = np.float32(arch) * sin_turns(u - np.float32(arch_centre - 0.25))  # a cosine
    r = np.float32(rings) * v + bend + (warp_field - np.float32(0.5)) * np.float32(2 * warp)
    t = bias_curve(r - np.floor(r), bias)
    image = lookup(lut, t)
    image *= (1 - np.float32(grain) * streaks)[..., None]
    return image.transpose(1, 0, 2) if vertical else image


GENERATORS: dict[str, Callable[[np.random.Generator, dict, int], np.ndarray]] = {
    "fbm_value": _gen_fbm_value,
    "fbm_gradient": _gen_fbm_gradient,
    "cells": _gen_cells,
    "stripes": _gen_stripes,
    "checkers": _gen_checkers,
    "bricks": _gen_bricks,
    "dots": _gen_dots,
    "gradient_linear": _gen_gradient_linear,
    "gradient_radial": _gen_gradient_radial,
    "marble": _gen_marble,
    "wood": _gen_wood,
}


# ---------------------------------------------------------------------------------------------
# One texture from (bank seed, texture id)


def _texture_rng(bank_seed: int, texture_id: int) -> np.random.Generator:
    bank_seed, texture_id = operator.index(bank_seed), operator.index(texture_id)
    if bank_seed < 0 or texture_id < 0:
        raise ValueError(
            f"bank_seed ({bank_seed}) and texture_id ({texture_id}) must be >= 0: "
            "SeedSequence takes non-negative integers"
        )
    return np.random.default_rng(np.random.SeedSequence([bank_seed, texture_id]))


def _draw_kind(rng: np.random.Generator, presets: dict) -> str:
    # Exactly one draw whatever the weights, so the rest of the stream does not depend on them.
    weights = [presets["weights"][k] for k in KINDS]
    cumulative = list(itertools.accumulate(weights))
    index = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
    # Rounding could land on the very end: never step onto a trailing zero-weight kind.
    return KINDS[min(index, max(i for i, w in enumerate(weights) if w > 0))]


def check_resolution(resolution: int) -> int:
    """``resolution`` as an int, or ValueError when it is below MIN_RESOLUTION."""
    resolution = operator.index(resolution)
    if resolution < MIN_RESOLUTION:
        raise ValueError(
            f"resolution {resolution} is too small: use at least {MIN_RESOLUTION} pixels"
        )
    return resolution


def make_texture(bank_seed: int, texture_id: int, resolution: int, presets: dict) -> np.ndarray:
    """:func:`generate_texture` for a checked resolution and already merged presets (what a
    bank holds), skipping the per-call validation."""
    rng = _texture_rng(bank_seed, texture_id)
    image = GENERATORS[_draw_kind(rng, presets)](rng, presets, resolution)
    detail = presets["detail"]
    if chance(rng, detail["probability"]):
        # Low-contrast grime breaks up flat areas the way real material photos are never flat.
        strength = draw_float(rng, detail["strength"])
        grime = fbm(rng, resolution, 4, draw_int(rng, detail["cells"]), 0.55)
        image = image * (1 + (grime - np.float32(0.5)) * np.float32(2 * strength))[..., None]
    image = np.clip(image, 0.0, 1.0)
    image *= np.float32(255.0)
    image += np.float32(0.5)
    return np.ascontiguousarray(image.astype(np.uint8))


def generate_texture(
    bank_seed: int,
    texture_id: int,
    resolution: int = DEFAULT_TEXTURE_SIZE,
    presets: dict | None = None,
) -> np.ndarray:
    """Generate texture ``texture_id`` of bank ``bank_seed``: uint8 sRGB [R, R, 3].

    A pure function: the same arguments give the same bytes. ``presets`` is a presets mapping
    shaped like ``textures/presets.toml`` (missing keys take the defaults); None uses the bundled
    file. Raises ``ValueError`` for resolution < 8, negative seed or id, or bad presets.

    >>> generate_texture(0, 7, 32).shape
    (32, 32, 3)
    """
    resolution = check_resolution(resolution)
    return make_texture(bank_seed, texture_id, resolution, resolve_presets(presets))


def texture_kind(bank_seed: int, texture_id: int, presets: dict | None = None) -> str:
    """Name of the generator (one of :data:`KINDS`) that texture ``texture_id`` uses."""
    return _draw_kind(_texture_rng(bank_seed, texture_id), resolve_presets(presets))

