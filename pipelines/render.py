"""`zeroverse render`: shape shards -> view shards on a Ray farm of long-lived Blender workers.

The step (`ViewShardWriter.render_shard`) knows nothing of Ray: it renders the shapes of one
view shard and writes it atomically. The orchestrator (`run_render`) keeps a pool of Ray actors,
each holding one Blender for its whole life, hands each started actor a shard at a time, and
watches them: a shard whose actor dies, or finishes no shape for `shape_timeout_s` (a hung
Blender), is retried in a fresh actor; after `max_attempts` it goes to the failure ledger (the
views manifest's `failures`) with the reason. A damaged input shape shard is refused (or, with
`skip_corrupt`, its shapes are ledgered), never retried.
Actors are recycled after `recycle_after` shapes or when their memory grows past a limit.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pipelines.faults import inject
from zeroverse.scene.cameras import RigConfig, make_cameras, rig_identity, rig_rng
from zeroverse.scene.imageio import encode_array, encode_png
from zeroverse.scene.primitives import MeshArrays
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.scene.render_timing import StageClock
from zeroverse.store.fs import Location, delete, join, make_dirs, read_metadata, read_table, remove_temporaries
from zeroverse.store.manifest import Manifest, archive_version, differs, listed_file_problem, open_manifest
from zeroverse.store.shards import VIEW_SCHEMA, file_metadata, shard_name, shard_path, write_shard

LIGHT_STREAM = 2  # SeedSequence stream of per-shape light draws (recipes 0, cameras 1)
DEFAULT_SHAPES_PER_SHARD = 8  # 32 views of 512² ≈ 20-40 MB a shape: shards of a few hundred MB


@dataclass(frozen=True)
class RenderConfig:
    root: Location  # a local path or a filesystem URI (zeroverse.store.fs.as_root)
    rig: RigConfig = field(default_factory=RigConfig)
    settings: RenderSettings = field(default_factory=RenderSettings)
    shapes_per_shard: int = DEFAULT_SHAPES_PER_SHARD
    max_attempts: int = 3  # per shard, across fresh workers
    shape_timeout_s: float = 600.0  # no shape of a shard finished for this long: the worker is hung
    startup_timeout_s: float = 900.0  # no worker could start for this long: the cluster lacks resources
    recycle_after: int = 200  # shapes per worker before it is replaced
    max_worker_rss_gb: float = 8.0
    limit: int | None = None  # render only the first `limit` shapes (previews, tests)
    skip_corrupt: bool = False  # render around a damaged input shape shard instead of refusing

    def __post_init__(self) -> None:
        if self.shapes_per_shard <= 0:
            raise ValueError(f"--shapes-per-shard {self.shapes_per_shard}: use a positive integer")
        if not self.shape_timeout_s > 0:
            raise ValueError(f"--shape-timeout {self.shape_timeout_s}: use a positive number of seconds")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: need at least 1")
        if self.settings.engine == "auto":
            raise ValueError("resolve engine 'auto' (resolve_engine) before building a RenderConfig")

    @property
    def views_dir(self) -> Location:
        return join(self.root, "views")

    @property
    def shapes_dir(self) -> Location:
        return join(self.root, "shapes")

    def identity(self, shapes: Manifest) -> dict[str, Any]:
        """What fixes the bytes of every view shard (worker threads and caches do not)."""
        settings = self.settings.to_dict()
        for key in ("threads", "texture_cache"):
            settings.pop(key)
        return {
            "rig": rig_identity(self.rig),
            "render": settings,
            "shapes_config_hash": shapes.config_hash,
            "shapes_per_shard": self.shapes_per_shard,
        }


class CorruptShapeShard(ValueError):
    """An input shape shard whose file no longer matches its manifest record."""

    def __init__(self, message: str, file: str = "", shape_ids: tuple[int, ...] = (), why: str = ""):
        super().__init__(message, file, tuple(shape_ids), why)  # all args: the error crosses processes by pickle
        self.file, self.shape_ids, self.why = file, list(shape_ids), why

    def __str__(self) -> str:
        return str(self.args[0])


def corrupt_input_message(cfg: RenderConfig, shapes: Manifest, file: str, why: str, ids: list[int]) -> str:
    n = max(s["last"] for s in shapes.shards) + 1
    shard_size = shapes.config.get("shard_size", "K")
    return (
        f"input shape shard {join(cfg.shapes_dir, file)} is corrupt ({why}); rendering it would lose shapes "
        f"{_id_list(ids)}. Rebuild it byte-identically with `zeroverse generate --root {cfg.root} --n {n} "
        f"--seed {shapes.seed} --shard-size {shard_size} --verify` (plus the --config/--textures of the first run), "
        "or pass --skip-corrupt to render the other shapes and record these in the views manifest's failures"
    )


def _id_list(ids: list[int], most: int = 12) -> str:
    return str(ids) if len(ids) <= most else f"{ids[:most]}".rstrip("]") + f", ... ({len(ids)} in all)]"


def input_problems(cfg: RenderConfig, shapes: Manifest, ids: list[int]) -> dict[str, tuple[str, list[int]]]:
    """{shape shard file: (why it is damaged, the wanted shape ids it holds)} for the shape shards
    this render needs. Cheap checks only (size against the record, a readable footer with the
    recorded row count); each worker also checks the sha256 of a shard before using it."""
    wanted = set(ids)
    out = {}
    for shard in shapes.shards:
        needed = sorted(wanted.intersection(shard["shape_ids"]))
        if not needed:
            continue
        why = listed_file_problem(cfg.shapes_dir, shard)
        if why is None:
            try:
                rows = read_metadata(shard_path(cfg.shapes_dir, shard)).num_rows
                if rows != shard["rows"]:
                    why = f"{rows} rows, the manifest recorded {shard['rows']}"
            except Exception as err:  # noqa: BLE001 - any unreadable footer is damage
                why = f"unreadable Parquet: {type(err).__name__}: {err}"
        if why is not None:
            out[shard["file"]] = (why, needed)
    return out


def resolve_engine(engine: str, gpus_available: float) -> str:
    """'auto': EEVEE where there is an NVIDIA GPU, Cycles on the CPU elsewhere."""
    if engine != "auto":
        return engine
    return "eevee" if gpus_available > 0 else "cycles"


def shape_mesh(row: dict[str, Any]) -> tuple[MeshArrays, np.ndarray]:
    mesh = MeshArrays(
        np.asarray(row["vertices"], np.float32).reshape(-1, 3),
        np.asarray(row["faces"], np.int32).reshape(-1, 3),
        np.asarray(row["uvs"], np.float32).reshape(-1, 3, 2),
        np.asarray(row["face_regions"], np.int32),
    )
    return mesh, np.asarray(row["region_textures"], np.int32)


def _shape_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Shape table -> row dicts with list columns as numpy arrays (slices of one flat array per
    column): to_pylist made a Python float of every vertex coordinate, ~30 ms per shape."""
    columns: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            offsets = column.offsets.to_numpy()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            columns[name] = [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        else:
            columns[name] = column.to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def shape_light(settings: RenderSettings, seed: int, shape_id: int) -> tuple[float, tuple[float, float, float]]:
    if not settings.random_light:
        return settings.light_strength, settings.light_color
    rng = np.random.default_rng(np.random.SeedSequence([seed, shape_id, LIGHT_STREAM]))
    strength = settings.light_strength * float(rng.uniform(0.6, 1.4))
    tint = np.clip(np.asarray(settings.light_color) * rng.uniform(0.85, 1.15, size=3), 0.0, 1.0)
    return strength, tuple(float(x) for x in tint)


def view_shard_plan(shape_ids: list[int], shapes_per_shard: int) -> list[tuple[int, int, list[int]]]:
    """View shard k holds the existing shapes with ids in [k*S, (k+1)*S): a function of the shape
    ids and S only, never of the worker count."""
    groups: dict[int, list[int]] = {}
    for sid in sorted(shape_ids):
        groups.setdefault(sid // shapes_per_shard, []).append(sid)
    return [(k * shapes_per_shard, (k + 1) * shapes_per_shard - 1, ids) for k, ids in sorted(groups.items())]


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


class ViewShardWriter:
    """Renders view shards in one long-lived Blender. Ray-free: the farm wraps it in an actor,
    the GPU benchmark drives it from a plain process."""

    def __init__(self, cfg: RenderConfig, shapes: Manifest, source_root: Location | None = None, device: int | None = None,
                 encode_thread: bool | None = None):  # fmt: skip
        """`source_root`: the root whose shapes and texture cache are read (default cfg.root); the
        benchmark reads a prepared root and writes its views elsewhere. `device`: the physical
        GPU this worker renders on (zeroverse.scene.gpu_devices), or None. `encode_thread`: convert
        and encode beside the next render (default: for the GPU engines)."""
        # Bound before bpy is imported: Blender reads its GPU set-up when it starts.
        from blender_scripts.gpu_binding import bind_render_device

        self.binding = bind_render_device(device)
        from blender_scripts.render_views import BlenderRenderer

        self.cfg = cfg
        self.seed = shapes.seed
        self.identity = cfg.identity(shapes)
        source = cfg.root if source_root is None else source_root
        self.shapes_dir = join(source, "shapes")
        self.shape_files = {sid: s["file"] for s in shapes.shards for sid in s["shape_ids"]}
        self.shape_records = {s["file"]: s for s in shapes.shards}
        self._verified: set[str] = set()  # shape shards are immutable once listed: hash each once
        from pipelines.texture_bank import open_bank

        bank = open_bank(shapes.config.get("textures", {}), source)
        from pipelines.scratch import owned_scratch

        # Named after this process, so a later worker removes it if this one is killed (ray.kill).
        self.scratch = owned_scratch()
        self.renderer = BlenderRenderer(cfg.settings, bank.get, scratch_dir=self.scratch, device=device)
        # GPU engines: one encode thread converts and encodes view k while Blender renders view
        # k + 1. The render call is then mostly a wait on the GPU, so this takes the CPU-side work
        # of a view (conversion + PNG + maps: ~36 ms per 512² view on one core of the CPU box) off
        # the worker's critical path; rows keep their order. Cycles on the CPU keeps every core
        # busy already (a worker per core): there the extra thread only oversubscribes.
        threaded = cfg.settings.engine in ("eevee", "workbench") if encode_thread is None else encode_thread
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zv-encode") if threaded else None
        self.shapes_done = 0
        self._returned_at: float | None = None  # end of the previous render_shard: the gap to the next is the driver's

    def _read_shapes(self, shape_ids: list[int]) -> dict[int, dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        files: dict[str, list[int]] = {}
        for sid in shape_ids:
            files.setdefault(self.shape_files[sid], []).append(sid)
        for file, ids in files.items():
            self._verify(file)
            table = read_table(join(self.shapes_dir, file), filters=[("shape_id", "in", ids)])
            for row in _shape_rows(table):
                rows[row["shape_id"]] = row
        missing = sorted(set(shape_ids) - set(rows))
        if missing:
            raise ValueError(f"shape ids {missing} are listed in the shapes manifest but missing from their shard files")
        return rows

    def _verify(self, file: str) -> None:
        """Refuses a shape shard whose bytes are not those the manifest recorded: a silently
        corrupted shard would otherwise render garbage or fail shape by shape."""
        if file in self._verified:
            return
        record = self.shape_records[file]
        why = listed_file_problem(self.shapes_dir, record, verify=True)
        if why is not None:
            where = join(self.shapes_dir, file)
            raise CorruptShapeShard(f"input shape shard {where} is corrupt ({why})", file, record["shape_ids"], why)
        self._verified.add(file)

    def render_rows(self, row: dict[str, Any], clock: StageClock | None = None) -> list[dict[str, Any]]:
        """All view rows of one shape (images encoded here, in the worker)."""
        s, sid = self.cfg.settings, int(row["shape_id"])
        clock = StageClock() if clock is None else clock
        inject("render", sid)
        mesh, textures = shape_mesh(row)
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

    def render_shard(self, first: int, last: int, shape_ids: list[int], on_views: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Renders `shape_ids` (all within [first, last]) into one view shard; a shape that raises
        is retried once in a reset scene, then left out and reported in `failed`. The record's
        `stages` holds the seconds spent per stage (zeroverse.scene.render_timing.STAGES) and the
        views they cover; drivers take it out before the record reaches the manifest."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        clock = StageClock()
        if self._returned_at is not None:
            clock.add("driver", started - self._returned_at)  # no CPU of this process: it was waiting
        with clock("read_shapes"):
            shapes = self._read_shapes(shape_ids)
        rows, group_rows, done, failed = [], [], [], []
        for sid in shape_ids:
            for attempt in (1, 2):
                try:
                    view_rows = self.render_rows(shapes[sid], clock)
                    break
                except Exception as err:  # noqa: BLE001 - one bad shape must not sink the shard
                    self.renderer.clear_shape()
                    if attempt == 2:
                        failed.append({"shape_id": sid, "reason": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=5)})
                        view_rows = None
            self.shapes_done += 1
            if view_rows is None:
                continue
            rows.extend(view_rows)
            group_rows.append(len(view_rows))
            done.append(sid)
            if on_views is not None:
                on_views(len(view_rows))
        with clock("parquet"):
            table = rows_to_table(rows)
            # Which device rendered the shard. The one metadata value that may differ between runs
            # of the same config (on a multi-GPU node, shard k lands on whichever GPU is free);
            # on the CPU it is constant, so CPU shards stay byte-identical across worker counts.
            device = {**self.renderer.device_report(), "binding": self.binding}
            meta = file_metadata("views", self.identity, self.seed, {"render": self.cfg.settings.to_dict(), "render_device": device})
            record = write_shard(table, join(self.cfg.views_dir, shard_name("views", first, last)), meta, row_group_rows=group_rows)
        seconds = time.perf_counter() - started
        main_cpu = sum(v for k, v in clock.cpu_seconds.items() if k not in clock.overlapped)
        clock.add("other", max(0.0, seconds - clock.serial_seconds()), max(0.0, time.thread_time() - cpu_started - main_cpu))
        record.update(
            first=first,
            last=last,
            rows=len(rows),
            shape_ids=done,
            failed=failed,
            seconds=round(seconds, 3),
            recycle=self.should_recycle(),
            stages=clock.record(len(rows)),
        )
        self._returned_at = time.perf_counter()
        return record

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


@dataclass
class RenderResult:
    written: list[str] = field(default_factory=list)
    skipped_shapes: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    shapes: int = 0
    views: int = 0
    seconds: float = 0.0
    retries: int = 0
    workers_started: int = 0
    archived: Path | None = None  # where new_version put the previous views
    stages: list[dict[str, Any]] = field(default_factory=list)  # per shard: render_timing.StageClock.record()
    steady_views_per_s: float | None = None  # local pool: once every process finished a shard (start-up left out)


def pending_shards(views: Manifest, plan: list[tuple[int, int, list[int]]]) -> tuple[list[tuple[int, int, list[int]]], int]:
    todo, done = [], 0
    for first, last, ids in plan:
        shard = views.shard_for(first)
        if shard is not None and shard["shape_ids"] == ids and not shard.get("failed"):
            done += len(ids)
            continue
        todo.append((first, last, ids))
    return todo, done


def run_render(
    cfg: RenderConfig,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    progress: bool = True,
    fault: Callable[[Any, int], None] | None = None,
    new_version: bool = False,
) -> RenderResult:
    """Renders every missing view shard of `cfg.root`. With `new_version`, views made with another
    config are moved to ROOT/versions/<k>/views instead of refused. `fault(actor, dispatch_index)`
    is a test hook called right after a shard is dispatched (e.g. to kill the worker)."""
    import ray
    from tqdm import tqdm

    from pipelines.ray_runtime import Heartbeats, init_ray, new_progress_counter, worker_options

    started = time.perf_counter()
    shapes = Manifest.load(cfg.shapes_dir)
    if shapes is None or not shapes.shards:
        raise ValueError(f"{cfg.shapes_dir} has no shapes manifest; run `zeroverse generate --root {cfg.root}` first")
    views_dir = cfg.views_dir
    archived = None
    if new_version and differs(views_dir, shapes.seed, cfg.identity(shapes)):
        archived = archive_version(cfg.root, ("views",))
    views = open_manifest(views_dir, "views", shapes.seed, cfg.identity(shapes))
    ids = shapes.shape_ids()
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
    plan = view_shard_plan(ids, cfg.shapes_per_shard)
    # Inputs of the shards still to render are checked before anything starts: a damaged shape
    # shard is refused, or with --skip-corrupt its shapes are ledgered and rendered around.
    damaged = input_problems(cfg, shapes, [sid for _, _, sids in pending_shards(views, plan)[0] for sid in sids])
    if damaged and not cfg.skip_corrupt:
        file, (why, bad) = sorted(damaged.items())[0]
        raise ValueError(corrupt_input_message(cfg, shapes, file, why, bad))
    make_dirs(views_dir)
    remove_temporaries(views_dir)
    skipped_failures = []
    if damaged:
        skipped = set()
        for file, (why, bad) in sorted(damaged.items()):
            skipped_failures += _ledger(views, bad, f"skipped: input shape shard {file} is corrupt ({why})")
            skipped.update(bad)
        views.save(views_dir)
        plan = [(a, b, kept) for a, b, sids in plan if (kept := [s for s in sids if s not in skipped])]
    todo, done = pending_shards(views, plan)
    result = RenderResult(skipped_shapes=done, failures=skipped_failures, archived=archived)
    if not todo:
        result.shapes = len(views.shape_ids())
        result.failures = list(views.failures)
        result.views = sum(sh["rows"] for sh in views.shards)
        return result

    # A local Ray needs `threads` CPUs per worker: with only `workers` CPUs, workers beyond
    # workers // threads would wait for CPUs that never free up.
    init_ray(address, workers * max(1, cfg.settings.threads) if workers else None)
    n_workers = max(1, min(workers or int(ray.cluster_resources().get("CPU", 1)) // max(1, cfg.settings.threads), len(todo)))
    counter = new_progress_counter()
    actor_cls = ray.remote(_RenderActor).options(
        num_cpus=cfg.settings.threads, num_gpus=gpus_per_worker, max_restarts=0, max_concurrency=1, **worker_options()
    )

    # Workers are handed shards only once started (Blender up): an actor waiting for resources
    # (a lost node, more workers than the cluster holds) or starting slowly is never charged
    # with a timeout, and the shard goes to whichever worker is ready first.
    starting: dict[Any, Any] = {}  # ready() ref -> actor

    def new_actor() -> None:
        result.workers_started += 1
        actor = actor_cls.remote(cfg, shapes, counter)
        starting[actor.ready.remote()] = actor

    for _ in range(n_workers):
        new_actor()
    idle: deque = deque()
    queue = deque((first, last, sids, 1) for first, last, sids in todo)
    running: dict[Any, tuple[Any, tuple[int, int, list[int], int]]] = {}
    beats = Heartbeats()
    total_views = sum(len(s) for _, _, s, _ in queue) * _views_per_shape(cfg)
    bar = tqdm(total=total_views, unit="view", desc=f"render ({cfg.settings.engine})", disable=not progress, smoothing=0.1)
    dispatched, start_failures, no_worker_since = 0, 0, time.monotonic()

    def retry_or_ledger(task, reason: str) -> None:
        first, last, sids, attempt = task
        if attempt < cfg.max_attempts:
            result.retries += 1
            queue.append((first, last, sids, attempt + 1))
        else:
            result.failures.extend(_ledger(views, sids, f"{reason} (after {attempt} attempts)"))
            views.save(views_dir)

    def corrupt_input(task, err: CorruptShapeShard) -> None:
        """Found by a worker's sha256 check: refuse, or (--skip-corrupt) drop its shapes."""
        first, last, sids, attempt = task
        bad = sorted(set(sids) & set(err.shape_ids))
        if not cfg.skip_corrupt:
            raise ValueError(corrupt_input_message(cfg, shapes, err.file, err.why, bad))
        result.failures.extend(_ledger(views, bad, f"skipped: {err}"))
        views.save(views_dir)
        kept = [s for s in sids if s not in set(bad)]
        if kept:
            queue.append((first, last, kept, attempt))

    def replace(actor) -> None:
        with contextlib.suppress(Exception):
            ray.kill(actor)
        new_actor()

    try:
        while queue or running:
            while queue and idle:
                actor = idle.popleft()
                task = queue.popleft()
                ref = actor.render_shard.remote(task[0], task[1], task[2], task[3])
                running[ref] = (actor, task)
                beats.start((task[0], task[3]), time.monotonic())
                if fault is not None:
                    fault(actor, dispatched)
                dispatched += 1
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=0.5)
            beats.poll(counter, bar, total_views)
            now = time.monotonic()
            for ref in [r for r in ready if r in starting]:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                except Exception as err:  # noqa: BLE001 - Blender or the texture bank failed to start
                    start_failures += 1
                    if start_failures > 2 * n_workers + 2:
                        raise ValueError(f"render workers keep failing to start: {_first_line(err)}") from err
                    replace(actor)
                    continue
                start_failures = 0
                idle.append(actor)
            if idle or running:
                no_worker_since = now
            elif now - no_worker_since > cfg.startup_timeout_s:
                resources = ray.cluster_resources()
                raise ValueError(
                    f"no render worker started in {cfg.startup_timeout_s:g} s: each needs {cfg.settings.threads} CPU(s) and "
                    f"{gpus_per_worker:g} GPU(s), the cluster has {resources.get('CPU', 0):g} CPU(s) and "
                    f"{resources.get('GPU', 0):g} GPU(s). Lower --threads / --gpus-per-worker or add nodes"
                )
            for ref in list(running):
                actor, task = running[ref]
                key = (task[0], task[3])
                if ref in ready:
                    del running[ref]
                    beats.forget(key)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayActorError as err:
                        replace(actor)
                        retry_or_ledger(task, f"worker died: {_first_line(err)}")
                        continue
                    except CorruptShapeShard as err:  # the input, not the worker: no retry
                        idle.append(actor)
                        corrupt_input(task, getattr(err, "cause", None) or err)
                        continue
                    except Exception as err:  # noqa: BLE001 - the step raised: retry in a fresh worker
                        replace(actor)
                        retry_or_ledger(task, _first_line(err))
                        continue
                    if record.pop("recycle"):
                        replace(actor)
                    else:
                        idle.append(actor)
                    result.stages.append(record.pop("stages"))
                    _commit(views, views_dir, record)
                    result.written.append(record["file"])
                    result.failures.extend({"shape_id": f["shape_id"], "reason": f["reason"]} for f in record["failed_details"])
                elif beats.silent_for(key, now) > cfg.shape_timeout_s:
                    del running[ref]
                    beats.forget(key)
                    replace(actor)  # a hung Blender cannot be interrupted from inside
                    retry_or_ledger(task, f"timed out: no shape finished in {cfg.shape_timeout_s:g} s")
        bar.n = bar.total
        bar.refresh()
    except BaseException:  # Ctrl-C, a refused input, a manifest that cannot be saved: stop the workers
        for actor, _ in running.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        with contextlib.suppress(Exception):  # then sweep what they were writing (best effort; reruns sweep too)
            ray.wait(list(running), num_returns=len(running), timeout=5)
            remove_temporaries(views_dir)
        raise
    finally:
        bar.close()
        with contextlib.suppress(Exception):  # idle workers remove their scratch before they are killed
            if idle:
                ray.wait([actor.close.remote() for actor in idle], num_returns=len(idle), timeout=10)
        for actor in list(idle) + list(starting.values()):
            with contextlib.suppress(Exception):
                ray.kill(actor)
        from pipelines.scratch import sweep

        sweep()  # scratch of workers killed on this node earlier in the run (others: swept at the next worker start)
    result.shapes = len(views.shape_ids())
    result.views = sum(s["rows"] for s in views.shards)
    result.seconds = time.perf_counter() - started
    return result


def _views_per_shape(cfg: RenderConfig) -> int:
    from zeroverse.scene.cameras import EVAL_INPUT_AZIMUTHS, EVAL_TARGET_ELEVATIONS

    n = len(EVAL_INPUT_AZIMUTHS) + cfg.rig.eval_targets_per_ring * len(EVAL_TARGET_ELEVATIONS) if cfg.rig.kind == "eval" else cfg.rig.num_views
    return n + (1 if cfg.rig.bev else 0)


def _first_line(err: BaseException) -> str:
    """A one-line reason; a RayTaskError's own text is a banner, its cause is the real error."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = f"{type(err).__name__}: {str(err).strip()}"
    return text.splitlines()[0] if text else type(err).__name__


def _ledger(manifest: Manifest, shape_ids: list[int], reason: str) -> list[dict[str, Any]]:
    """Puts shapes in the manifest's failures (replacing older entries for them); the caller saves."""
    ids = set(shape_ids)
    entries = [{"shape_id": s, "reason": reason} for s in sorted(ids)]
    manifest.failures = [f for f in manifest.failures if f["shape_id"] not in ids] + entries
    return entries


def _commit(manifest: Manifest, directory: Location, record: dict[str, Any]) -> None:
    record.pop("stages", None)  # timings vary run to run: the manifest must not
    failed = record.pop("failed")
    record["failed"] = [f["shape_id"] for f in failed]
    record["failed_details"] = failed
    # Only the shapes this shard was given: others of its range may be ledgered for another
    # reason (their input shard was skipped as corrupt) and stay so.
    ids = set(record["shape_ids"]) | set(record["failed"])
    manifest.failures = [f for f in manifest.failures if f["shape_id"] not in ids]
    manifest.failures.extend({"shape_id": f["shape_id"], "reason": f["reason"]} for f in failed)
    stored = {k: v for k, v in record.items() if k != "failed_details"}
    old = manifest.replace_shard(stored)
    manifest.save(directory)
    if old is not None and old["file"] != stored["file"]:
        delete(shard_path(directory, old))  # a shard name only: never a path a hand-edited manifest made up


class _RenderActor:
    """A Ray actor around ViewShardWriter: Blender starts once in __init__, work per call."""

    def __init__(self, cfg: RenderConfig, shapes: Manifest, counter: Any):
        import ray

        from zeroverse.scene.gpu_devices import ray_worker_device

        # Ray names the GPUs it gave this actor as the node does (several actors share one with a
        # fractional --gpus-per-worker); none with --gpus-per-worker 0.
        self.writer = ViewShardWriter(cfg, shapes, device=ray_worker_device(ray.get_gpu_ids()))
        self.counter = counter

    def render_shard(self, first: int, last: int, shape_ids: list[int], attempt: int = 1) -> dict[str, Any]:
        from pipelines.ray_runtime import throttled

        key = (first, attempt)
        self.counter.begin.remote(key)
        report = throttled(lambda k: self.counter.add.remote(k, key))
        try:
            return self.writer.render_shard(first, last, shape_ids, on_views=report)
        finally:
            report.flush()
            self.counter.end.remote(key)

    def ready(self) -> bool:
        """Answers once __init__ (Blender, the texture bank) is done."""
        return True

    def close(self) -> None:
        """Removes this worker's scratch; the driver calls it before ray.kill of an idle worker."""
        self.writer.close()

    def pid(self) -> int:
        return os.getpid()


def estimated_views(cfg: RenderConfig, shapes: int) -> int:
    return shapes * _views_per_shape(cfg)

