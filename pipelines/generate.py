"""`zeroverse generate`: shape shards from (seed, shape_id), on the farm executor.

The step (`make_shape_shard`) knows nothing of the executor: it turns a range of shape ids into
one atomically written Parquet shard. `run_generate` decides which ranges are missing from the
manifest and hands them to the executor (pipelines.executor), which runs them on Ray or a process
pool and records each finished shard in the manifest as it lands, so an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from pipelines.tasks import StepResult, Task, no_op
from zeroverse.scene.recipe import RECIPE_VERSION, RecipeConfig, sample_recipe
from zeroverse.store.fs import Location, is_dir, join, make_dirs, remove_temporaries
from zeroverse.store.manifest import Failure, Manifest, ShardRecord, archive_version, differs, listed_file_problem, open_manifest
from zeroverse.store.shards import SHAPE_SCHEMA, file_metadata, shard_name, shard_ranges, write_shard

DEFAULT_SHARD_SIZE = 256  # ~0.5 MB per default shape: shards of ~100-200 MB


@dataclass(frozen=True)
class GenerateConfig:
    root: Location  # a local path or a filesystem URI (zeroverse.store.fs.as_root)
    n: int
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    textures: dict[str, Any] = field(default_factory=dict)  # TextureBank.describe() of the root's bank
    max_shape_attempts: int = 2  # a shape that raises is rebuilt in a fresh scene this often
    shape_timeout_s: float = 300.0  # no shape finished for this long: the worker is hung
    max_attempts: int = 3  # per shard, across hung (killed) workers

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"--n {self.n}: the number of shapes must be a positive integer")
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: use a non-negative integer")
        if self.shard_size <= 0:
            raise ValueError(f"--shard-size {self.shard_size}: use a positive integer")
        if not self.shape_timeout_s > 0:
            raise ValueError(f"--shape-timeout {self.shape_timeout_s}: use a positive number of seconds")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: need at least 1")

    @property
    def shapes_dir(self) -> Location:
        return join(self.root, "shapes")

    def identity(self) -> dict[str, Any]:
        """What fixes the bytes of every shard: a root made with another identity is refused."""
        return {
            "recipe_version": RECIPE_VERSION,
            "recipe": self.recipe.to_dict(),
            "shard_size": self.shard_size,
            "textures": self.textures,
        }


@dataclass
class GenerateResult:
    written: list[str]
    skipped: int
    failures: list[Failure]
    shapes: int
    seconds: float
    retries: int = 0  # shards resubmitted after their worker hung
    archived: Path | None = None  # where --new-version put the previous version


def shape_row(seed: int, shape_id: int, recipe_cfg: RecipeConfig) -> dict[str, Any]:
    """One shape shard row. Runs inside a process that can import bpy."""
    from blender_scripts.build_shape import build_shape

    recipe = sample_recipe(recipe_cfg, seed, shape_id)
    built = build_shape(recipe)
    mesh = built.mesh
    return {
        "shape_id": shape_id,
        "seed": seed,
        "recipe": recipe.to_json(),
        "vertices": mesh.vertices.reshape(-1),
        "faces": mesh.faces.reshape(-1),
        "uvs": mesh.uvs.reshape(-1),
        "face_regions": mesh.regions,
        "region_textures": built.region_textures,
        "num_vertices": len(mesh.vertices),
        "num_faces": len(mesh.faces),
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Shape rows -> Arrow table. List columns are built from one flat buffer plus offsets:
    converting each row's numpy array to a list scalar first was 40x slower than the builds."""
    import numpy as np

    columns = {}
    for f in SHAPE_SCHEMA:
        values = [r[f.name] for r in rows]
        if pa.types.is_list(f.type):
            dtype = {pa.float32(): np.float32, pa.int32(): np.int32}[f.type.value_type]
            arrays = [np.asarray(v, dtype=dtype).reshape(-1) for v in values]
            offsets = np.zeros(len(arrays) + 1, np.int32)
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
            flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
            columns[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=f.type.value_type))
        else:
            columns[f.name] = pa.array(values, type=f.type)
    return pa.Table.from_pydict(columns, schema=SHAPE_SCHEMA)


def make_shape_shard(cfg: GenerateConfig, first: int, last: int, on_shape: Callable[[int], None] = no_op,
                     before_shape: Callable[[int], None] = no_op) -> StepResult:  # fmt: skip
    """Builds shapes first..last and writes their shard. A shape that raises is retried (a fresh
    scene each time); one that keeps failing is left out and reported in the result's failures."""
    started = time.perf_counter()
    rows, failed = [], []
    for shape_id in range(first, last + 1):
        for attempt in range(1, cfg.max_shape_attempts + 1):
            try:
                before_shape(shape_id)
                rows.append(shape_row(cfg.seed, shape_id, cfg.recipe))
                break
            except Exception as err:  # noqa: BLE001 - any failure of one shape must not sink the shard
                if attempt == cfg.max_shape_attempts:
                    failed.append(Failure(shape_id, f"{type(err).__name__}: {err}"))
        on_shape(1)
    path = join(cfg.shapes_dir, shard_name("shapes", first, last))
    meta = file_metadata("shapes", cfg.identity(), cfg.seed)
    # One row group per shape, as for views: a renderer reads exactly the shapes it was given.
    written = write_shard(rows_to_table(rows), path, meta, row_group_rows=[1] * len(rows))
    seconds = round(time.perf_counter() - started, 3)
    record = ShardRecord.of(written, first, last, [r["shape_id"] for r in rows], [f.shape_id for f in failed], seconds)
    return StepResult(record, tuple(failed))


class ShapeShardStep:
    """The generate step of one worker: Blender (bpy) loads once, then a shape shard per task."""

    def __init__(self, cfg: GenerateConfig, device: int | None = None):
        import blender_scripts.build_shape  # noqa: F401 - bpy loads (seconds on a cold worker) before the first shard

        self.cfg = cfg

    def run(self, task: Task, on_units: Callable[[int], None] = no_op, before_shape: Callable[[int], None] = no_op) -> StepResult:
        return make_shape_shard(self.cfg, task.first, task.last, on_units, before_shape)

    def close(self) -> None:
        pass


def pending_ranges(
    manifest: Manifest, n: int, shard_size: int, directory: Location | None = None, verify: bool = False
) -> tuple[list[tuple[int, int]], int]:
    """Ranges still to build, and how many shapes are already done. A shard is redone when it is
    not listed, shorter than its full range (the run is being extended), or had failures; with
    `directory`, also when its file is missing or has another size than recorded (with `verify`:
    another sha256). Rebuilding gives the same bytes, so a damaged shard is simply made again."""
    todo, done = [], 0
    for first, last in shard_ranges(n, shard_size):
        shard = manifest.shard_for(first)
        intact = shard is not None and (directory is None or listed_file_problem(directory, shard, verify) is None)
        if intact and shard.last >= last and not shard.failed:
            done += last - first + 1
            continue
        todo.append((first, last))
    return todo, done


def run_generate(
    cfg: GenerateConfig,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    verify: bool = False,
    new_version: bool = False,
    backend: str = "ray",
) -> GenerateResult:
    """Builds every missing shard of `cfg.root` on the farm executor (`backend` 'ray': a local
    Ray or the cluster at `address`; 'processes': this machine) and records each in the manifest
    as it lands. With `verify`, listed shards are re-hashed and any whose sha256 changed are
    rebuilt. With `new_version`, a root made with another seed or config is moved (with its
    views) to ROOT/versions/<k> instead of refused.

    A shard whose worker dies, or that stops reporting progress for `cfg.shape_timeout_s` (a hung
    Blender: its worker is killed), is retried up to `cfg.max_attempts` times; a shard that still
    fails, or whose step raised (e.g. its write failed: disk full), goes to the manifest's failures."""
    from pipelines.executor import Job, execute, make_backend

    started = time.perf_counter()
    shapes_dir = cfg.shapes_dir
    archived = None
    if new_version and differs(shapes_dir, cfg.seed, cfg.identity()):
        archived = archive_version(cfg.root, ("views", "shapes"))  # the views belong to the old shapes
    manifest = open_manifest(shapes_dir, "shapes", cfg.seed, cfg.identity())
    todo, done = pending_ranges(manifest, cfg.n, cfg.shard_size, shapes_dir, verify)
    result = GenerateResult([], done, [], 0, 0.0, archived=archived)
    if is_dir(shapes_dir):
        remove_temporaries(shapes_dir)  # leftovers of an interrupted write: never listed
    if not todo:
        result.shapes = len(manifest.shape_ids())
        result.failures = list(manifest.failures)
        return result

    make_step = functools.partial(ShapeShardStep, cfg)
    # Before anything is created: a cluster that cannot be joined changes nothing.
    runner = make_backend(backend, "generate", make_step, workers, address)
    make_dirs(shapes_dir)
    job = Job(
        stage="generate", directory=shapes_dir, manifest=manifest, tasks=[Task(a, b, tuple(range(a, b + 1))) for a, b in todo],
        make_step=make_step, max_attempts=cfg.max_attempts, shape_timeout_s=cfg.shape_timeout_s, retry_errors=False,
        label="shard {first}-{last} ",
    )  # fmt: skip
    outcome = execute(job, runner, progress=progress)
    result.written, result.failures, result.retries = outcome.written, outcome.failures, outcome.retries
    result.shapes = len(manifest.shape_ids())
    result.seconds = time.perf_counter() - started
    return result
