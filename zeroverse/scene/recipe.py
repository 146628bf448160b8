"""Shape recipes: everything random about a shape, sampled in pure numpy from (seed, shape_id).

A `ShapeRecipe` is a complete, JSON-serialisable description of one Zeroverse shape: which
primitives, their sizes, poses and per-region textures, and which augmentations (height field,
boolean difference, wireframe) were applied with which parameters. Building the mesh from a
recipe (zeroverse.scene.primitives + blender_scripts.build_shape) involves no randomness at all, so
the recipe alone reproduces the shape.

Imports: numpy and the standard library only (this module runs inside Blender's Python).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the meaning of any sampled number changes: shards record it, and a root made with
# another version is refused rather than silently mixed.
RECIPE_VERSION = 1

PRIMITIVE_KINDS = ("ellipsoid", "box", "cylinder", "cone", "torus")
# Texture regions per primitive kind; region order is the order of patches in primitives.py.
REGIONS_PER_KIND = {"ellipsoid": 1, "box": 6, "cylinder": 3, "cone": 2, "torus": 1}
AUGMENTATIONS = ("height_field", "boolean", "wireframe")


@dataclass(frozen=True)
class RecipeConfig:
    """Every distribution and probability of the shape sampler. Defaults follow LRM-Zero where
    the paper states them (primitive counts and weights, the five kinds, semi-axes U(0.25, 2))."""

    # P(number of primitives = i + 1) is proportional to primitive_count_weights[i].
    primitive_count_weights: tuple[float, ...] = (5, 5, 5, 4, 4, 3, 2, 1, 1)
    primitive_kinds: tuple[str, ...] = PRIMITIVE_KINDS
    primitive_kind_weights: tuple[float, ...] = (1, 1, 1, 1, 1)
    # Each primitive's semi-axes are drawn independently from U(low, high) before normalisation.
    semi_axis_range: tuple[float, float] = (0.25, 2.0)
    # Primitive centres are drawn from U(-t, t)^3 (same units as the semi-axes).
    translation_range: float = 1.0
    # Torus tube radius as a fraction of the ring radius.
    torus_tube_ratio_range: tuple[float, float] = (0.15, 0.45)
    # Tessellation: segments around (and twice the rings along) curved primitives; grid cells per
    # box face edge. Finer meshes make height fields and boolean cuts smoother.
    segments: int = 48
    box_grid: int = 12
    # Height field: smooth displacement along the normals, a sum of random 3D sinusoids.
    height_field_prob: float = 0.3  # per shape
    height_field_primitive_prob: float = 0.6  # per primitive of a shape that has one
    height_field_amplitude_range: tuple[float, float] = (0.04, 0.12)  # × the primitive's smallest semi-axis
    height_field_frequency_range: tuple[float, float] = (0.5, 3.0)  # cycles per unit of the local unit primitive
    height_field_terms: int = 4
    # Boolean difference: one cutter primitive centred on the surface of one target primitive.
    boolean_prob: float = 0.3
    boolean_cutter_size_range: tuple[float, float] = (0.3, 0.7)  # × the target's smallest semi-axis
    # Wireframe: one extra, coarsely tessellated primitive turned into struts.
    wireframe_prob: float = 0.2
    wireframe_thickness_range: tuple[float, float] = (0.03, 0.08)  # in the units of the semi-axes
    wireframe_segments_range: tuple[int, int] = (4, 10)
    # Textures: each region draws an id uniformly from [0, texture_bank_size).
    texture_bank_size: int = 1024

    def __post_init__(self) -> None:
        for name, rule in FIELD_RULES.items():
            _check_field(name, getattr(self, name), rule)
        unknown = [k for k in self.primitive_kinds if k not in PRIMITIVE_KINDS]
        if unknown:
            raise ValueError(f"recipe config: unknown primitive kind(s) {unknown}; choose from {list(PRIMITIVE_KINDS)}")
        if len(self.primitive_kind_weights) != len(self.primitive_kinds):
            raise ValueError(
                f"recipe config: primitive_kind_weights has {len(self.primitive_kind_weights)} entries but "
                f"primitive_kinds has {len(self.primitive_kinds)}; give one weight per kind"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def digest(self) -> str:
        """Short stable hash of the config and the recipe version (identifies a root's config)."""
        blob = json.dumps({"version": RECIPE_VERSION, **self.to_dict()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecipeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"recipe config: unknown key(s) {unknown}; valid keys are {sorted(known)} "
                "(docs/config.md lists every key, its range and default)"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


# What every RecipeConfig field must be: (kind, low, high, what the value means). Checked for
# every config (a file's "abc", -3 or 40.5 is refused naming the key, the value and the range)
# and listed in docs/config.md (a test keeps the two equal). Kinds: "probability" in [0, 1];
# "number" / "integer" in [low, high]; "range" a pair low <= high in (low, high]; "integer range"
# the same of integers in [low, high]; "weights" non-negative numbers with a positive sum;
# "names" a non-empty list of strings.
FIELD_RULES: dict[str, tuple[str, float, float, str]] = {
    "primitive_count_weights": ("weights", 0, math.inf, "entry i weights a shape of i + 1 primitives"),
    "primitive_kinds": ("names", 0, 0, "kinds primitives are drawn from: ellipsoid, box, cylinder, cone, torus"),
    "primitive_kind_weights": ("weights", 0, math.inf, "one weight per entry of primitive_kinds"),
    "semi_axis_range": ("range", 0, 100, "semi-axes drawn from U(low, high) before normalisation"),
    "translation_range": ("number", 0, 100, "primitive centres drawn from U(-t, t)^3"),
    "torus_tube_ratio_range": ("range", 0, 1, "torus tube radius / ring radius"),
    "segments": ("integer", 8, 512, "segments around curved primitives (rings: half as many)"),
    "box_grid": ("integer", 1, 256, "grid cells per box face edge"),
    "height_field_prob": ("probability", 0, 1, "per shape"),
    "height_field_primitive_prob": ("probability", 0, 1, "per primitive of a shape with a height field"),
    "height_field_amplitude_range": ("range", 0, 1, "× the primitive's smallest semi-axis"),
    "height_field_frequency_range": ("range", 0, 100, "cycles per unit of the local unit primitive"),
    "height_field_terms": ("integer", 1, 64, "sinusoids summed per height field"),
    "boolean_prob": ("probability", 0, 1, "per shape"),
    "boolean_cutter_size_range": ("range", 0, 2, "× the target's smallest semi-axis"),
    "wireframe_prob": ("probability", 0, 1, "per shape"),
    "wireframe_thickness_range": ("range", 0, 1, "strut thickness, in semi-axis units"),
    "wireframe_segments_range": ("integer range", 3, 64, "tessellation of the wireframe's primitive"),
    "texture_bank_size": ("integer", 1, 1_000_000, "texture ids drawn per region from [0, size)"),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def _is_integer(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def allowed(rule: tuple[str, float, float, str]) -> str:
    """The rule in words, e.g. 'an integer in [8, 512]'."""
    kind, low, high, _ = rule
    low, high = (int(x) if math.isfinite(x) and float(x).is_integer() else x for x in (low, high))
    return {
        "probability": "a number in [0, 1]",
        "number": f"a number in [{low}, {high}]",
        "integer": f"an integer in [{low}, {high}]",
        "range": f"a pair [low, high] of numbers with {low} < low <= high <= {high}",
        "integer range": f"a pair [low, high] of integers with {low} <= low <= high <= {high}",
        "weights": "a non-empty list of non-negative numbers with a positive sum",
        "names": "a non-empty list of names",
    }[kind]


def _check_field(name: str, value: Any, rule: tuple[str, float, float, str]) -> None:
    kind, low, high, meaning = rule
    if kind == "probability":
        ok = _is_number(value) and 0 <= value <= 1
    elif kind == "number":
        ok = _is_number(value) and low <= value <= high
    elif kind == "integer":
        ok = _is_integer(value) and low <= value <= high
    elif kind in ("range", "integer range"):
        element = _is_integer if kind == "integer range" else _is_number
        ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(element(v) for v in value)
        ok = ok and (low < value[0] if kind == "range" else low <= value[0]) and value[0] <= value[1] <= high
    elif kind == "weights":
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_number(v) and v >= 0 for v in value) and sum(value) > 0
    else:  # names
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, str) for v in value)
    if not ok:
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(
            f"recipe config: {name}={shown!r} is not {allowed(rule)} ({meaning}); fix it in the --config file "
            "(docs/config.md lists every key, its range and default)"
        )


def load_recipe_config(path: str | Path | None) -> RecipeConfig:
    """Reads a YAML or TOML file of RecipeConfig keys (optionally under a `recipe` table)."""
    if path is None:
        return RecipeConfig()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {str(path)!r} is not a readable file; pass a .toml or .yaml file")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {str(path)!r} is not valid TOML ({err}); fix that line") from err
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only the driver reads configs; Blender never does

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"--config {str(path)!r} is not valid YAML{line} ({getattr(err, 'problem', None) or err}); fix that line") from err
    else:
        raise ValueError(f"--config {str(path)!r}: unknown format {path.suffix!r}; use .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"--config {str(path)!r} must hold a table of keys, got {type(data).__name__}")
    if "recipe" in data:
        extra = sorted(set(data) - {"recipe"})
        if extra:
            raise ValueError(f"--config {str(path)!r}: unknown top-level key(s) {extra}; only [recipe] is read")
        data = data["recipe"]
    return RecipeConfig.from_dict(data)


@dataclass(frozen=True)
class HeightField:
    """Displacement d(x) = amplitude * sum_k w_k sin(2π f_k·x + φ_k), x in the unit primitive's frame."""

    amplitude: float
    frequencies: tuple[tuple[float, float, float], ...]
    phases: tuple[float, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Primitive:
    kind: str
    semi_axes: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # unit quaternion w, x, y, z
    translation: tuple[float, float, float]
    textures: tuple[int, ...]  # one texture id per region
    tube_ratio: float = 0.0  # torus only
    segments: int = 48
    height_field: HeightField | None = None


@dataclass(frozen=True)
class BooleanCut:
    target: int  # index into ShapeRecipe.primitives
    cutter: Primitive


@dataclass(frozen=True)
class Wireframe:
    primitive: Primitive
    thickness: float


@dataclass(frozen=True)
class ShapeRecipe:
    version: int
    seed: int
    shape_id: int
    primitives: tuple[Primitive, ...]
    boolean: BooleanCut | None = None
    wireframe: Wireframe | None = None
    box_grid: int = 12
    augmentations: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ShapeRecipe":
        data = json.loads(text)
        if data.get("version") != RECIPE_VERSION:
            raise ValueError(
                f"recipe version {data.get('version')!r} is not {RECIPE_VERSION}; "
                "regenerate the shapes with this zeroverse version"
            )

        def prim(d: dict) -> Primitive:
            hf = d.get("height_field")
            return Primitive(
                kind=d["kind"],
                semi_axes=tuple(d["semi_axes"]),
                rotation=tuple(d["rotation"]),
                translation=tuple(d["translation"]),
                textures=tuple(d["textures"]),
                tube_ratio=d["tube_ratio"],
                segments=d["segments"],
                height_field=None
                if hf is None
                else HeightField(
                    amplitude=hf["amplitude"],
                    frequencies=tuple(tuple(f) for f in hf["frequencies"]),
                    phases=tuple(hf["phases"]),
                    weights=tuple(hf["weights"]),
                ),
            )

        boolean = data.get("boolean")
        wire = data.get("wireframe")
        return cls(
            version=data["version"],
            seed=data["seed"],
            shape_id=data["shape_id"],
            primitives=tuple(prim(p) for p in data["primitives"]),
            boolean=None if boolean is None else BooleanCut(boolean["target"], prim(boolean["cutter"])),
            wireframe=None if wire is None else Wireframe(prim(wire["primitive"]), wire["thickness"]),
            box_grid=data["box_grid"],
            augmentations=tuple(data["augmentations"]),
        )


def shape_rng(seed: int, shape_id: int) -> np.random.Generator:
    """The one generator a shape's recipe draws from: independent of worker count and order."""
    if seed < 0 or shape_id < 0:
        raise ValueError(f"seed={seed} and shape_id={shape_id} must be non-negative integers")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(shape_id)]))


def _random_rotation(rng: np.random.Generator) -> tuple[float, float, float, float]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    if q[0] < 0:  # q and -q are the same rotation; keep one
        q = -q
    return tuple(float(x) for x in q)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _sample_primitive(cfg: RecipeConfig, rng: np.random.Generator, segments: int) -> Primitive:
    p = np.asarray(cfg.primitive_kind_weights, dtype=float)
    kind = cfg.primitive_kinds[int(rng.choice(len(cfg.primitive_kinds), p=p / p.sum()))]
    semi = tuple(_uniform(rng, cfg.semi_axis_range) for _ in range(3))
    rotation = _random_rotation(rng)
    translation = tuple(float(x) for x in rng.uniform(-cfg.translation_range, cfg.translation_range, size=3))
    textures = tuple(int(t) for t in rng.integers(0, cfg.texture_bank_size, size=REGIONS_PER_KIND[kind]))
    tube = _uniform(rng, cfg.torus_tube_ratio_range) if kind == "torus" else 0.0
    return Primitive(kind, semi, rotation, translation, textures, tube, segments)


def _sample_height_field(cfg: RecipeConfig, rng: np.random.Generator, prim: Primitive) -> HeightField:
    k = cfg.height_field_terms
    directions = rng.normal(size=(k, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    freqs = directions * rng.uniform(*cfg.height_field_frequency_range, size=(k, 1))
    weights = rng.uniform(0.2, 1.0, size=k)
    weights /= weights.sum()
    return HeightField(
        amplitude=_uniform(rng, cfg.height_field_amplitude_range) * float(min(prim.semi_axes)),
        frequencies=tuple(tuple(float(x) for x in f) for f in freqs),
        phases=tuple(float(x) for x in rng.uniform(0, 2 * math.pi, size=k)),
        weights=tuple(float(x) for x in weights),
    )


def sample_recipe(cfg: RecipeConfig, seed: int, shape_id: int) -> ShapeRecipe:
    """Samples the recipe of shape `shape_id` of the dataset with global seed `seed`.

    Pure and deterministic: the same (cfg, seed, shape_id) always gives the same recipe, whichever
    worker asks. Draw order is part of RECIPE_VERSION: adding a draw means bumping the version.
    """
    rng = shape_rng(seed, shape_id)
    counts = np.asarray(cfg.primitive_count_weights, dtype=float)
    n = int(rng.choice(len(counts), p=counts / counts.sum())) + 1
    prims = [_sample_primitive(cfg, rng, cfg.segments) for _ in range(n)]
    augmentations: list[str] = []

    # Each augmentation draws its decision first and its parameters after, always in this order,
    # so that changing one probability does not reshuffle unrelated shapes more than necessary.
    if rng.random() < cfg.height_field_prob:
        chosen = rng.random(n) < cfg.height_field_primitive_prob
        if not chosen.any():
            chosen[int(rng.integers(n))] = True
        for i in np.flatnonzero(chosen):
            prims[i] = dataclasses.replace(prims[i], height_field=_sample_height_field(cfg, rng, prims[i]))
        augmentations.append("height_field")

    boolean = None
    if rng.random() < cfg.boolean_prob:
        target = int(rng.integers(n))
        tgt = prims[target]
        cutter = _sample_primitive(cfg, rng, cfg.segments)
        size = _uniform(rng, cfg.boolean_cutter_size_range) * min(tgt.semi_axes)
        semi = tuple(float(size * s) for s in rng.uniform(0.6, 1.4, size=3))
        # Centre the cutter on the target's surface so that it really cuts: a point on the unit
        # primitive's boundary along a random direction, carried into the target's frame.
        local = surface_point(tgt.kind, rng.normal(size=3), tgt.tube_ratio)
        world = _rotate(tgt.rotation, local * np.asarray(tgt.semi_axes)) + np.asarray(tgt.translation)
        cutter = dataclasses.replace(cutter, semi_axes=semi, translation=tuple(float(x) for x in world))
        boolean = BooleanCut(target=target, cutter=cutter)
        augmentations.append("boolean")

    wireframe = None
    if rng.random() < cfg.wireframe_prob:
        segments = int(rng.integers(cfg.wireframe_segments_range[0], cfg.wireframe_segments_range[1] + 1))
        wire_prim = _sample_primitive(cfg, rng, max(3, segments))
        wireframe = Wireframe(primitive=wire_prim, thickness=_uniform(rng, cfg.wireframe_thickness_range))
        augmentations.append("wireframe")

    return ShapeRecipe(
        version=RECIPE_VERSION,
        seed=int(seed),
        shape_id=int(shape_id),
        primitives=tuple(prims),
        boolean=boolean,
        wireframe=wireframe,
        box_grid=cfg.box_grid,
        augmentations=tuple(augmentations),
    )


def _rotate(q: tuple[float, float, float, float], v: np.ndarray) -> np.ndarray:
    return v @ quaternion_matrix(q).T


def quaternion_matrix(q: tuple[float, float, float, float]) -> np.ndarray:
    """3x3 rotation matrix of the unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def surface_point(kind: str, direction: np.ndarray, tube_ratio: float) -> np.ndarray:
    """A point on the boundary of the unit primitive (before scaling) along `direction`."""
    d = direction / max(np.linalg.norm(direction), 1e-12)
    if kind == "ellipsoid":
        return d
    if kind == "box":
        return d / np.max(np.abs(d))
    if kind == "cylinder":
        return d / max(np.hypot(d[0], d[1]), abs(d[2]))
    if kind == "cone":
        # Radius shrinks from 1 at z = -1 to 0 at z = +1: r(z) = (1 - z) / 2.
        r = np.hypot(d[0], d[1])
        t_side = 1.0 / (2 * r + d[2]) if (2 * r + d[2]) > 1e-9 else np.inf
        t_base = -1.0 / d[2] if d[2] < -1e-9 else np.inf
        return d * min(t_side, t_base)
    if kind == "torus":
        # Torus with ring radius 1/(1+ratio) so that it spans [-1, 1] in x and y: pick a point on
        # the tube around the ring point nearest to the direction.
        ring = 1.0 / (1.0 + tube_ratio)
        tube = ring * tube_ratio
        azimuth = math.atan2(d[1], d[0])
        centre = np.array([ring * math.cos(azimuth), ring * math.sin(azimuth), 0.0])
        outward = np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
        angle = math.atan2(d[2], 1.0)
        return centre + tube * (math.cos(angle) * outward + math.sin(angle) * np.array([0.0, 0.0, 1.0]))
    raise ValueError(f"unknown primitive kind {kind!r}")
