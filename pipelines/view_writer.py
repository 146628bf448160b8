"""The render step: a long-lived Blender that renders view shards (ViewShardWriter), and how
a rendered view becomes a VIEW_SCHEMA row.

The step knows nothing of the executor (pipelines.executor wraps it in a Ray actor or a pool
process; the GPU benchmark drives it from a plain process). What it renders comes from a shape
source: the shapes of a generated root (`RootShapes`) or real scanned objects
(pipelines.real_objects.RealObjects).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa

from pipelines.render import CorruptShapeShard, RenderConfig
from pipelines.tasks import StepResult, Task, no_op
from zeroverse.scene.cameras import make_cameras, rig_rng
from zeroverse.scene.imageio import encode_array, encode_png
from zeroverse.scene.primitives import MeshArrays
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.scene.render_timing import StageClock
from zeroverse.store.fs import Location, join, read_table
from zeroverse.store.manifest import Failure, Manifest, ShardRecord, listed_file_problem
from zeroverse.store.shape_io import shape_table_rows
from zeroverse.store.shards import VIEW_SCHEMA, file_metadata, shard_name, write_shard

LIGHT_STREAM = 2  # SeedSequence stream of per-shape light draws (recipes 0, cameras 1)


def shape_mesh(row: dict[str, Any]) -> tuple[MeshArrays, np.ndarray]:
    """A shape-shard row -> (mesh, region textures), through the checked ShapeRecord reader."""
    from zeroverse.store.shape_io import ShapeRecord

    shape = ShapeRecord.from_row(row)
    return MeshArrays(shape.vertices, shape.faces, shape.uvs, shape.regions), shape.region_textures


def shape_light(settings: RenderSettings, seed: int, shape_id: int) -> tuple[float, tuple[float, float, float]]:
    if not settings.random_light:
        return settings.light_strength, settings.light_color
    rng = np.random.default_rng(np.random.SeedSequence([seed, shape_id, LIGHT_STREAM]))
    strength = settings.light_strength * float(rng.uniform(0.6, 1.4))
    tint = np.clip(np.asarray(settings.light_color) * rng.uniform(0.85, 1.15, size=3), 0.0, 1.0)
    return strength, tuple(float(x) for x in tint)



def encode_view_row(shape_id: int, v: int, view, cameras, settings: RenderSettings, clock: StageClock | None = None) -> dict[str, Any]:
    """View `v` of one shape (render_views.ViewArrays) -> a VIEW_SCHEMA row (PNG and raw
    little-endian maps)."""
    from zeroverse.scene.cameras import unproject_depth

    clock = StageClock() if clock is None else clock
    with clock("png"):
        rgba = encode_png(view.rgba, settings.png_level, settings.png_rle)
    with clock("maps"):
        depth, normal, position = encode_array(view.depth, "<f4"), encode_array(view.normal, "<f2"), None
        if settings.positions:
            world = unproject_depth(view.depth, cameras.c2w[v], cameras.intrinsics[v], cameras.projections[v])
            position = encode_array(world, "<f4")
    return {
        "shape_id": int(shape_id),
        "view": v,
        "role": cameras.roles[v],
        "projection": cameras.projections[v],
        "width": cameras.width,
        "height": cameras.height,
        "c2w": cameras.c2w[v].astype(np.float32).reshape(-1).tolist(),
        "intrinsics": cameras.intrinsics[v].astype(np.float32).tolist(),
        "rgba": rgba,
        "depth": depth,
        "normal": normal,
        "position": position,
    }


def encode_view_rows(shape_id: int, views: list, cameras, settings: RenderSettings, clock: StageClock | None = None) -> list[dict[str, Any]]:
    """Rendered views of one shape -> VIEW_SCHEMA rows."""
    return [encode_view_row(shape_id, v, view, cameras, settings, clock) for v, view in enumerate(views)]


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """VIEW_SCHEMA rows -> a table, built column by column: the same table as
    Table.from_pylist, which cost 4-20 ms per 512² view appending megabyte cells row by row."""
    if not rows:
        return VIEW_SCHEMA.empty_table()
    return pa.Table.from_arrays([pa.array([r[f.name] for r in rows], type=f.type) for f in VIEW_SCHEMA], schema=VIEW_SCHEMA)


def _run_now(fn: Callable, *args: Any) -> Future:
    """fn(*args) in this thread, as a finished Future (the writer without an encode thread)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - handed over like a thread's exception
        future.set_exception(err)
    return future


def _convert_and_encode(shape_id: int, v: int, channels: dict[str, np.ndarray], cameras, settings: RenderSettings) -> tuple[dict[str, Any], StageClock]:
    """Raw passes -> a VIEW_SCHEMA row; in the writer's encode thread for GPU engines (numpy and
    zlib release the GIL, so this overlaps Blender rendering the next view)."""
    from blender_scripts.render_views import passes_to_view

    clock = StageClock()
    with clock("convert"):
        view = passes_to_view(channels)
    return encode_view_row(shape_id, v, view, cameras, settings, clock), clock



class ShapeSource(Protocol):
    """What a ViewShardWriter renders: meshes by shape id, their textures, and the identity and
    seed its view shards record."""

    seed: int
    identity: dict[str, Any]
    extra_metadata: dict[str, Any]

    def open(self) -> Callable[[int], np.ndarray]: ...  # in the worker: texture id -> RGB image
    def read(self, shape_ids: list[int]) -> dict[int, tuple[MeshArrays, np.ndarray]]: ...


class RootShapes:
    """The shapes of a generated root: read from its shape shards (each checked against its
    sha256 once), textures from its texture bank."""

    def __init__(self, cfg: RenderConfig, shapes: Manifest, source_root: Location | None = None):
        self.seed = shapes.seed
        self.identity = cfg.identity(shapes)
        self.extra_metadata: dict[str, Any] = {}
        self.root = cfg.root if source_root is None else source_root
        self.shapes_dir = join(self.root, "shapes")
        self.textures = shapes.config.get("textures", {})
        self.shape_files = {sid: s.file for s in shapes.shards for sid in s.shape_ids}
        self.shape_records = {s.file: s for s in shapes.shards}
        self._verified: set[str] = set()  # shape shards are immutable once listed: hash each once

    def open(self) -> Callable[[int], np.ndarray]:
        from pipelines.texture_bank import open_bank

        return open_bank(self.textures, self.root).get

    def read(self, shape_ids: list[int]) -> dict[int, tuple[MeshArrays, np.ndarray]]:
        out: dict[int, tuple[MeshArrays, np.ndarray]] = {}
        files: dict[str, list[int]] = {}
        for sid in shape_ids:
            files.setdefault(self.shape_files[sid], []).append(sid)
        for file, ids in files.items():
            self._verify(file)
            table = read_table(join(self.shapes_dir, file), filters=[("shape_id", "in", ids)])
            for row in shape_table_rows(table):
                out[int(row["shape_id"])] = shape_mesh(row)
        missing = sorted(set(shape_ids) - set(out))
        if missing:
            raise ValueError(f"shape ids {missing} are listed in the shapes manifest but missing from their shard files")
        return out

    def _verify(self, file: str) -> None:
        """Refuses a shape shard whose bytes are not those the manifest recorded: a silently
        corrupted shard would otherwise render garbage or fail shape by shape."""
        if file in self._verified:
            return
        record = self.shape_records[file]
        why = listed_file_problem(self.shapes_dir, record, verify=True)
        if why is not None:
            where = join(self.shapes_dir, file)
            raise CorruptShapeShard(f"input shape shard {where} is corrupt ({why})", file, record.shape_ids, why)
        self._verified.add(file)


class ViewShardWriter:
    """Renders view shards in one long-lived Blender: the render step."""

    def __init__(self, cfg: RenderConfig, shapes: Manifest | None = None, source_root: Location | None = None, device: int | None = None,
                 encode_thread: bool | None = None, source: ShapeSource | None = None):  # fmt: skip
        """Renders the shapes of `shapes` (a root's shapes manifest), or of `source`. `source_root`:
        the root whose shapes and texture cache are read (default cfg.root); the benchmark reads a
        prepared root and writes its views elsewhere. `device`: the physical GPU this worker
        renders on (zeroverse.scene.gpu_devices), or None. `encode_thread`: convert and encode
        beside the next render (default: for the GPU engines)."""
        # Bound before bpy is imported: Blender reads its GPU set-up when it starts.
        from blender_scripts.gpu_binding import bind_render_device

        self.binding = bind_render_device(device)
        from blender_scripts.render_views import BlenderRenderer

        self.cfg = cfg
        self.source = source if source is not None else RootShapes(cfg, shapes, source_root)
        self.seed = self.source.seed
        self.identity = self.source.identity
        texture = self.source.open()
        from pipelines.scratch import owned_scratch

        # Named after this process, so a later worker removes it if this one is killed (ray.kill).
        self.scratch = owned_scratch()
        self.renderer = BlenderRenderer(cfg.settings, texture, scratch_dir=self.scratch, device=device)
        # GPU engines: one encode thread converts and encodes view k while Blender renders view
        # k + 1. The render call is then mostly a wait on the GPU, so this takes the CPU-side work
        # of a view (conversion + PNG + maps: ~36 ms per 512² view on one core of the CPU box) off
        # the worker's critical path; rows keep their order. Cycles on the CPU keeps every core
        # busy already (a worker per core): there the extra thread only oversubscribes.
        threaded = cfg.settings.engine in ("eevee", "workbench") if encode_thread is None else encode_thread
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zv-encode") if threaded else None
        self.shapes_done = 0
        self._returned_at: float | None = None  # end of the previous render_shard: the gap to the next is the driver's

    def render_rows(self, sid: int, mesh: MeshArrays, textures: np.ndarray, clock: StageClock | None = None) -> list[dict[str, Any]]:
        """All view rows of one shape (images encoded here, in the worker)."""
        s = self.cfg.settings
        clock = StageClock() if clock is None else clock
        bound = float(np.linalg.norm(mesh.vertices, axis=1).max())
        cameras = make_cameras(self.cfg.rig, rig_rng(self.seed, sid), s.resolution, bound)
        self.renderer.set_light(*shape_light(s, self.seed, sid))
        submit = self._encoder.submit if self._encoder is not None else _run_now
        pending = []
        try:
            with contextlib.closing(self.renderer.render_passes(mesh, textures, cameras, clock)) as passes:
                for v, channels in enumerate(passes):
                    pending.append(submit(_convert_and_encode, sid, v, channels, cameras, s))
        finally:
            if self._encoder is not None:
                with clock("encode_wait"):
                    futures_wait(pending)  # nothing of this shape may still run when it is retried or the next begins
        rows = []
        for future in pending:
            row, encode_clock = future.result()
            rows.append(row)
            clock.merge(encode_clock, overlapped=self._encoder is not None)
        return rows

    def run(self, task: Task, on_units: Callable[[int], None] = no_op, before_shape: Callable[[int], None] = no_op) -> StepResult:
        return self.render_shard(task.first, task.last, list(task.shape_ids), on_units, before_shape)

    def render_shard(self, first: int, last: int, shape_ids: list[int], on_views: Callable[[int], None] = no_op,
                     before_shape: Callable[[int], None] = no_op) -> StepResult:  # fmt: skip
        """Renders `shape_ids` (all within [first, last]) into one view shard; a shape that raises
        is retried once in a reset scene, then left out and reported in the failures. `stages`
        holds the seconds spent per stage (zeroverse.scene.render_timing.STAGES) and the views
        they cover."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        clock = StageClock()
        if self._returned_at is not None:
            clock.add("driver", started - self._returned_at)  # no CPU of this process: it was waiting
        with clock("read_shapes"):
            shapes = self.source.read(shape_ids)
        rows, group_rows, done, failed = [], [], [], []
        for sid in shape_ids:
            for attempt in (1, 2):
                try:
                    before_shape(sid)
                    view_rows = self.render_rows(sid, *shapes[sid], clock)
                    break
                except Exception as err:  # noqa: BLE001 - one bad shape must not sink the shard
                    self.renderer.clear_shape()
                    if attempt == 2:
                        failed.append(Failure(sid, f"{type(err).__name__}: {err}"))
                        view_rows = None
            self.shapes_done += 1
            if view_rows is None:
                continue
            rows.extend(view_rows)
            group_rows.append(len(view_rows))
            done.append(sid)
            on_views(len(view_rows))
        with clock("parquet"):
            table = rows_to_table(rows)
            # Which device rendered the shard. The one metadata value that may differ between runs
            # of the same config (on a multi-GPU node, shard k lands on whichever GPU is free);
            # on the CPU it is constant, so CPU shards stay byte-identical across worker counts.
            device = {**self.renderer.device_report(), "binding": self.binding}
            extra = {"render": self.cfg.settings.to_dict(), "render_device": device, **self.source.extra_metadata}
            meta = file_metadata("views", self.identity, self.seed, extra)
            written = write_shard(table, join(self.cfg.views_dir, shard_name("views", first, last)), meta, row_group_rows=group_rows)
        seconds = time.perf_counter() - started
        main_cpu = sum(v for k, v in clock.cpu_seconds.items() if k not in clock.overlapped)
        clock.add("other", max(0.0, seconds - clock.serial_seconds()), max(0.0, time.thread_time() - cpu_started - main_cpu))
        record = ShardRecord.of(written, first, last, done, [f.shape_id for f in failed], round(seconds, 3))
        self._returned_at = time.perf_counter()
        return StepResult(record, tuple(failed), stages=clock.record(len(rows)), recycle=self.should_recycle())

    def should_recycle(self) -> bool:
        if self.shapes_done >= self.cfg.recycle_after:
            return True
        return _rss_gb() > self.cfg.max_worker_rss_gb

    def close(self) -> None:
        import shutil

        if self._encoder is not None:
            self._encoder.shutdown(wait=True)
        self.renderer.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _rss_gb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    return 0.0

