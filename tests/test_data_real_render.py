"""ViewDataset / ViewStream over a root rendered by the real farm (Blender Cycles, via conftest's
`small_root`): the loader reads what the renderer writes, and its cameras agree with Cycles' depth."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from test_data_dataset import _consistency
from zeroverse.data import ViewDataset, ViewStream, collate

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_rendered_root_loads_and_is_consistent(small_root):
    ds = ViewDataset(small_root, num_input_views=2, num_target_views=2, channels=("rgb", "alpha", "depth", "normal"))
    assert len(ds) == 8
    for resolution in (None, 32):
        ds = ViewDataset(small_root, num_input_views=2, num_target_views=2, resolution=resolution, channels=("rgb", "alpha", "depth"))
        for index in range(len(ds)):
            item = ds[index]
            assert item["images"].min() >= 0 and item["images"].max() <= 1
            # depth and alpha agree on what is empty (Cycles' depth has one sample per pixel)
            assert ((item["depths"] > 0) <= (item["alphas"] > 0)).float().mean() > 0.99
            median, front, compared = _consistency(item)
            if compared > 50:
                assert median < 5e-3 and front < 0.02, (resolution, index, median, front)
    stream = ViewStream(small_root, num_input_views=2, num_target_views=2, batch_size=2)
    ids = [int(i) for b in stream.track(DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate)) for i in b["shape_id"]]
    assert sorted(ids) == ds.shape_ids
