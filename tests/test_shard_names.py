"""A manifest names shard files, nothing else: an entry like '../../victim.txt' (a hand-edited or
hostile manifest) is refused before anything is read, and is never deleted when its shard is
replaced. No Ray, no Blender: the checks run before either starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeroverse.store.manifest import Manifest, ShardRecord, config_digest
from zeroverse.store.shards import shard_name, shard_path

BAD_NAMES = ["../../victim.txt", "/etc/passwd", "shapes-000000000-000000001.parquet/../../victim.txt",
             "sub/shapes-000000000-000000001.parquet", "shapes-0-1.parquet", "", None, 7]  # fmt: skip


def _record(name, first=0, last=1) -> dict:
    return {"file": name, "first": first, "last": last, "rows": 2, "shape_ids": [first, last], "bytes": 10, "sha256": "0" * 64}


def _root_with_entry(tmp_path: Path, name, kind: str = "shapes") -> tuple[Path, Path]:
    """ROOT whose `kind` manifest lists `name` for shapes 0..1, and the victim that name points at."""
    root = tmp_path / "root"
    victim = tmp_path / "victim.txt"
    victim.write_text("not zeroverse's")
    config = {"x": 1}
    Manifest(kind, 0, config, config_digest(config), [ShardRecord.from_json(_record(shard_name(kind, 2, 3), 2, 3))], []).save(root / kind)
    body = json.loads((root / kind / "manifest.json").read_text())
    body["shards"].insert(0, _record(name))
    (root / kind / "manifest.json").write_text(json.dumps(body))
    return root, victim


@pytest.mark.parametrize("name", BAD_NAMES)
def test_load_refuses_an_entry_that_is_not_a_shard_name(tmp_path, name):
    root, victim = _root_with_entry(tmp_path, name)
    with pytest.raises(ValueError) as err:
        Manifest.load(root / "shapes")
    said = str(err.value)
    assert "shard entry 0 (first shape 0)" in said and repr(name) in said and "shapes-000000000-000000007.parquet" in said
    assert "Restore that entry's file name" in said and "nothing was read or deleted" in said
    assert victim.read_text() == "not zeroverse's"


def test_replacing_a_shard_never_deletes_what_a_bad_record_names(tmp_path):
    """The delete path itself (records built in memory bypass Manifest.load)."""
    victim = tmp_path / "victim.txt"
    for kind in ("shapes", "views"):
        victim.write_text("not zeroverse's")
        directory = tmp_path / kind / "a" / "b"
        manifest = Manifest(kind, 0, {}, "x", [ShardRecord.from_json(_record("../../../victim.txt"))], [])
        new = ShardRecord.from_json(dict(_record(shard_name(kind, 0, 1)), failed=[]))
        with pytest.raises(ValueError, match="not a shard name"):
            manifest.commit(directory, new, [0, 1])
        assert victim.read_text() == "not zeroverse's", kind


def test_shard_path_joins_only_shard_names(tmp_path):
    good = ShardRecord.from_json(_record("views-000000008-000000015.parquet", 8, 15))
    assert shard_path(tmp_path, good) == tmp_path / "views-000000008-000000015.parquet"
    assert shard_path("s3://b/zv/views", good) == "s3://b/zv/views/views-000000008-000000015.parquet"
    for name in BAD_NAMES:
        with pytest.raises(ValueError, match="not a shard name"):
            shard_path(tmp_path, ShardRecord.from_json(_record(name)))


@pytest.mark.parametrize("command", ["generate", "render", "validate"])
def test_commands_refuse_the_root_naming_the_entry_and_the_fix(tmp_path, command):
    from zeroverse.cli import main

    root, victim = _root_with_entry(tmp_path, "../../victim.txt")
    args = {"generate": ["generate", "--n", "4", "--shard-size", "2"], "render": ["render"], "validate": ["validate"]}[command]
    result = CliRunner().invoke(main, [*args, "--root", str(root)])
    assert result.exit_code == 1 and not isinstance(result.exception, ValueError), result.output
    assert "shard entry 0" in result.output and "'../../victim.txt'" in result.output, result.output
    assert victim.read_text() == "not zeroverse's"
    assert not (root / "views").exists() and sorted(p.name for p in (root / "shapes").iterdir()) == ["manifest.json"]
