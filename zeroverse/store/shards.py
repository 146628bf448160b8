"""Parquet shard files: the shape and view schemas, shard names, file metadata, the shard writer.

A shard is visible only once the manifest (zeroverse.store.manifest) lists it. Writers put a
shard under a temporary name, move it into place (zeroverse.store.fs), and only then rewrite the
manifest (itself the same way). A crash at any point leaves either the old manifest (the shard is
redone on the next run; the orphan file is removed) or the new one: never a half-written shard
that a reader trusts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from zeroverse import code_version
from zeroverse.scene.conventions import CONVENTIONS, SCHEMA_VERSION
from zeroverse.store.fs import Location, join, name_of, put_atomically

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


def shard_name(kind: str, first: int, last: int) -> str:
    """File name of the shard holding shape ids first..last (inclusive)."""
    return f"{kind}-{first:09d}-{last:09d}.parquet"


# What a manifest may name: the files shard_name writes, and nothing else. A manifest is a plain
# JSON file that users copy and edit: an entry like "../../victim.txt" must never be read, nor
# deleted when its shard is replaced.
SHARD_FILE = re.compile(r"(shapes|views)-[0-9]{9}-[0-9]{9}\.parquet")


def shard_path(directory: Location, shard: Any) -> Location:
    """The file of a listed shard (a manifest ShardRecord), `directory`/`shard.file`, once the
    name is known to be a shard name (Manifest.load has refused any other; this guards records
    made in memory)."""
    name = getattr(shard, "file", None)
    if not isinstance(name, str) or not SHARD_FILE.fullmatch(name):
        raise ValueError(
            f"{join(directory, MANIFEST_NAME)}: the shard entry for shapes {getattr(shard, 'first', '?')}..{getattr(shard, 'last', '?')} names "
            f"the file {name!r}, which is not a shard name; nothing was read or deleted"
        )
    return join(directory, name)


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
        "zeroverse.code_version": code_version(),
    }
    for key, value in (extra or {}).items():
        meta[f"zeroverse.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return {k.encode(): v.encode() for k, v in meta.items()}


@dataclass(frozen=True)
class WrittenShard:
    """What write_shard put in place: the file's name, rows, size and sha256."""

    file: str
    rows: int
    bytes: int
    sha256: str


def write_shard(table: pa.Table, path: Location, metadata: dict[bytes, bytes], row_group_rows: list[int] | None = None) -> WrittenShard:
    """Writes `table` to `path` atomically (put_atomically) and says what it wrote. `row_group_rows` splits rows into row groups (one per shape for views); default:
    the whole table in one row group. The file is encoded in memory first: its sha256 is known
    before anything is written, and an object store receives it in one piece."""
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", write_statistics=["shape_id", "view"]) as writer:
        if row_group_rows is None:
            writer.write_table(table, row_group_size=max(1, table.num_rows))
        else:
            start = 0
            for rows in row_group_rows:
                writer.write_table(table.slice(start, rows), row_group_size=max(1, rows))
                start += rows
    data = sink.getvalue()
    put_atomically(path, data)
    return WrittenShard(name_of(path), table.num_rows, data.size, hashlib.sha256(memoryview(data)).hexdigest())
