"""Texture presets: the TOML that weights the generator kinds and bounds their parameters.

``textures/presets.toml`` is read and validated here; missing sections and keys take
:data:`DEFAULT_PRESETS`. A presets hash (of the content, never the path) enters every bank hash.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

BUNDLED_PRESETS = Path(__file__).resolve().parents[3] / "textures" / "presets.toml"
# Upper bound of the integer [lo, hi] ranges (counts of cells, rows, bands, octaves).
_MAX_COUNT = 256

# Mirrors textures/presets.toml (a test keeps them equal); used when that file is not shipped,
# e.g. in an installed wheel. [lo, hi] pairs are inclusive ranges; ints draw ints.
DEFAULT_PRESETS: dict[str, dict] = {
    "weights": {
        "fbm_value": 1.0,
        "fbm_gradient": 1.0,
        "cells": 1.0,
        "stripes": 1.0,
        "checkers": 0.6,
        "bricks": 0.8,
        "dots": 0.7,
        "gradient_linear": 0.4,
        "gradient_radial": 0.4,
        "marble": 1.0,
        "wood": 1.0,
    },
    "palette": {
        "colours": [2, 5],
        "low_saturation_probability": 0.2,
        "saturation": [0.3, 0.85],
        "low_saturation": [0.0, 0.12],
        "value": [0.15, 0.95],
        "min_contrast": 0.25,
    },
    "detail": {
        "probability": 0.7,
        "strength": [0.03, 0.18],
        "cells": [8, 32],
    },
    "fbm": {
        "octaves": [3, 6],
        "cells": [2, 8],
        "gain": [0.4, 0.65],
        "ridged_probability": 0.3,
        "warp_probability": 0.4,
        "warp": [0.02, 0.12],
    },
    "cells": {
        "cells": [3, 12],
        "jitter": [0.5, 1.0],
        "shade": [0.0, 0.6],
        "grout_probability": 0.5,
        "grout": [0.02, 0.12],
    },
    "stripes": {
        "frequency": [1, 6],
        "bands": [2, 6],
        "softness": [0.0, 0.08],
        "wobble_probability": 0.3,
        "wobble": [0.005, 0.04],
    },
    "checkers": {
        "cells": [2, 16],
        "diagonal_probability": 0.25,
        "jitter": [0.0, 0.15],
        "gap_probability": 0.3,
        "gap": [0.03, 0.12],
    },
    "bricks": {
        "rows": [2, 8],
        "per_row": [1, 6],
        "mortar": [0.04, 0.18],
        "jitter": [0.0, 0.2],
        "stack_probability": 0.15,
        "vertical_probability": 0.25,
    },
    "dots": {
        "cells": [3, 14],
        "radius": [0.15, 0.45],
        "softness": [0.01, 0.2],
        "radius_jitter": [0.0, 0.3],
        "hex_probability": 0.5,
        "multicolour_probability": 0.4,
    },
    "gradient_linear": {
        "frequency": [1, 2],
    },
    "gradient_radial": {
        "rings": [1, 4],
        "bias": [0.25, 0.7],
    },
    "marble": {
        "frequency": [1, 4],
        "cells": [2, 4],
        "octaves": [4, 6],
        "turbulence": [2.0, 8.0],
        "bias": [0.04, 0.5],
    },
    "wood": {
        "rings": [3, 14],
        "arch": [0.0, 3.0],
        "warp": [0.2, 1.5],
        "bias": [0.15, 0.7],
        "grain": [0.0, 0.15],
        "warm_probability": 0.6,
    },
}
# Values in these sections are fractions of saturation or brightness, so must lie in [0, 1]
# (as must every *_probability).
_UNIT_SECTIONS = ("palette",)


def load_presets(path: str | os.PathLike | None = None) -> dict:
    """Read and validate a presets TOML; missing sections and keys take the built-in defaults.

    ``path=None`` reads the bundled ``textures/presets.toml``, or the built-in defaults when the
    file is not there (an installed wheel). Raises ``ValueError`` naming any unknown key, a bad
    value, or a given path that does not exist.
    """
    # A copy: callers may edit it, and the merged tables share lists with the defaults.
    presets = bundled_presets()[0] if path is None else load_presets_file(Path(path))
    return copy.deepcopy(presets)


@functools.lru_cache(maxsize=1)
def bundled_presets() -> tuple[dict, str]:
    """(presets, where they came from): textures/presets.toml, else the built-in defaults.
    Cached and shared: do not edit the returned dict (load_presets gives a copy)."""
    if BUNDLED_PRESETS.is_file():
        return load_presets_file(BUNDLED_PRESETS), str(BUNDLED_PRESETS)
    return copy.deepcopy(DEFAULT_PRESETS), "built-in defaults"


def load_presets_file(path: Path) -> dict:
    """The validated presets of the TOML file at ``path``, merged over the defaults."""
    if not path.is_file():
        raise ValueError(
            f"presets file {str(path)!r} does not exist: pass an existing TOML file, "
            "or presets=None for the bundled textures/presets.toml"
        )
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"presets file {str(path)!r} is not valid TOML: {exc}") from exc
    return _merge_presets(data, str(path))


def _merge_presets(user: Mapping, source: str) -> dict:
    # Two levels of copying suffice: values (numbers, [lo, hi] lists) are replaced, never edited
    # in place; several times cheaper than copy.deepcopy on every generate_texture(presets=...).
    merged = {section: dict(table) for section, table in DEFAULT_PRESETS.items()}
    for section, table in user.items():
        if section not in merged:
            raise ValueError(
                f"unknown key {section!r} in presets ({source}); "
                f"known sections: {', '.join(merged)}"
            )
        if not isinstance(table, Mapping):
            raise ValueError(f"presets key {section!r} ({source}) must be a table, got {table!r}")
        for key, value in table.items():
            if key not in merged[section]:
                raise ValueError(
                    f"unknown key '{section}.{key}' in presets ({source}); "
                    f"known keys in [{section}]: {', '.join(merged[section])}"
                )
            merged[section][key] = _checked_value(
                f"{section}.{key}", value, merged[section][key], section in _UNIT_SECTIONS, source
            )
    if sum(merged["weights"].values()) <= 0:
        raise ValueError(f"presets [weights] ({source}) are all zero: give some kind a weight > 0")
    return merged


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_value(
    name: str, value: object, default: object, unit: bool, source: str
) -> float | list[int] | list[float]:
    where = f"presets value {name} = {value!r} ({source})"
    if isinstance(default, list):
        integer = isinstance(default[0], int)
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(_is_number(v) and (isinstance(v, int) or not integer) for v in value)
        ):
            kind = "integers" if integer else "numbers"
            raise ValueError(f"{where} must be a [lo, hi] pair of {kind}")
        lo, hi = value
        if integer and not 1 <= lo <= hi <= _MAX_COUNT:
            raise ValueError(f"{where} must satisfy 1 <= lo <= hi <= {_MAX_COUNT}")
        if name.endswith(".bias") and not 0 < lo <= hi < 1:
            raise ValueError(f"{where} is a bias curve's midpoint: 0 < lo <= hi < 1")
        if not integer and not (0 <= lo <= hi and (not unit or hi <= 1)):
            upper = " <= 1" if unit else ""
            raise ValueError(f"{where} must satisfy 0 <= lo <= hi{upper}")
        return [int(lo), int(hi)] if integer else [float(lo), float(hi)]
    if not _is_number(value) or value < 0:
        raise ValueError(f"{where} must be a number >= 0")
    if (unit or name.endswith("_probability")) and value > 1:
        raise ValueError(f"{where} must lie in [0, 1]")
    return float(value)


def resolve_presets(presets: Mapping | None) -> dict:
    """A presets mapping (None: the bundled ones) validated and merged over the defaults."""
    if presets is None:
        return bundled_presets()[0]
    return _merge_presets(presets, "presets argument")


def presets_hash(presets: Mapping) -> str:
    """16 hex digits of the canonical JSON of ``presets``: their content, never their path."""
    canonical = json.dumps(presets, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
