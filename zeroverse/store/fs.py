"""Where shards live: local paths and filesystem URIs, read and written through one code path.

A root is a local path or a filesystem URI (`file:///abs`, and what pyarrow's
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
import os
from pathlib import Path
from typing import Any, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from zeroverse.scene.files import TEMPORARY_PREFIX, temporary_name, write_atomically


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


def put_atomically(location: Location, data: bytes | pa.Buffer) -> None:
    """Makes `location` hold `data`, all or nothing: written under a temporary name, then moved
    into place (local: zeroverse.scene.files.write_atomically, fsync + rename; object stores:
    one server-side copy, then the temporary is deleted). The temporary is deleted if anything
    fails."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomically(path, data)
        return
    name = name_of(location)
    _, tmp_path = resolve(str(location).rstrip("/")[: -len(name)] + temporary_name(name))
    try:
        with fs.open_output_stream(tmp_path) as out:
            out.write(data)
        fs.move(tmp_path, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp_path)
        raise


def atomic_write_text(path: Location, text: str) -> None:
    put_atomically(path, text.encode())


def remove_temporaries(directory: Location) -> int:
    """Deletes leftovers of interrupted writes (never listed in a manifest)."""
    names = [name for name in list_files(directory) if name.startswith(TEMPORARY_PREFIX)]
    for name in names:
        delete(join(directory, name))
    return len(names)
