"""--root as a filesystem URI: file:// through the whole farm, and an fsspec in-memory filesystem
(pyarrow PyFileSystem(FSSpecHandler)) for the object-store code path: no rename, a temporary
object moved (copied) into place, stray temporaries swept, validate reading through pyarrow.

memory:// lives in one process, so it cannot serve Ray workers; it exercises the shard writer,
the manifests and validate in this process. A real object store (s3://, gs://) takes the same
path with the filesystem pyarrow opens for it (not reachable from this test machine).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fault_cases import build_reference, final_state, generate_args, render_args
from zeroverse.store import fs, manifest, shards
from zeroverse.cli import main
from zeroverse.store.manifest import Manifest



@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local):
    return build_reference(tmp_path_factory.mktemp("reference") / "root")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.ray
@pytest.mark.blender
def test_file_uri_root_through_the_farm_gives_the_same_bytes(reference, tmp_path):
    root = tmp_path / "root"
    uri = f"file://{root}"
    for args in (generate_args(uri), render_args(uri)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert f"in {root}/" in result.output  # reported as the local path it is
    state = final_state(root, reference)
    assert state.identical and (state.shapes, state.views) == (6, 12), state.problems
    checked = cli("validate", "--root", uri)
    assert checked.exit_code == 0 and "6 shapes, 12 views checked: OK" in checked.output, checked.output


def _memory_root() -> str:
    """A fresh root on fsspec's in-memory filesystem (fsspec comes with the test extra's datasets)."""
    pytest.importorskip("fsspec")
    return f"memory://zv-{uuid.uuid4().hex[:8]}/root"


def _copy_to(uri: str, local_root: Path) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file() and path.parts[len(local_root.parts)] in ("shapes", "views"):
            fs.put_atomically(fs.join(uri, *path.relative_to(local_root).parts), path.read_bytes())


@pytest.mark.ray
def test_object_store_path_writes_the_same_bytes_and_leaves_no_temporary(reference, tmp_path):
    uri = _memory_root()
    table = pq.read_table(reference / "shapes" / "shapes-000000000-000000001.parquet")
    meta, groups = table.schema.metadata, [1] * table.num_rows
    source = tmp_path / "shapes-000000000-000000001.parquet"
    local = shards.write_shard(table, source, meta, row_group_rows=groups)
    target = fs.join(uri, "shapes", source.name)
    record = shards.write_shard(table, target, meta, row_group_rows=groups)
    assert fs.read_bytes(target) == source.read_bytes()  # the same bytes on any filesystem
    assert record == local == shards.WrittenShard(source.name, table.num_rows, source.stat().st_size, hashlib.sha256(source.read_bytes()).hexdigest())
    assert fs.list_files(fs.join(uri, "shapes")) == [source.name]  # the temporary object was moved away
    # A stray temporary (a crash mid-put) is swept and never listed.
    fs.put_atomically(fs.join(uri, "shapes", f".tmp-{source.name}-1-dead"), b"half")
    assert fs.remove_temporaries(fs.join(uri, "shapes")) == 1
    assert fs.list_files(fs.join(uri, "shapes")) == [source.name]
    # Manifests round-trip; a listed file with another size is noticed.
    saved = manifest.Manifest("shapes", 7, {}, "x", [manifest.ShardRecord.of(record, 0, 1, [0, 1])], [])
    saved.save(fs.join(uri, "shapes"))
    loaded = manifest.Manifest.load(fs.join(uri, "shapes"))
    assert loaded.shards == saved.shards
    assert manifest.listed_file_problem(fs.join(uri, "shapes"), loaded.shards[0], verify=True) is None
    fs.put_atomically(target, source.read_bytes()[:100])
    assert "100 bytes" in manifest.listed_file_problem(fs.join(uri, "shapes"), loaded.shards[0])


@pytest.mark.ray
def test_validate_reads_an_object_store_root_and_names_a_damaged_shard(reference):
    uri = _memory_root()
    _copy_to(uri, reference)
    ok = cli("validate", "--root", uri)
    assert ok.exit_code == 0 and "6 shapes, 12 views checked: OK" in ok.output, ok.output
    damaged = fs.join(uri, "views", "views-000000002-000000003.parquet")
    data = bytearray(fs.read_bytes(damaged))
    data[len(data) // 2] ^= 0xFF
    fs.put_atomically(damaged, bytes(data))
    bad = cli("validate", "--root", uri)
    assert bad.exit_code == 1 and f"{damaged}: content differs from the manifest's sha256" in bad.output, bad.output


def test_new_version_is_refused_where_directories_cannot_be_renamed():
    uri = _memory_root()
    fs.put_atomically(fs.join(uri, "shapes", "manifest.json"), b"{}")
    with pytest.raises(ValueError, match="pass a new --root"):
        manifest.archive_version(uri, ("views", "shapes"))


@pytest.mark.parametrize("root, named", [("nosuchscheme://bucket/zv", "nosuchscheme://bucket/zv"), ("file://relative/path", "file://relative/path")])
def test_a_root_uri_that_cannot_be_opened_is_refused_naming_it(tmp_path, root, named):
    result = cli("generate", "--n", "2", "--root", root, "--no-progress")
    assert result.exit_code == 2 and named in result.output and "file:///abs/path" in result.output, result.output
    assert "Traceback" not in result.output
