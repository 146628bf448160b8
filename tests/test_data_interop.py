"""The view shards load without zeroverse: plain pyarrow, and Hugging Face `datasets` if installed."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthetic_views import write_view_shards
from zeroverse.store.manifest import Manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    write_view_shards(root, num_shapes=5, views_per_shape=3, resolution=16, shard_size=2)
    return root


def shard_files(root) -> list[str]:
    return [str(root / "views" / s["file"]) for s in Manifest.load(root / "views").shards]


def test_plain_pyarrow(root):
    manifest = Manifest.load(root / "views")
    for shard, path in zip(manifest.shards, shard_files(root)):
        f = pq.ParquetFile(path)
        assert f.metadata.num_row_groups == len(shard["shape_ids"]) and f.metadata.num_rows == shard["rows"]
        assert f.schema_arrow.metadata[b"zeroverse.kind"] == b"views"
        row = f.read_row_group(0).slice(0, 1).to_pylist()[0]
        rgba = np.asarray(Image.open(io.BytesIO(row["rgba"])))
        assert rgba.shape == (row["height"], row["width"], 4)
        depth = np.frombuffer(row["depth"], "<f4").reshape(row["height"], row["width"])
        assert ((depth > 0) == (rgba[..., 3] > 0)).all()


def test_hugging_face_datasets(root):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=shard_files(root), split="train")
    assert len(ds) == 5 * 3
    row = ds[0]
    assert set(row) >= {"shape_id", "view", "rgba", "depth", "c2w", "intrinsics"}
    assert Image.open(io.BytesIO(row["rgba"])).size == (row["width"], row["height"])
    assert len(row["c2w"]) == 16
