"""Where one rendered view's time goes: per-stage accumulators for the render worker (pure
Python; Blender's Python imports it too) and the median-per-view table the benchmark prints.

A worker sums seconds per stage over a shard (wall and CPU clocks read twice per timed block,
nothing printed per view) and returns the sums with the shard's record; the benchmark divides by
the shard's views and takes medians over shards.

CPU time is the calling thread's (time.thread_time): it says whether a stage computes or waits
(an EEVEE render call that burns as much CPU as wall time is a driver spinning on the GPU) and
stays meaningful on a busy machine where wall times stretch. Threads Blender starts itself
(Cycles' render threads) are not in it: the run's core-seconds per view count everything.
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
    """Wall and CPU seconds per stage, summed over every timed block: `with clock("render"): ...`."""

    __slots__ = ("seconds", "cpu_seconds")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float, cpu_seconds: float = 0.0) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu_seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start, time.thread_time() - cpu)

    def merge(self, other: "StageClock") -> None:
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds, other.cpu_seconds.get(stage, 0.0))

    def record(self, views: int) -> dict:
        """What a shard record carries: {"views", "seconds": {stage: s}, "cpu_seconds": {...}}."""
        return {"views": views, "seconds": dict(self.seconds), "cpu_seconds": dict(self.cpu_seconds)}


def per_view_medians(shards: list[dict], key: str = "seconds") -> dict[str, float]:
    """[StageClock.record(...), ...] (one per shard) -> {stage: median over shards of seconds per
    view} of `key` ("seconds": wall, "cpu_seconds": CPU), in STAGES order, plus "total" (the
    median of the per-shard sums)."""
    shards = [s for s in shards if s.get("views") and key in s]
    if not shards:
        return {}
    names = [k for k in STAGES if any(k in s[key] for s in shards)]
    names += sorted({k for s in shards for k in s[key]} - set(names))
    out = {k: statistics.median(s[key].get(k, 0.0) / s["views"] for s in shards) for k in names}
    out["total"] = statistics.median(sum(s[key].values()) / s["views"] for s in shards)
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
