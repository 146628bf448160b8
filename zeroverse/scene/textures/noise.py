"""Exact-arithmetic building blocks of the texture generators: random draws, palettes, colour
ramps and periodic noise (numpy only).

Pixel values pass only through IEEE-exact operations (+, -, *, /, sqrt, floor, comparisons):
np.sin, np.power and friends run SIMD code whose last bit differs between CPUs and numpy
versions, so sines are polynomials here and curves use Schlick's bias. The same texture is thus
the same bytes on every machine, inside Blender or out. Every field is periodic on the unit tile.
"""

from __future__ import annotations

import math

import numpy as np

# 1024 entries keep colour ramps free of visible banding before the 8-bit quantisation.
LUT_SIZE = 1024
# Finer lattices than this only add aliasing at the resolutions we render, and cost memory.
_MAX_LATTICE = 256


# ---------------------------------------------------------------------------------------------
# Random draws and colour


def draw_int(rng: np.random.Generator, bounds: list[int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def draw_float(rng: np.random.Generator, bounds: list[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def chance(rng: np.random.Generator, probability: float) -> bool:
    return bool(rng.random() < probability)


def direction(rng: np.random.Generator, magnitude: int) -> tuple[int, int]:
    """Integer wave vector with max(|a|, |b|) == magnitude: integers keep a pattern periodic."""
    other = int(rng.integers(-magnitude, magnitude + 1))
    return (magnitude, other) if rng.random() < 0.5 else (other, magnitude)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """h, s, v [N] in [0, 1] -> rgb [N, 3] float32."""
    h6 = (np.asarray(h) % 1.0) * 6.0
    sector = np.floor(h6).astype(np.intp) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def palette(rng: np.random.Generator, params: dict, count: int | None = None) -> np.ndarray:
    """A harmonious random palette: [N, 3] float32 sRGB in [0, 1]."""
    n = draw_int(rng, params["colours"]) if count is None else count
    base = rng.random()
    scheme = int(rng.integers(4))
    if scheme == 0:  # analogous
        hues = base + rng.uniform(-0.07, 0.07, n)
    elif scheme == 1:  # complementary
        hues = base + 0.5 * rng.integers(0, 2, n) + rng.uniform(-0.04, 0.04, n)
    elif scheme == 2:  # triadic
        hues = base + rng.integers(0, 3, n) / 3.0 + rng.uniform(-0.04, 0.04, n)
    else:
        hues = rng.random(n)
    low = chance(rng, params["low_saturation_probability"])
    saturation = rng.uniform(*(params["low_saturation"] if low else params["saturation"]), n)
    value = rng.uniform(*params["value"], n)
    spread = float(np.ptp(value))
    if 1 < n and spread < params["min_contrast"]:
        # Widen a too-flat palette about its mean: flat textures carry no shading cue.
        lo, hi = params["value"]
        mean = math.fsum(value.tolist()) / n
        scale = params["min_contrast"] / max(spread, 1e-6)
        value = np.clip(mean + (value - mean) * scale, lo, hi)
    return hsv_to_rgb(hues, saturation, value)


def neutral(rng: np.random.Generator) -> np.ndarray:
    """A near-grey [3] for mortar and grout, dark or light."""
    return hsv_to_rgb(rng.random(1), rng.uniform(0.0, 0.15, 1), rng.uniform(0.2, 0.9, 1))[0]


def ramp_lut(rng: np.random.Generator, colours: np.ndarray) -> np.ndarray:
    """Piecewise-linear ramp through ``colours`` at random stops: [LUT_SIZE, 3] float32."""
    n = len(colours)
    if n == 1:
        return np.repeat(colours, LUT_SIZE, axis=0)
    stops = np.concatenate([[0.0], np.sort(rng.random(n - 2)), [1.0]])
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    return np.stack([np.interp(x, stops, colours[:, c]) for c in range(3)], -1).astype(np.float32)


def lookup(lut: np.ndarray, t: np.ndarray) -> np.ndarray:
    """t [R, R] in [0, 1] -> colours [R, R, 3]."""
    index = np.clip(t, 0.0, 1.0) * np.float32(len(lut) - 1) + np.float32(0.5)
    return np.take(lut, index.astype(np.intp), axis=0)


def lookup_periodic(lut: np.ndarray, t: np.ndarray) -> np.ndarray:
    """t [R, R] of any value, wrapped to [0, 1) -> colours [R, R, 3]."""
    index = ((t - np.floor(t)) * np.float32(len(lut))).astype(np.intp)
    return np.take(lut, np.minimum(index, len(lut) - 1), axis=0)


def normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-6))


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - np.float32(edge0)) * np.float32(1.0 / max(edge1 - edge0, 1e-6)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def sin_turns(x: np.ndarray) -> np.ndarray:
    """sin(2*pi*x) for float32 x, from + and * alone (error < 4e-6)."""
    w = x - np.rint(x)  # one period: [-0.5, 0.5]
    # Fold onto [-0.25, 0.25] by sin's symmetry about a quarter turn.
    w = np.where(w > 0.25, np.float32(0.5) - w, np.where(w < -0.25, np.float32(-0.5) - w, w))
    z = w * np.float32(2 * math.pi)
    z2 = z * z
    poly = np.float32(1 / 362880) * z2 - np.float32(1 / 5040)
    poly = (poly * z2 + np.float32(1 / 120)) * z2 - np.float32(1 / 6)
    return z * (poly * z2 + np.float32(1))


def bias_curve(t: np.ndarray, b: float) -> np.ndarray:
    """Schlick's bias curve on t in [0, 1]: fixes 0 and 1, maps 0.5 to b (b < 0.5 pulls down).

    A power curve's stand-in made of one division, exact on every machine.
    """
    k = np.float32(1 / b - 2)
    return t / (k * (1 - t) + np.float32(1))


# ---------------------------------------------------------------------------------------------
# Periodic noise. A lattice of n cells spans the tile, so noise wraps exactly at the edges.


def grid(res: int, phase: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, shifted by ``phase``: u [1, R] (columns), v [R, 1] (rows).

    Patterns with integer counts per tile stay periodic under any phase; a random phase keeps
    their cell edges from always lining up with the tile border.
    """
    c = (np.arange(res, dtype=np.float32) + np.float32(0.5)) / np.float32(res)
    return c[None, :] + np.float32(phase[0]), c[:, None] + np.float32(phase[1])


def lattice_axis(cells: int, res: int, quintic: bool, phase: float = 0.0):
    """Per pixel along one axis: lattice cell, next cell, offset t and eased weight s, all [R]."""
    x = (np.arange(res, dtype=np.float32) + np.float32(0.5)) * np.float32(cells / res)
    x += np.float32(phase * cells)
    i0 = np.floor(x)
    t = x - i0
    s = t * t * t * (t * (t * 6 - 15) + 10) if quintic else t * t * (3 - 2 * t)
    i0 = i0.astype(np.intp) % cells
    return i0, (i0 + 1) % cells, t, s


def value_noise(lattice: np.ndarray, res: int) -> np.ndarray:
    """Periodic value noise, lattice [ny, nx] -> [R, R] in [0, 1].

    Separable: interpolate every lattice row along x first ([ny, R]), then along y, which is
    several times cheaper than gathering four corners per pixel.
    """
    x0, x1, _, sx = lattice_axis(lattice.shape[1], res, quintic=False)
    y0, y1, _, sy = lattice_axis(lattice.shape[0], res, quintic=False)
    rows = lattice[:, x0] * (1 - sx) + lattice[:, x1] * sx
    sy = sy[:, None]
    return rows[y0] * (1 - sy) + rows[y1] * sy


def gradient_noise(gx: np.ndarray, gy: np.ndarray, res: int) -> np.ndarray:
    """Periodic gradient (Perlin-style) noise, unit gradients gx, gy [n, n] -> [R, R] in about
    [-0.7, 0.7].

    The corner dot products g . (p - c) split into an x term and a y term, so the same separable
    two-pass interpolation as value noise applies.
    """
    x0, x1, tx, sx = lattice_axis(gx.shape[1], res, quintic=True)
    y0, y1, ty, sy = lattice_axis(gx.shape[0], res, quintic=True)
    along = gx[:, x0] * (tx * (1 - sx)) + gx[:, x1] * ((tx - 1) * sx)
    across = gy[:, x0] * (1 - sx) + gy[:, x1] * sx
    ty, sy = ty[:, None], sy[:, None]
    return (along[y0] + across[y0] * ty) * (1 - sy) + (along[y1] + across[y1] * (ty - 1)) * sy


def fbm(
    rng: np.random.Generator,
    res: int,
    octaves: int,
    cells: int,
    gain: float,
    gradient: bool = False,
    ridged: bool = False,
) -> np.ndarray:
    """Fractal sum of periodic noise octaves, [R, R] float32, roughly in [0, 1]."""
    total = np.zeros((res, res), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        n = min(cells << octave, _MAX_LATTICE)
        if gradient:
            g = rng.random((2, n, n), np.float32) * np.float32(2) - np.float32(1)
            g /= np.sqrt(g[0] * g[0] + g[1] * g[1]) + np.float32(1e-6)
            noise = gradient_noise(g[0], g[1], res)
            noise = 1 - 2 * np.abs(noise) if ridged else noise + np.float32(0.5)
        else:
            noise = value_noise(rng.random((n, n), np.float32), res)
        total += np.float32(amplitude) * noise
        norm += amplitude
        amplitude *= gain
    total *= np.float32(1.0 / norm)
    return total


def resample(field: np.ndarray, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Periodic bilinear lookup of field [R, R] at pixel + (du, dv) (tile units) -> [R, R].

    Warping the finished field costs four gathers however many octaves built it.
    """
    res = field.shape[0]
    x = np.arange(res, dtype=np.float32)[None, :] + du * np.float32(res)
    y = np.arange(res, dtype=np.float32)[:, None] + dv * np.float32(res)
    xf, yf = np.floor(x), np.floor(y)
    tx, ty = x - xf, y - yf
    x0 = xf.astype(np.intp) % res
    y0 = yf.astype(np.intp) % res
    x1 = (x0 + 1) % res
    y0 *= res
    y1 = (y0 + res) % (res * res)
    flat = field.ravel()
    top = np.take(flat, y0 + x0) * (1 - tx) + np.take(flat, y0 + x1) * tx
    bottom = np.take(flat, y1 + x0) * (1 - tx) + np.take(flat, y1 + x1) * tx
    return top * (1 - ty) + bottom * ty


def periodic_distance(u: np.ndarray, v: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Distance-like field to ``centre`` on the wrapped tile, [R, R], from 0 up to 1.

    Per axis w - 4/3 w^3 (w the wrapped offset in [-0.5, 0.5]) matches |w| near the centre and
    has zero slope at |w| = 0.5, where the plain wrapped distance folds: no crease in the rings.
    """

    def eased(offset: np.ndarray) -> np.ndarray:
        w = offset - np.rint(offset)
        return w - np.float32(4 / 3) * w * w * w

    sx, sy = eased(u - np.float32(centre[0])), eased(v - np.float32(centre[1]))
    # The largest value, at offsets (0.5, 0.5), is sqrt(2) / 3: scale it to 1.
    return np.sqrt((sx * sx + sy * sy) * np.float32(4.5))
