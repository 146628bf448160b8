"""Local files written all or nothing (numpy and the standard library, as Blender's Python has).

The one local atomic write of the project: the texture caches write through it, and
zeroverse.store.fs.put_atomically uses it for local roots.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from pathlib import Path

import numpy as np

TEMPORARY_PREFIX = ".tmp-"


def temporary_name(name: str) -> str:
    """A sibling name to write `name` under before moving it into place. The prefix lets
    zeroverse.store.fs.remove_temporaries find leftovers; pid and a random part keep
    concurrent writers of one name apart."""
    return f"{TEMPORARY_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename in it) to disk, where the filesystem allows."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: str | os.PathLike, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Makes the local file `path` hold `data`, all or nothing: readers in other processes see
    the old file or the new one, never half of one. Written under a temporary name, then renamed
    (atomic on POSIX); the temporary is deleted if anything fails. `durable` also fsyncs the file
    and its directory so that the new file survives a power cut (a regenerable cache skips it:
    an fsync per texture would cost more than making it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_npy(path: str | os.PathLike, array: np.ndarray, *, durable: bool = True) -> None:
    """Saves ``array`` as the .npy file ``path`` through :func:`write_atomically`."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getbuffer(), durable=durable)
