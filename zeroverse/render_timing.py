"""Where one rendered view's time goes: per-stage accumulators for the render worker (pure
Python; Blender's Python imports it too) and the median-per-view table the benchmark prints.

A worker sums seconds per stage over a shard (two perf_counter reads per timed block, nothing
printed per view) and returns the sums with the shard's record; the benchmark divides by the
shard's views and takes medians over shards.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Iterator

# Ordered as a view flows through the worker; `driver` is measured outside the worker.
STAGES: dict[str, str] = {
    "read_shapes": "read + verify shape shards",
    "scene": "scene build: clear, mesh, shading, camera, light",
    "materials": "materials: textures + Blender images/materials (cache misses)",
    "render": "render call (bpy.ops.render.render)",
    "pass_write": "pass write by Blender (EXR to scratch)",
    "pass_read": "pass read-back (EXR parse)",
    "convert": "pass conversion: sRGB, alpha/depth edges, normals",
    "png": "RGBA PNG encode",
    "maps": "depth / normal (/ position) encode",
    "parquet": "table + Parquet write (zstd, atomic)",
    "other": "rest of the worker (cameras, Python)",
    "driver": "outside the worker call (driver, dispatch, idle)",
}


class StageClock:
    """Seconds per stage, summed over every timed block: `with clock("render"): ...`."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)


def per_view_medians(shards: list[dict]) -> dict[str, float]:
    """[{"views": n, "seconds": {stage: s}}, ...] (one per shard) -> {stage: median over shards of
    seconds per view}, in STAGES order, plus "total" (the median of the per-shard sums)."""
    shards = [s for s in shards if s.get("views")]
    if not shards:
        return {}
    names = [k for k in STAGES if any(k in s["seconds"] for s in shards)]
    names += sorted({k for s in shards for k in s["seconds"]} - set(names))
    out = {k: statistics.median(s["seconds"].get(k, 0.0) / s["views"] for s in shards) for k in names}
    out["total"] = statistics.median(sum(s["seconds"].values()) / s["views"] for s in shards)
    return out


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """{column title: per_view_medians(...)} -> a text table in milliseconds per view."""
    names = []
    for medians in columns.values():
        names += [k for k in medians if k not in names and k != "total"]
    names.append("total")
    width = max(len(t) for t in columns) + 2
    lines = [f"{'stage (median ms per view)':<58}" + "".join(f"{t:>{max(width, 10)}}" for t in columns)]
    for k in names:
        label = f"{k}: {STAGES[k]}" if k in STAGES else k
        cells = "".join(f"{medians[k] * 1e3:>{max(width, 10)}.2f}" if k in medians else f"{'-':>{max(width, 10)}}" for medians in columns.values())
        lines.append(f"{label[:57]:<58}" + cells)
    return "\n".join(lines)
