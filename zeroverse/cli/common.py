"""What every command shares: the root parameter type, option checks and error wording."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_ROOT = "zeroverse-data"


def fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


def storage_failure(err: OSError) -> click.ClickException:
    """A write that the filesystem refused (full, read-only, quota): one line, no traceback.
    ManifestSaveError already says which manifest and that the previous one is intact."""
    from zeroverse.store.manifest import ManifestSaveError

    if isinstance(err, ManifestSaveError):
        return click.ClickException(str(err))
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return click.ClickException(
        f"{err.strerror or err}{where}. Finished shards are kept and listed; free space or fix the permissions, "
        "then rerun the same command to resume"
    )


class RootType(click.ParamType):
    """--root: a local directory, file:///abs/path, or a filesystem URI pyarrow opens (s3://,
    gs://, hdfs://, abfs://) for generate, render and validate."""

    name = "ROOT"

    def convert(self, value, param, ctx):
        from zeroverse.store.fs import as_root

        if not isinstance(value, str):
            return value
        try:
            return as_root(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


ROOT = RootType()


def check_writable(path: Path, option: str) -> None:
    """Refuses an output file that cannot be written, before any work: its folder (or the nearest
    existing parent, which the command would create it in) must accept a new file. Probed by
    creating one: permission bits alone say yes to root, and /proc or a read-only mount say no."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; pass a file name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".zv-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write in {parent} ({getattr(err, 'strerror', None) or err}); choose a writable path") from err


def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} is not positive; pass an integer >= 1", ctx=ctx, param=param)
    return value
