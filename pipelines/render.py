"""`zeroverse render`: shape shards -> view shards on the farm executor.

The step (pipelines.view_writer.ViewShardWriter) knows nothing of the executor: it renders the
shapes of one view shard in a long-lived Blender and writes it atomically. `run_render` plans the
view shards still missing, checks their inputs, and hands them to the executor
(pipelines.executor), which keeps the Blender workers (Ray actors or local processes), retries a
shard whose worker dies or hangs, and after `max_attempts` puts it in the failure ledger (the
views manifest's `failures`). A damaged input shape shard is refused (or, with `skip_corrupt`,
its shapes are ledgered), never retried. Workers are recycled after `recycle_after` shapes or
when their memory grows past a limit.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.tasks import Task
from zeroverse.scene.cameras import RigConfig, rig_identity
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.store.fs import Location, join, make_dirs, read_metadata, remove_temporaries
from zeroverse.store.manifest import Failure, Manifest, archive_version, differs, listed_file_problem, open_manifest, views_per_shape as rig_views_per_shape
from zeroverse.store.shards import shard_path

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
    n = max(s.last for s in shapes.shards) + 1
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
        needed = sorted(wanted.intersection(shard.shape_ids))
        if not needed:
            continue
        why = listed_file_problem(cfg.shapes_dir, shard)
        if why is None:
            try:
                rows = read_metadata(shard_path(cfg.shapes_dir, shard)).num_rows
                if rows != shard.rows:
                    why = f"{rows} rows, the manifest recorded {shard.rows}"
            except Exception as err:  # noqa: BLE001 - any unreadable footer is damage
                why = f"unreadable Parquet: {type(err).__name__}: {err}"
        if why is not None:
            out[shard.file] = (why, needed)
    return out


def resolve_engine(engine: str, gpus_available: float) -> str:
    """'auto': EEVEE where there is an NVIDIA GPU, Cycles on the CPU elsewhere."""
    if engine != "auto":
        return engine
    return "eevee" if gpus_available > 0 else "cycles"


def local_gpu_count() -> int:
    """NVIDIA GPUs this process may use: $CUDA_VISIBLE_DEVICES where set, else the driver's list."""
    import os

    from zeroverse.scene.gpu_devices import parse_visible_devices

    visible = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return len(visible)
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def view_shard_plan(shape_ids: list[int], shapes_per_shard: int) -> list[Task]:
    """View shard k holds the existing shapes with ids in [k*S, (k+1)*S): a function of the shape
    ids and S only, never of the worker count."""
    groups: dict[int, list[int]] = {}
    for sid in sorted(shape_ids):
        groups.setdefault(sid // shapes_per_shard, []).append(sid)
    return [Task(k * shapes_per_shard, (k + 1) * shapes_per_shard - 1, tuple(ids)) for k, ids in sorted(groups.items())]


@dataclass
class RenderResult:
    written: list[str] = field(default_factory=list)
    skipped_shapes: int = 0
    failures: list[Failure] = field(default_factory=list)
    shapes: int = 0
    views: int = 0
    seconds: float = 0.0
    retries: int = 0
    workers_started: int = 0
    archived: Path | None = None  # where new_version put the previous views
    stages: list[dict[str, Any]] = field(default_factory=list)  # per shard: render_timing.StageClock.record()
    steady_views_per_s: float | None = None  # once every worker finished a shard (start-up left out)


def pending_shards(views: Manifest, plan: list[Task]) -> tuple[list[Task], int]:
    """The planned shards not yet listed complete, and how many shapes are."""
    todo, done = [], 0
    for task in plan:
        shard = views.shard_for(task.first)
        if shard is not None and shard.shape_ids == task.shape_ids and not shard.failed:
            done += len(task.shape_ids)
            continue
        todo.append(task)
    return todo, done


def run_render(
    cfg: RenderConfig,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    progress: bool = True,
    fault: Callable[[Any, int], None] | None = None,
    new_version: bool = False,
    backend: str = "ray",
    gpus: list[int] | None = None,
) -> RenderResult:
    """Renders every missing view shard of `cfg.root` on the farm executor (`backend` 'ray': a
    local Ray or the cluster at `address`, `gpus_per_worker` each; 'processes': this machine,
    spread round-robin over the devices `gpus`). With `new_version`, views made with another
    config are moved to ROOT/versions/<k>/views instead of refused. `fault(worker, k)` is a test
    hook called right after the k-th dispatch (e.g. to kill the worker)."""
    from pipelines.executor import Job, execute, make_backend, task_ids
    from pipelines.scratch import sweep
    from pipelines.view_writer import ViewShardWriter

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
    damaged = input_problems(cfg, shapes, task_ids(pending_shards(views, plan)[0]))
    if damaged and not cfg.skip_corrupt:
        file, (why, bad) = sorted(damaged.items())[0]
        raise ValueError(corrupt_input_message(cfg, shapes, file, why, bad))
    make_dirs(views_dir)
    remove_temporaries(views_dir)
    skipped_failures: list[Failure] = []
    if damaged:
        skipped: set[int] = set()
        for file, (why, bad) in sorted(damaged.items()):
            entries = [Failure(s, f"skipped: input shape shard {file} is corrupt ({why})") for s in bad]
            views.set_failures(bad, entries)
            skipped_failures += entries
            skipped.update(bad)
        views.save(views_dir)
        plan = [Task(t.first, t.last, kept) for t in plan if (kept := tuple(s for s in t.shape_ids if s not in skipped))]
    todo, done = pending_shards(views, plan)
    result = RenderResult(skipped_shapes=done, failures=skipped_failures, archived=archived)
    if not todo:
        result.shapes = len(views.shape_ids())
        result.failures = list(views.failures)
        result.views = sum(sh.rows for sh in views.shards)
        return result

    def corrupt_input(task: Task, err: CorruptShapeShard) -> tuple[list[Failure], Task | None]:
        """Found by a worker's sha256 check: refuse, or (--skip-corrupt) drop its shapes."""
        bad = sorted(set(task.shape_ids) & set(err.shape_ids))
        if not cfg.skip_corrupt:
            raise ValueError(corrupt_input_message(cfg, shapes, err.file, err.why, bad))
        entries = [Failure(s, f"skipped: {err}") for s in bad]
        views.set_failures(bad, entries)
        views.save(views_dir)
        kept = tuple(s for s in task.shape_ids if s not in set(bad))
        return entries, (Task(task.first, task.last, kept, task.attempt) if kept else None)

    make_step = functools.partial(ViewShardWriter, cfg, shapes)
    runner = make_backend(backend, "render", make_step, workers, address, max(1, cfg.settings.threads), gpus_per_worker, gpus)
    job = Job(
        stage="render", directory=views_dir, manifest=views, tasks=todo, make_step=make_step, max_attempts=cfg.max_attempts,
        shape_timeout_s=cfg.shape_timeout_s, startup_timeout_s=cfg.startup_timeout_s, units_per_shape=views_per_shape(cfg.rig),
        unit="view", input_error=(CorruptShapeShard,), on_input_error=corrupt_input, cleanup=sweep,
    )  # fmt: skip
    # sweep: scratch of workers killed on this node earlier in the run (others: swept at the next worker start)
    outcome = execute(job, runner, progress, f"render ({cfg.settings.engine})", fault)
    result.written, result.retries, result.stages = outcome.written, outcome.retries, outcome.stages
    result.failures += outcome.failures
    result.workers_started, result.steady_views_per_s = outcome.workers_started, outcome.steady_units_per_s
    result.shapes = len(views.shape_ids())
    result.views = sum(s.rows for s in views.shards)
    result.seconds = time.perf_counter() - started
    return result


def views_per_shape(rig: RigConfig) -> int:
    """Views each shape gets from `rig` (as a views manifest's config records it)."""
    return rig_views_per_shape({"rig": rig_identity(rig)})
