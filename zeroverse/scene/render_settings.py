"""Render settings shared by the farm and the Blender workers (pure Python)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENGINES = ("auto", "cycles", "eevee", "workbench")
# Samples per pixel of a render that names none, for `render`, `render --real` and evaluation
# renders alike (so their images match): Cycles denoises 8, EEVEE needs 16 for its anti-aliasing.
DEFAULT_SAMPLES = {"cycles": 8, "eevee": 16, "workbench": 8}


def default_samples(engine: str) -> int:
    """Samples per pixel of a render that names none (`engine` resolved: not 'auto')."""
    return DEFAULT_SAMPLES.get(engine, DEFAULT_SAMPLES["cycles"])


@dataclass(frozen=True)
class RenderSettings:
    engine: str = "cycles"  # resolved: cycles | eevee | workbench ("auto" is resolved by the farm)
    resolution: int = 512
    samples: int = 16
    denoise: bool = True  # OpenImageDenoise (Cycles); OptiX's denoiser failed on H100/H200
    # LRM-Zero lights objects with a uniform white environment.
    light_strength: float = 1.0
    light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    random_light: bool = False  # per shape: strength U(0.6, 1.4) x colour jitter (seeded)
    max_bounces: int = 4
    positions: bool = False  # also store world positions (derivable from depth + camera)
    png_level: int = 4  # zlib level, when png_rle is off
    # zlib's run-length strategy: half the encode time of level 4 on renders (13 vs 32 ms per 512²
    # view on one core) for 5% more PNG bytes (~2% of a view shard), pixels identical.
    png_rle: bool = True
    threads: int = 1  # CPU threads of one Blender worker (Cycles)
    texture_cache: int = 512  # textures a worker keeps loaded between shapes
    # EEVEE settings set on top of Blender's defaults, as (name, value) pairs: a property of
    # bpy.types.SceneEEVEE ("use_fast_gi", False) or, prefixed "world.", of the world
    # ("world.probe_resolution", "128"). How render-cost knobs are measured side by side
    # (bench/eevee_ablation.py) and a faster look is chosen without new code.
    eevee_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"--engine {self.engine!r} is unknown; choose one of {', '.join(ENGINES)}")
        if not (16 <= self.resolution <= 4096):
            raise ValueError(f"--resolution {self.resolution}: use 16..4096 pixels")
        if self.samples < 1:
            raise ValueError(f"--samples {self.samples}: need at least 1 sample per pixel")
        if self.light_strength < 0:
            raise ValueError(f"light_strength={self.light_strength} must be >= 0")
        for option in self.eevee_options:
            if not (isinstance(option, tuple) and len(option) == 2 and isinstance(option[0], str)
                    and option[0].removeprefix("world.").isidentifier()):
                raise ValueError(f"eevee_options entry {option!r} must be a (name, value) pair, e.g. ('use_fast_gi', False)")

    def to_dict(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        out["eevee_options"] = [list(pair) for pair in self.eevee_options]
        if not self.eevee_options:  # roots rendered before the field existed keep their identity
            del out["eevee_options"]
        return out
