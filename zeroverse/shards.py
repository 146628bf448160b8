"""Parquet shards and their manifests: schemas, atomic writes, resume bookkeeping.

A shard is visible only once the manifest lists it. Writers put a shard under a temporary name,
fsync it, rename it into place, and only then rewrite the manifest (itself atomically). A crash
at any point leaves either the old manifest (the shard is redone on the next run; the orphan
file is removed) or the new one: never a half-written shard that a reader trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from zeroverse import __version__
from zeroverse.conventions import CONVENTIONS, SCHEMA_VERSION

SHAPE_SCHEMA = pa.schema(
    [
        pa.field("shape_id", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("recipe", pa.string(), nullable=False),
        pa.field("vertices", pa.list_(pa.float32()), nullable=False),
        pa.field("faces", pa.list_(pa.int32()), nullable=False),
        pa.field("uvs", pa.list_(pa.float32()), nullable=False),
        pa.field("face_regions", pa.list_(pa.int32()), nullable=False),
        pa.field("region_textures", pa.list_(pa.int32()), nullable=False),
        pa.field("num_vertices", pa.int32(), nullable=False),
        pa.field("num_faces", pa.int32(), nullable=False),
    ]
)

VIEW_SCHEMA = pa.schema(
    [
        pa.field("shape_id", pa.int64(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("projection", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("c2w", pa.list_(pa.float32(), 16), nullable=False),
        pa.field("intrinsics", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("rgba", pa.binary(), nullable=False),
        pa.field("depth", pa.binary(), nullable=False),
        pa.field("normal", pa.binary(), nullable=False),
        pa.field("position", pa.binary(), nullable=True),
    ]
)

MANIFEST_NAME = "manifest.json"
KINDS = ("shapes", "views")


class ManifestSaveError(OSError):
    """The manifest could not be rewritten (disk full, read-only, quota). The previous manifest is
    untouched, so the root is exactly as it was before the shard whose record was being added."""

    def __str__(self) -> str:
        return str(self.strerror)


def shard_name(kind: str, first: int, last: int) -> str:
    """File name of the shard holding shape ids first..last (inclusive)."""
    return f"{kind}-{first:09d}-{last:09d}.parquet"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous [first, last] shape-id ranges; a function of (n, shard_size) only, so that the
    same shape always lands in the same shard whatever the number of workers."""
    return [(first, min(first + shard_size, n) - 1) for first in range(0, n, shard_size)]


def file_metadata(kind: str, config: dict[str, Any], seed: int, extra: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    """Parquet key-value metadata: every shard carries the config it was made from."""
    meta = {
        "zeroverse.kind": kind,
        "zeroverse.schema_version": str(SCHEMA_VERSION),
        "zeroverse.conventions": json.dumps(CONVENTIONS, sort_keys=True),
        "zeroverse.config": json.dumps(config, sort_keys=True),
        "zeroverse.seed": str(seed),
        "zeroverse.code_version": __version__,
    }
    for key, value in (extra or {}).items():
        meta[f"zeroverse.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return {k.encode(): v.encode() for k, v in meta.items()}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_shard(table: pa.Table, path: Path, metadata: dict[bytes, bytes], row_group_rows: list[int] | None = None) -> dict[str, Any]:
    """Writes `table` to `path` atomically (temporary name, fsync, rename) and returns its
    record (bytes, sha256). `row_group_rows` splits rows into row groups (one per shape for
    views); default: the whole table in one row group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    table = table.replace_schema_metadata(metadata)
    try:
        with pq.ParquetWriter(tmp, table.schema, compression="zstd", write_statistics=["shape_id", "view"]) as writer:
            if row_group_rows is None:
                writer.write_table(table, row_group_size=max(1, table.num_rows))
            else:
                start = 0
                for rows in row_group_rows:
                    writer.write_table(table.slice(start, rows), row_group_size=max(1, rows))
                    start += rows
        with open(tmp, "rb+") as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_temporaries(directory: Path) -> int:
    """Deletes leftovers of interrupted writes (never listed in a manifest)."""
    count = 0
    for tmp in Path(directory).glob(".tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            count += 1
    return count


@dataclass
class Manifest:
    """What a stage directory holds. Readers trust only this file."""

    kind: str
    seed: int
    config: dict[str, Any]
    config_hash: str
    shards: list[dict[str, Any]]
    failures: list[dict[str, Any]]

    @staticmethod
    def path(directory: Path) -> Path:
        return Path(directory) / MANIFEST_NAME

    @classmethod
    def load(cls, directory: Path) -> "Manifest | None":
        path = cls.path(directory)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); it was damaged outside zeroverse") from err
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path} has schema_version {data.get('schema_version')!r}; this zeroverse reads {SCHEMA_VERSION}. "
                "Use a new --root or the zeroverse version that made it."
            )
        return cls(data["kind"], data["seed"], data["config"], data["config_hash"], data["shards"], data.get("failures", []))

    def save(self, directory: Path) -> None:
        self.shards.sort(key=lambda s: s["first"])
        self.failures.sort(key=lambda f: f["shape_id"])
        body = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "code_version": __version__,
            "seed": self.seed,
            "config_hash": self.config_hash,
            "config": self.config,
            "num_shapes": sum(len(s["shape_ids"]) for s in self.shards),
            "shards": self.shards,
            "failures": self.failures,
        }
        path = self.path(directory)
        try:
            atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        except OSError as err:
            raise ManifestSaveError(
                err.errno,
                f"could not save {path} ({err.strerror or err}); the previous manifest is unchanged. Free space "
                "or fix the permissions, then rerun the same command to resume",
            ) from err

    def shape_ids(self) -> list[int]:
        return sorted(i for s in self.shards for i in s["shape_ids"])

    def shard_for(self, first: int) -> dict[str, Any] | None:
        for shard in self.shards:
            if shard["first"] == first:
                return shard
        return None

    def replace_shard(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Adds a shard record; returns the record it replaced (same first id), if any."""
        old = self.shard_for(record["first"])
        if old is not None:
            self.shards.remove(old)
        self.shards.append(record)
        return old


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_file_problem(directory: Path, shard: dict[str, Any], verify: bool = False) -> str | None:
    """Why the file of a listed shard cannot be trusted (missing, another size, with `verify`
    another sha256), or None. Without `verify` it costs one stat: cheap enough for every rerun."""
    path = Path(directory) / shard["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "listed in the manifest but missing"
    if "bytes" in shard and size != shard["bytes"]:
        return f"{size} bytes, the manifest recorded {shard['bytes']} (truncated or replaced)"
    if verify and "sha256" in shard and sha256_file(path) != shard["sha256"]:
        return "content differs from the manifest's sha256 (corrupt or replaced)"
    return None


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def open_manifest(directory: Path, kind: str, seed: int, config: dict[str, Any]) -> Manifest:
    """The manifest of `directory`, created (in memory) if absent. A root made with another seed
    or config is refused: mixing them would silently change the dataset. `archive_version` keeps
    the old one aside when a new version is asked for explicitly."""
    digest = config_digest(config)
    existing = Manifest.load(directory)
    if existing is None:
        return Manifest(kind, seed, config, digest, [], [])
    if existing.kind != kind:
        raise ValueError(f"{directory} holds {existing.kind!r} shards, not {kind!r}")
    if existing.seed != seed:
        raise ValueError(
            f"{directory} was made with --seed {existing.seed}, not {seed}. Rerun with --seed {existing.seed} "
            "to resume or extend it, pass --new-version to keep it under ROOT/versions/ and start anew, "
            "or pass a new --root. Nothing was changed."
        )
    if existing.config_hash != digest:
        changed = _differences(existing.config, config)
        raise ValueError(
            f"{directory} was made with another config ({'; '.join(changed[:6])}). Rerun with the "
            "original config to resume or extend it, pass --new-version to keep it under ROOT/versions/ "
            "and start anew, or pass a new --root. Nothing was changed."
        )
    return existing


def differs(directory: Path, seed: int, config: dict[str, Any]) -> bool:
    """True when `directory` holds a manifest made with another seed or config."""
    existing = Manifest.load(directory)
    return existing is not None and (existing.seed != seed or existing.config_hash != config_digest(config))


VERSIONS = "versions"


def archive_version(root: Path, stages: tuple[str, ...]) -> Path | None:
    """Moves ROOT/<stage> for each of `stages` that exists to ROOT/versions/<k>/<stage>, k the next
    free number, and returns ROOT/versions/<k> (itself a root that validate and the datasets
    read), or None when there was nothing to move. One rename per stage, nothing copied or
    deleted. Pass views before shapes: a crash between the renames then leaves shapes without
    views, never views whose shapes are gone."""
    root = Path(root)
    present = [stage for stage in stages if (root / stage).exists()]
    if not present:
        return None
    versions = root / VERSIONS
    taken = [int(p.name) for p in versions.glob("*") if p.name.isdigit()] if versions.is_dir() else []
    target = versions / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for stage in present:
        os.rename(root / stage, target / stage)
    _fsync_dir(root)
    return target


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable 'key: old -> new' lines for nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: root has {old!r}, asked {new!r}"]


def iter_manifest_files(directory: Path, manifest: Manifest) -> Iterator[Path]:
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        yield Path(directory) / shard["file"]


def read_shape_rows(directory: Path, shape_ids: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yields shape rows (as Python dicts) listed by the manifest, optionally only `shape_ids`."""
    manifest = Manifest.load(directory)
    if manifest is None:
        raise ValueError(f"{directory} has no {MANIFEST_NAME}; run `zeroverse generate --root {Path(directory).parent}` first")
    wanted = None if shape_ids is None else set(shape_ids)
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        if wanted is not None and not wanted.intersection(shard["shape_ids"]):
            continue
        table = pq.read_table(Path(directory) / shard["file"])
        for row in table.to_pylist():
            if wanted is None or row["shape_id"] in wanted:
                yield row
