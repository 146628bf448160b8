"""`zeroverse generate`: shape shards from (seed, shape_id), fanned out over Ray.

The step (`make_shape_shard`) knows nothing of Ray: it turns a range of shape ids into one
atomically written Parquet shard. The orchestrator (`run_generate`) decides which ranges are
missing from the manifest, runs the steps as Ray tasks, and records each finished shard in the
manifest as it lands, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from pipelines.faults import inject
from zeroverse.scene.recipe import RECIPE_VERSION, RecipeConfig, sample_recipe
from zeroverse.store.fs import Location, delete, is_dir, join, make_dirs, remove_temporaries
from zeroverse.store.manifest import Manifest, archive_version, differs, listed_file_problem, open_manifest
from zeroverse.store.shards import SHAPE_SCHEMA, file_metadata, shard_name, shard_path, shard_ranges, write_shard

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
    failures: list[dict[str, Any]]
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


def make_shape_shard(
    cfg: GenerateConfig, first: int, last: int, on_shape: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Builds shapes first..last and writes their shard. A shape that raises is retried (a fresh
    scene each time); one that keeps failing is left out and reported in the record's `failed`."""
    started = time.perf_counter()
    rows, failed = [], []
    for shape_id in range(first, last + 1):
        for attempt in range(1, cfg.max_shape_attempts + 1):
            try:
                inject("generate", shape_id)
                rows.append(shape_row(cfg.seed, shape_id, cfg.recipe))
                break
            except Exception as err:  # noqa: BLE001 - any failure of one shape must not sink the shard
                if attempt == cfg.max_shape_attempts:
                    reason = f"{type(err).__name__}: {err}"
                    failed.append({"shape_id": shape_id, "reason": reason, "traceback": traceback.format_exc(limit=5)})
        if on_shape is not None:
            on_shape(1)
    path = join(cfg.shapes_dir, shard_name("shapes", first, last))
    meta = file_metadata("shapes", cfg.identity(), cfg.seed)
    # One row group per shape, as for views: a renderer reads exactly the shapes it was given.
    record = write_shard(rows_to_table(rows), path, meta, row_group_rows=[1] * len(rows))
    record.update(
        first=first,
        last=last,
        rows=len(rows),
        shape_ids=[r["shape_id"] for r in rows],
        failed=failed,
        seconds=round(time.perf_counter() - started, 3),
    )
    return record


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
        if intact and shard["last"] >= last and not shard.get("failed"):
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
) -> GenerateResult:
    """Builds every missing shard of `cfg.root` with Ray and records each in the manifest. With
    `verify`, listed shards are re-hashed and any whose sha256 changed are rebuilt. With
    `new_version`, a root made with another seed or config is moved (with its views) to
    ROOT/versions/<k> instead of refused.

    A task whose worker dies is retried by Ray (3 times); one that stops reporting progress for
    `cfg.shape_timeout_s` (a hung Blender) is cancelled, which kills its worker, and resubmitted,
    up to `cfg.max_attempts` times; a shard that still fails goes to the manifest's failures."""
    import ray
    from tqdm import tqdm

    from pipelines.ray_runtime import Heartbeats, init_ray, new_progress_counter, throttled, worker_options

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

    init_ray(address, workers)  # before anything is created: a cluster that cannot be joined changes nothing
    make_dirs(shapes_dir)
    counter = new_progress_counter()

    @ray.remote(num_cpus=1, max_retries=3)
    def generate_shard(first: int, last: int, attempt: int) -> dict[str, Any]:
        import blender_scripts.build_shape  # noqa: F401 - bpy loads (seconds on a cold worker) before the clock starts

        key = (first, attempt)
        with contextlib.suppress(Exception):  # progress is best effort: it must never fail a shard
            ray.get(counter.begin.remote(key), timeout=30)  # waited for: a worker frozen right after still counts as begun
        report = throttled(lambda k: counter.add.remote(k, key))
        try:
            return make_shape_shard(cfg, first, last, on_shape=report)
        finally:
            report.flush()
            counter.end.remote(key)

    task = generate_shard.options(**worker_options())
    # At most `workers` shards in flight: honours --workers even on a larger (or shared) cluster.
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue = deque((first, last, 1) for first, last in todo)
    refs: dict = {}
    beats = Heartbeats()
    total = sum(last - first + 1 for first, last in todo)
    bar = tqdm(total=total, unit="shape", desc="generate", disable=not progress, smoothing=0.1)

    def retry_or_ledger(first: int, last: int, attempt: int, reason: str) -> None:
        if attempt < cfg.max_attempts:
            result.retries += 1
            queue.append((first, last, attempt + 1))
        else:
            result.failures.extend(_ledger_shard(manifest, shapes_dir, first, last, f"{reason} (after {attempt} attempts)"))

    try:
        while queue or refs:
            while queue and len(refs) < limit:
                first, last, attempt = queue.popleft()
                refs[task.remote(first, last, attempt)] = (first, last, attempt)
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5, fetch_local=False)
            beats.poll(counter, bar, total)
            now = time.monotonic()
            for ref in list(refs):
                first, last, attempt = refs[ref]
                if ref in ready:
                    del refs[ref]
                    beats.forget((first, attempt))
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # the whole task failed (after Ray's retries for a dead worker)
                        cause = getattr(err, "cause", None) or err
                        reason = f"shard {first}-{last} failed: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                        result.failures.extend(_ledger_shard(manifest, shapes_dir, first, last, reason))
                        continue
                    failed = [{"shape_id": f["shape_id"], "reason": f["reason"]} for f in record["failed"]]
                    _commit(manifest, shapes_dir, record)
                    result.written.append(record["file"])
                    result.failures.extend(failed)
                elif beats.silent_for((first, attempt), now) > cfg.shape_timeout_s:
                    del refs[ref]
                    beats.forget((first, attempt))
                    ray.cancel(ref, force=True)  # kills the worker: a hung Blender cannot be interrupted
                    retry_or_ledger(first, last, attempt, f"shard {first}-{last} timed out: no shape finished in {cfg.shape_timeout_s:g} s")
        bar.n = total
        bar.refresh()
    except BaseException:  # Ctrl-C, or a manifest that cannot be saved: stop every task in flight
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):  # then sweep what they were writing (best effort; reruns sweep too)
            ray.wait(list(refs), num_returns=len(refs), timeout=5)
            remove_temporaries(shapes_dir)
        raise
    finally:
        bar.close()
    result.shapes = len(manifest.shape_ids())
    result.seconds = time.perf_counter() - started
    return result


def _commit(manifest: Manifest, directory: Location, record: dict[str, Any]) -> None:
    """Lists a landed shard in the manifest (written last), then drops the file it supersedes."""
    failed = record.pop("failed")
    record["failed"] = [f["shape_id"] for f in failed]
    manifest.failures = [f for f in manifest.failures if not (record["first"] <= f["shape_id"] <= record["last"])]
    manifest.failures.extend({"shape_id": f["shape_id"], "reason": f["reason"]} for f in failed)
    old = manifest.replace_shard(record)
    manifest.save(directory)
    if old is not None and old["file"] != record["file"]:
        delete(shard_path(directory, old))  # a shard name only: never a path a hand-edited manifest made up


def _ledger_shard(manifest: Manifest, directory: Location, first: int, last: int, reason: str) -> list[dict[str, Any]]:
    """Records a shard that could not be made at all (e.g. its write failed: disk full) in the
    manifest's failures, so that `validate` and readers see the gap; shapes an older listed shard
    of the same range still holds stay listed and are not failures. Raises ManifestSaveError if
    even the manifest cannot be written (the previous one is left as it was)."""
    old = manifest.shard_for(first)
    listed = set(old["shape_ids"]) if old is not None else set()
    failed = [{"shape_id": i, "reason": reason} for i in range(first, last + 1) if i not in listed]
    manifest.failures = [f for f in manifest.failures if not (first <= f["shape_id"] <= last)]
    manifest.failures.extend(failed)
    manifest.save(directory)
    return failed


def describe(result: GenerateResult) -> str:
    return json.dumps(
        {"written": len(result.written), "skipped_shapes": result.skipped, "shapes": result.shapes, "failures": len(result.failures)}
    )
