"""Parquet shards and their manifests: schemas, atomic writes, resume bookkeeping, storage.

A shard is visible only once the manifest lists it. Writers put a shard under a temporary name,
move it into place, and only then rewrite the manifest (itself the same way). A crash at any
point leaves either the old manifest (the shard is redone on the next run; the orphan file is
removed) or the new one: never a half-written shard that a reader trusts.

Where: a root is a local path or a filesystem URI (`file:///abs`, and what pyarrow's
FileSystem.from_uri opens: s3://, gs://, hdfs://, abfs://; other schemes through fsspec when it
is installed, e.g. memory:// in tests). One code path serves all of them through pyarrow's
filesystem API; they differ in what "move into place" means. Local (and file://): fsync, then
rename, which is atomic. Object stores: the move is a server-side copy of the whole temporary
object to its final key (a single-object put, atomic per object: readers see the old object or
the new one) and a delete of the temporary; a crash can leave a `.tmp-*` object, which the next
run deletes and readers never look at.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from zeroverse import code_version
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


# What a manifest may name: the files shard_name writes, and nothing else. A manifest is a plain
# JSON file that users copy and edit: an entry like "../../victim.txt" must never be read, nor
# deleted when its shard is replaced.
SHARD_FILE = re.compile(r"(shapes|views)-[0-9]{9}-[0-9]{9}\.parquet")


def shard_path(directory: Location, shard: dict[str, Any]) -> Location:
    """The file of a listed shard, `directory`/`shard["file"]`, once the name is known to be a
    shard name (Manifest.load has refused any other; this guards records made in memory)."""
    name = shard.get("file")
    if not isinstance(name, str) or not SHARD_FILE.fullmatch(name):
        raise ValueError(
            f"{join(directory, MANIFEST_NAME)}: the shard entry for shapes {shard.get('first')}..{shard.get('last')} names "
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


# ---- storage: local paths and filesystem URIs ---------------------------------------------------

Location = Union[Path, str]  # a local path, or a URI string with a scheme ("s3://bucket/zv/shapes")
_LOCAL = pafs.LocalFileSystem()


def is_uri(location: Location | os.PathLike) -> bool:
    return isinstance(location, str) and "://" in location


def as_root(root: str | os.PathLike) -> Location:
    """--root as given -> a local Path (plain paths and file:// URIs) or the URI of another
    filesystem, opened once here so that a bad one fails before any work, naming the fix."""
    text = os.fspath(root)
    if "://" not in text:
        return Path(text)
    try:
        if text.startswith("file://"):
            return Path(pafs.FileSystem.from_uri(text)[1])
        _filesystem(_authority(text))
    except Exception as err:  # noqa: BLE001 - pyarrow and fsspec raise many kinds
        raise ValueError(
            f"--root {text!r} cannot be opened ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Use a local path, file:///abs/path, or a URI pyarrow opens (s3://bucket/path, gs://, hdfs://, abfs://) "
            "with its credentials set in the environment of every node"
        ) from err
    return text.rstrip("/")


def join(location: Location, *names: str) -> Location:
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *names])
    return Path(location).joinpath(*names)


def name_of(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _authority(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{rest.partition('/')[0]}/"


@functools.lru_cache(maxsize=32)
def _filesystem(authority: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of scheme://authority/ (made once per process: an S3 client resolves its
    region on creation), and the path there of the authority's root."""
    try:
        return pafs.FileSystem.from_uri(authority)
    except pa.ArrowInvalid as err:  # a scheme pyarrow does not know: fsspec may (memory://, sftp:// ...)
        try:
            import fsspec
        except ImportError:
            raise err from None
        fs, path = fsspec.core.url_to_fs(authority)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def resolve(location: Location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, its path) of a location."""
    if not is_uri(location):
        return _LOCAL, str(Path(location).absolute())
    fs, base = _filesystem(_authority(str(location)))
    sub = str(location).split("://", 1)[1].partition("/")[2]
    return fs, (base.rstrip("/") + "/" + sub) if sub else base


def is_local(location: Location) -> bool:
    return isinstance(resolve(location)[0], pafs.LocalFileSystem)


def make_dirs(location: Location) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def _info(location: Location) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: Location) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_dir(location: Location) -> bool:
    return _info(location).type == pafs.FileType.Directory


def file_size(location: Location) -> int | None:
    """Bytes of a file, None if there is no file."""
    info = _info(location)
    return info.size if info.type == pafs.FileType.File else None


def list_files(directory: Location) -> list[str]:
    """Names of the files directly in `directory` (none if it does not exist)."""
    fs, path = resolve(directory)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(name_of(i.path) for i in infos if i.type == pafs.FileType.File)


def delete(location: Location) -> None:
    fs, path = resolve(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def read_bytes(location: Location) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_table(location: Location, **kwargs: Any) -> pa.Table:
    fs, path = resolve(location)
    return pq.read_table(path, filesystem=fs, **kwargs)


def read_metadata(location: Location) -> pq.FileMetaData:
    fs, path = resolve(location)
    with fs.open_input_file(path) as f:
        return pq.read_metadata(f)


def sha256_file(location: Location) -> str:
    fs, path = resolve(location)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(location: Location) -> Location:
    name = name_of(location)
    tmp = f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if is_uri(location):
        return str(location).rstrip("/")[: -len(name)] + tmp
    return Path(location).with_name(tmp)


def put_atomically(location: Location, data: bytes | pa.Buffer) -> None:
    """Makes `location` hold `data`, all or nothing: written under a temporary name, then moved
    into place (local: fsync + rename; object stores: one server-side copy, then the temporary
    is deleted). The temporary is deleted if anything fails."""
    fs, path = resolve(location)
    tmp = _temp_name(location)
    _, tmp_path = resolve(tmp)
    local = isinstance(fs, pafs.LocalFileSystem)
    try:
        if local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(tmp_path, "wb") as f:
                f.write(memoryview(data))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
            _fsync_dir(Path(path).parent)
        else:
            with fs.open_output_stream(tmp_path) as out:
                out.write(data)
            fs.move(tmp_path, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp_path)
        raise


def write_shard(table: pa.Table, path: Location, metadata: dict[bytes, bytes], row_group_rows: list[int] | None = None) -> dict[str, Any]:
    """Writes `table` to `path` atomically (put_atomically) and returns its record (bytes,
    sha256). `row_group_rows` splits rows into row groups (one per shape for views); default:
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
    return {"file": name_of(path), "bytes": data.size, "sha256": hashlib.sha256(memoryview(data)).hexdigest()}


def atomic_write_text(path: Location, text: str) -> None:
    put_atomically(path, text.encode())


def remove_temporaries(directory: Location) -> int:
    """Deletes leftovers of interrupted writes (never listed in a manifest)."""
    names = [name for name in list_files(directory) if name.startswith(".tmp-")]
    for name in names:
        delete(join(directory, name))
    return len(names)


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
    def path(directory: Location) -> Location:
        return join(directory, MANIFEST_NAME)

    @classmethod
    def load(cls, directory: Location) -> "Manifest | None":
        path = cls.path(directory)
        if file_size(path) is None:
            return None
        try:
            data = json.loads(read_bytes(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); it was damaged outside zeroverse") from err
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path} has schema_version {data.get('schema_version')!r}; this zeroverse reads {SCHEMA_VERSION}. "
                "Use a new --root or the zeroverse version that made it."
            )
        manifest = cls(data["kind"], data["seed"], data["config"], data["config_hash"], data["shards"], data.get("failures", []))
        manifest._check_files(path)
        return manifest

    def _check_files(self, path: Location) -> None:
        """Refuses the whole manifest if an entry names anything but a shard file in its own folder
        (a path like '../../x' would otherwise be read, and deleted when the shard is replaced).
        A manifest of the wrong kind is left to its readers, which say so in their own terms."""
        for i, shard in enumerate(self.shards):
            name = shard.get("file") if isinstance(shard, dict) else None
            if not (isinstance(name, str) and SHARD_FILE.fullmatch(name)):
                first = shard.get("first", "?") if isinstance(shard, dict) else "?"
                example = shard_name(self.kind if self.kind in KINDS else "shapes", 0, 7)
                raise ValueError(
                    f"{path}: shard entry {i} (first shape {first}) names the file {name!r}, which is not a "
                    f"shard file name (like {example!r}); the manifest was edited or damaged outside zeroverse, and "
                    "nothing was read or deleted. Restore that entry's file name, or delete the entry (its shapes are "
                    "then made again on the next run), or use a new --root"
                )

    def save(self, directory: Location) -> None:
        self.shards.sort(key=lambda s: s["first"])
        self.failures.sort(key=lambda f: f["shape_id"])
        body = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "code_version": code_version(),
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


def listed_file_problem(directory: Location, shard: dict[str, Any], verify: bool = False) -> str | None:
    """Why the file of a listed shard cannot be trusted (missing, another size, with `verify`
    another sha256), or None. Without `verify` it costs one stat: cheap enough for every rerun."""
    path = shard_path(directory, shard)
    size = file_size(path)
    if size is None:
        return "listed in the manifest but missing"
    if "bytes" in shard and size != shard["bytes"]:
        return f"{size} bytes, the manifest recorded {shard['bytes']} (truncated or replaced)"
    if verify and "sha256" in shard and sha256_file(path) != shard["sha256"]:
        return "content differs from the manifest's sha256 (corrupt or replaced)"
    return None


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# Keys that older versions put into a config identity although they fix no byte of any shard:
# the absolute path of the installed texture presets (their content hash is kept). A root made
# then still resumes from another checkout or venv path: they are left out when it is compared.
_NOT_IDENTITY = (("textures", "presets_source"),)


def _identity_part(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy
    for *parents, key in _NOT_IDENTITY:
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return config


def same_identity(existing: Manifest, config: dict[str, Any]) -> bool:
    """Whether a root's manifest was made with `config` (its recorded hash, or the hash of its
    config without the keys in _NOT_IDENTITY)."""
    digest = config_digest(config)
    return existing.config_hash == digest or config_digest(_identity_part(existing.config)) == digest


def open_manifest(directory: Location, kind: str, seed: int, config: dict[str, Any]) -> Manifest:
    """The manifest of `directory`, created (in memory) if absent. A root made with another seed
    or config is refused: mixing them would silently change the dataset. `archive_version` keeps
    the old one aside when a new version is asked for explicitly."""
    digest = config_digest(config)
    existing = Manifest.load(directory)
    if existing is None:
        return Manifest(kind, seed, config, digest, [], [])
    if existing.kind != kind:
        raise ValueError(f"{directory} holds {existing.kind!r} shards, not {kind!r}")
    if existing.seed != seed and kind == "views":  # render takes its seed from the shapes
        raise ValueError(
            f"{directory} was rendered from shapes of seed {existing.seed}, but the shapes now have seed "
            f"{seed}. Pass --new-version to keep the old views under ROOT/versions/ and render anew, "
            "or render into a new --root. Nothing was changed."
        )
    if existing.seed != seed:
        raise ValueError(
            f"{directory} was made with --seed {existing.seed}, not {seed}. Rerun with --seed {existing.seed} "
            "to resume or extend it, pass --new-version to keep it under ROOT/versions/ and start anew, "
            "or pass a new --root. Nothing was changed."
        )
    if not same_identity(existing, config):
        changed = _differences(_identity_part(existing.config), config)
        raise ValueError(
            f"{directory} was made with another config ({'; '.join(changed[:6])}). Rerun with the "
            "original config to resume or extend it, pass --new-version to keep it under ROOT/versions/ "
            "and start anew, or pass a new --root. Nothing was changed."
        )
    return existing


def differs(directory: Location, seed: int, config: dict[str, Any]) -> bool:
    """True when `directory` holds a manifest made with another seed or config."""
    existing = Manifest.load(directory)
    return existing is not None and (existing.seed != seed or not same_identity(existing, config))


VERSIONS = "versions"


def archive_version(root: Location, stages: tuple[str, ...]) -> Path | None:
    """Moves ROOT/<stage> for each of `stages` that exists to ROOT/versions/<k>/<stage>, k the next
    free number, and returns ROOT/versions/<k> (itself a root that validate and the datasets
    read), or None when there was nothing to move. One rename per stage, nothing copied or
    deleted. Pass views before shapes: a crash between the renames then leaves shapes without
    views, never views whose shapes are gone."""
    if not is_local(root):
        raise ValueError(
            f"--new-version moves directories, which {root} (not a local or POSIX filesystem) cannot do "
            "atomically: pass a new --root for the new version instead"
        )
    root = Path(resolve(root)[1])
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


def iter_manifest_files(directory: Location, manifest: Manifest) -> Iterator[Location]:
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        yield shard_path(directory, shard)


def read_shape_rows(directory: Location, shape_ids: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yields shape rows (as Python dicts) listed by the manifest, optionally only `shape_ids`."""
    manifest = Manifest.load(directory)
    if manifest is None:
        raise ValueError(f"{directory} has no {MANIFEST_NAME}; run `zeroverse generate --root {str(directory).rstrip('/').rsplit('/', 1)[0]}` first")
    wanted = None if shape_ids is None else set(shape_ids)
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        if wanted is not None and not wanted.intersection(shard["shape_ids"]):
            continue
        table = read_table(shard_path(directory, shard))
        for row in table.to_pylist():
            if wanted is None or row["shape_id"] in wanted:
                yield row
