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
    "encode_wait": "waiting for the encode thread (a shape's last view)",
    "parquet": "table + Parquet write (zstd, atomic)",
    "other": "rest of the worker (cameras, Python)",
    "driver": "outside the worker call (driver, dispatch, idle)",
}


class StageClock:
    """Wall and CPU seconds per stage, summed over every timed block: `with clock("render"): ...`.
    Stages merged from another thread's clock with `overlapped=True` ran beside this thread's:
    their CPU adds to the cost of a view, their wall time does not add to its duration."""

    __slots__ = ("seconds", "cpu_seconds", "overlapped")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.overlapped: set[str] = set()

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

    def merge(self, other: "StageClock", overlapped: bool = False) -> None:
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds, other.cpu_seconds.get(stage, 0.0))
        if overlapped:
            self.overlapped.update(other.seconds)

    def serial_seconds(self) -> float:
        """Wall seconds of this thread's own stages (overlapped ones and the driver's gap left out)."""
        return sum(v for k, v in self.seconds.items() if k not in self.overlapped and k != "driver")

    def record(self, views: int) -> dict:
        """What a shard record carries: {"views", "seconds": {stage: s}, "cpu_seconds": {...},
        "overlapped": [stages that ran in another thread]}."""
        return {"views": views, "seconds": dict(self.seconds), "cpu_seconds": dict(self.cpu_seconds), "overlapped": sorted(self.overlapped)}


def per_view_medians(shards: list[dict], key: str = "seconds") -> dict[str, float]:
    """[StageClock.record(...), ...] (one per shard) -> {stage: median over shards of seconds per
    view} of `key` ("seconds": wall, "cpu_seconds": CPU), in STAGES order, plus "total": the
    median of the per-shard sums (for wall time, without the overlapped stages)."""
    shards = [s for s in shards if s.get("views") and key in s]
    if not shards:
        return {}
    names = [k for k in STAGES if any(k in s[key] for s in shards)]
    names += sorted({k for s in shards for k in s[key]} - set(names))
    out = {k: statistics.median(s[key].get(k, 0.0) / s["views"] for s in shards) for k in names}

    def total(s: dict) -> float:
        skip = set(s.get("overlapped", ())) if key == "seconds" else set()
        return sum(v for k, v in s[key].items() if k not in skip) / s["views"]

    out["total"] = statistics.median(total(s) for s in shards)
    return out


def overlapped_stages(shards: list[dict]) -> set[str]:
    return {k for s in shards for k in s.get("overlapped", ())}


def format_table(columns: dict[str, dict[str, float]], overlapped: set[str] = frozenset()) -> str:
    """{column title: per_view_medians(...)} -> a text table in milliseconds per view; stages in
    `overlapped` are starred (their wall time is not in the wall total)."""
    names = [k for k in STAGES if any(k in m for m in columns.values())]
    for medians in columns.values():
        names += [k for k in medians if k not in names and k != "total"]
    names.append("total")
    width = max(10, max(len(t) for t in columns) + 2)
    lines = [f"{'stage (median ms per view)':<58}" + "".join(f"{t:>{width}}" for t in columns)]
    for k in names:
        label = ("*" if k in overlapped else "") + (f"{k}: {STAGES[k]}" if k in STAGES else k)
        cells = "".join(f"{medians[k] * 1e3:>{width}.2f}" if k in medians else f"{'-':>{width}}" for medians in columns.values())
        lines.append(f"{label[:57]:<58}" + cells)
    if overlapped:
        lines.append("* in the encode thread, beside the next view's render: CPU counts, wall is not in the total")
    return "\n".join(lines)
