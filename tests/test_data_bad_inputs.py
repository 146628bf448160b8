"""Bad input: clear ValueErrors naming the file, the shape and the fix; skip_bad skips with one warning."""

from __future__ import annotations

import json
import shutil
import warnings

import pyarrow.parquet as pq
import pytest

from synthetic_views import write_view_shards
from zeroverse.data import ViewDataset, ViewStream
from zeroverse.store.manifest import Manifest

NUM_SHAPES = 6


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    write_view_shards(root, num_shapes=NUM_SHAPES, views_per_shape=4, resolution=8, shard_size=2, views_for={4: 3})
    return root


@pytest.fixture
def root(clean, tmp_path):
    """A private copy that a test may damage."""
    shutil.copytree(clean, tmp_path / "root")
    return tmp_path / "root"


def shard_of(root, shape_id: int) -> tuple[str, list[int]]:
    shard = next(s for s in Manifest.load(root / "views").shards if shape_id in s["shape_ids"])
    return shard["file"], shard["shape_ids"]


def our_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "skipped" in str(w.message)]


def test_missing_root(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ViewDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        ViewStream(tmp_path / "nowhere")


def test_root_without_manifest(root):
    (root / "views" / "manifest.json").unlink()  # shard files alone are never trusted
    with pytest.raises(ValueError, match=r"no views/manifest\.json.*zeroverse render"):
        ViewDataset(root)


def test_root_may_be_the_views_dir_and_unlisted_files_are_ignored(root):
    file, _ = shard_of(root, 0)
    shutil.copy(root / "views" / file, root / "views" / "views-999999990-999999991.parquet")
    assert len(ViewDataset(root / "views", num_input_views=1, num_target_views=1)) == NUM_SHAPES


def test_manifest_of_other_kind(root):
    path = root / "views" / "manifest.json"
    data = json.loads(path.read_text())
    data["kind"] = "shapes"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not views"):
        ViewDataset(root)


def test_truncated_shard(root):
    file, ids = shard_of(root, 2)
    path = root / "views" / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for cls in (ViewDataset, ViewStream):
        with pytest.raises(ValueError, match=rf"{file}.*(Parquet|magic|footer).*shapes 2\.\.3.*skip_bad=True"):
            cls(root, num_input_views=1, num_target_views=1)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ds = cls(root, num_input_views=1, num_target_views=1, skip_bad=True)
        messages = our_warnings(record)
        assert len(messages) == 1 and "skipped 2 of 6 shapes" in messages[0], messages
        assert sorted(e.shape_id for e in ds.entries) == [i for i in range(NUM_SHAPES) if i not in ids]


def test_corrupt_row_group_is_named_at_read_time(root):
    """Same size, intact footer, damaged page header of shape 3's image column: the pyarrow
    error surfaces when the shape is read, wrapped in a ValueError naming file and shape."""
    file, _ = shard_of(root, 3)
    path = root / "views" / file
    md = pq.read_metadata(path)
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    rg = next(i for i in range(md.num_row_groups) if md.row_group(i).column(0).statistics.min == 3)
    offset = md.row_group(rg).column(names.index("rgba")).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    ds = ViewDataset(root, num_input_views=1, num_target_views=1)
    with pytest.raises(ValueError, match=rf"{file}: cannot read shape 3 .*re-render"):
        ds[ds.shape_ids.index(3)]
    ds[ds.shape_ids.index(2)]  # the other shape of that file is fine
    stream = ViewStream(root, num_input_views=1, num_target_views=1, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped shape 3"):
        got = sorted(int(item["shape_id"]) for item in stream)
    assert got == [i for i in range(NUM_SHAPES) if i != 3]
    with pytest.raises(ValueError, match="cannot read shape 3"):
        list(ViewStream(root, num_input_views=1, num_target_views=1))


def test_too_few_views(root):
    with pytest.raises(ValueError, match=r"shape 4 .*has 3 views, but 4 were asked.*at most 3.*skip_bad=True"):
        ViewDataset(root, num_input_views=2, num_target_views=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = ViewDataset(root, num_input_views=2, num_target_views=2, skip_bad=True)
    messages = our_warnings(record)
    assert len(messages) == 1 and "skipped 1 of 6" in messages[0] and "shape 4" in messages[0]
    assert 4 not in ds.shape_ids and len(ds) == NUM_SHAPES - 1
    assert len(ViewDataset(root, num_input_views=2, num_target_views=1)) == NUM_SHAPES


def test_missing_shard_file(root):
    file, _ = shard_of(root, 0)
    (root / "views" / file).unlink()
    with pytest.raises(ValueError, match=rf"{file} is listed in the manifest but missing"):
        ViewDataset(root, num_input_views=1, num_target_views=1)


def test_positions_absent(tmp_path):
    write_view_shards(tmp_path, num_shapes=2, views_per_shape=2, resolution=8, with_position=False)
    ds = ViewDataset(tmp_path, num_input_views=1, num_target_views=1, channels=("rgb", "position"))
    with pytest.raises(ValueError, match="without positions"):
        ds[0]
