"""ViewDataset against raw pyarrow, camera consistency under resizing, sampling, DataLoader use."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from synthetic_views import write_view_shards
from zeroverse.data import ViewDataset, collate
from zeroverse.store.manifest import Manifest

NUM_SHAPES = 6
VIEWS = 8
RES = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    write_view_shards(root, num_shapes=NUM_SHAPES, views_per_shape=VIEWS, resolution=RES, shard_size=4)
    return root


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_views")
    write_view_shards(root, num_shapes=3, views_per_shape=10, resolution=32, rig="eval", bev=True)
    return root


def raw_rows(root, shape_id: int) -> dict[int, dict]:
    """The shape's rows straight from pyarrow, keyed by view (no zeroverse.data code)."""
    manifest = Manifest.load(root / "views")
    shard = next(s for s in manifest.shards if shape_id in s["shape_ids"])
    table = pq.read_table(root / "views" / shard["file"])
    rows = [r for r in table.to_pylist() if r["shape_id"] == shape_id]
    return {r["view"]: r for r in rows}


def decode_raw(row: dict, background: float) -> dict[str, np.ndarray]:
    rgba = np.asarray(Image.open(io.BytesIO(row["rgba"])).convert("RGBA"), dtype=np.float32) / 255.0
    H, W = row["height"], row["width"]
    a = rgba[..., 3:]
    fx, fy, cx, cy = row["intrinsics"]
    return {
        "images": (rgba[..., :3] * a + background * (1 - a)).transpose(2, 0, 1),
        "alphas": a.transpose(2, 0, 1),
        "depths": np.frombuffer(row["depth"], "<f4").reshape(1, H, W),
        "normals": np.frombuffer(row["normal"], "<f2").astype(np.float32).reshape(H, W, 3).transpose(2, 0, 1),
        "positions": np.frombuffer(row["position"], "<f4").reshape(H, W, 3).transpose(2, 0, 1),
        "c2w": np.asarray(row["c2w"], np.float32).reshape(4, 4),
        "K": np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32),
    }


@pytest.mark.parametrize("background", ["white", "black", 0.25])
def test_items_match_raw_pyarrow(root, background):
    ds = ViewDataset(root, num_input_views=3, num_target_views=2, channels=("rgb", "alpha", "depth", "normal", "position"), background=background)
    assert len(ds) == NUM_SHAPES and ds.shape_ids == list(range(NUM_SHAPES))
    bg = {"white": 1.0, "black": 0.0}.get(background, background)
    for index in (0, 5):
        item = ds[index]
        assert int(item["shape_id"]) == index
        assert item["images"].shape == (5, 3, RES, RES) and item["images"].dtype == torch.float32
        assert item["view_ids"].unique().numel() == 5
        rows = raw_rows(root, index)
        for v, view in enumerate(item["view_ids"].tolist()):
            ref = decode_raw(rows[view], bg)
            for key in ("images", "alphas", "depths", "normals", "positions", "c2w", "K"):
                np.testing.assert_allclose(item[key][v].numpy(), ref[key], atol=1e-6, err_msg=key)
        assert torch.equal(item["background"], torch.full((3,), float(bg)))


def test_random_background_is_seeded_and_used(root):
    a = ViewDataset(root, channels=("rgb", "alpha"), background="random", seed=3)[1]
    b = ViewDataset(root, channels=("rgb", "alpha"), background="random", seed=3)[1]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["background"], b["background"])
    empty = a["alphas"][0, 0] == 0
    assert empty.any()
    np.testing.assert_allclose(a["images"][0][:, empty].T.numpy(), a["background"].expand(int(empty.sum()), 3).numpy(), atol=1e-6)


def test_view_sampling_seeded_per_epoch(root):
    ds = ViewDataset(root, num_input_views=2, num_target_views=2, channels=("alpha",), seed=0)
    first = [ds[i]["view_ids"].tolist() for i in range(len(ds))]
    assert first == [ds[i]["view_ids"].tolist() for i in range(len(ds))]  # deterministic
    ds.set_epoch(1)
    assert first != [ds[i]["view_ids"].tolist() for i in range(len(ds))]  # new views next epoch
    ds.set_epoch(0)
    assert first == [ds[i]["view_ids"].tolist() for i in range(len(ds))]
    other = ViewDataset(root, num_input_views=2, num_target_views=2, channels=("alpha",), seed=1)
    assert first != [other[i]["view_ids"].tolist() for i in range(len(ds))]
    for ids in first:
        assert len(set(ids)) == 4


def _backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(depth > 0)
    pix = np.stack([u + 0.5, v + 0.5, np.ones_like(u, dtype=float)], axis=1)
    cam = (pix @ np.linalg.inv(K).T) * depth[v, u][:, None]  # planar depth: z = depth
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _consistency(item, K_override=None) -> tuple[float, float, int]:
    """Back-projects every view's depth and projects it into every other view. Returns (median
    relative depth error of points that view j sees, fraction of points that land in front of
    what view j sees, number of points compared)."""
    depths = item["depths"][:, 0].double().numpy()
    Ks = (item["K"] if K_override is None else K_override).double().numpy()
    c2ws = item["c2w"].double().numpy()
    V, H, W = depths.shape
    errors, front, total = [], 0, 0
    for i in range(V):
        pts = _backproject(depths[i], Ks[i], c2ws[i])
        for j in range(V):
            if i == j:
                continue
            cam = (pts - c2ws[j][:3, 3]) @ c2ws[j][:3, :3]
            z = cam[:, 2]
            uv = cam @ Ks[j].T
            u, v = uv[:, 0] / z - 0.5, uv[:, 1] / z - 0.5  # continuous coordinates of pixel centres
            x0, y0 = np.floor(u).astype(int), np.floor(v).astype(int)
            inside = (z > 0) & (x0 >= 0) & (y0 >= 0) & (x0 + 1 < W) & (y0 + 1 < H)
            u, v, z, x0, y0 = u[inside], v[inside], z[inside], x0[inside], y0[inside]
            quad = np.stack([depths[j][y0, x0], depths[j][y0, x0 + 1], depths[j][y0 + 1, x0], depths[j][y0 + 1, x0 + 1]])
            # Compare only where view j's depth is smooth around the point (all four samples on
            # one surface), so bilinear interpolation is meaningful.
            smooth = (quad.min(0) > 0) & (quad.max(0) - quad.min(0) < 0.05 * quad.min(0))
            fu, fv = u - x0, v - y0
            dj = (quad[0] * (1 - fu) * (1 - fv) + quad[1] * fu * (1 - fv) + quad[2] * (1 - fu) * fv + quad[3] * fu * fv)
            rel = (z - dj)[smooth] / dj[smooth]
            total += rel.size
            front += int((rel < -0.05).sum())
            errors.append(np.abs(rel[np.abs(rel) < 0.05]))  # the rest is occluded in view j
    errors = np.concatenate(errors)
    return float(np.median(errors)), front / max(total, 1), errors.size


@pytest.mark.parametrize("resolution", [None, RES // 2, (48, 40)])
def test_cameras_survive_resizing(root, resolution):
    ds = ViewDataset(root, num_input_views=4, num_target_views=4, resolution=resolution, channels=("depth",))
    for index in range(3):
        item = ds[index]
        median, front, compared = _consistency(item)
        assert compared > 200, compared
        # at full resolution the residual is the test's own bilinear lookup; resized views
        # are coarser, hence the looser bound (a half-pixel K error gives ~8e-3, see below)
        assert median < (1e-3 if resolution is None else 3e-3), (resolution, index, median)
        assert front < 0.01, (resolution, index, front)


def test_consistency_check_catches_unscaled_intrinsics(root):
    """The check above is sensitive: full-resolution K on half-resolution images fails it."""
    full = ViewDataset(root, channels=("depth",))[0]
    half = ViewDataset(root, resolution=RES // 2, channels=("depth",))[0]
    assert torch.allclose(half["K"][:, :2], full["K"][:, :2] / 2)
    median, front, _ = _consistency(half, K_override=full["K"])
    assert median > 5e-3 or front > 0.05
    shifted = half["K"].clone()  # the centre-at-integer convention's -0.5 px: also caught
    shifted[:, :2, 2] -= 0.5
    median, front, _ = _consistency(half, K_override=shifted)
    assert median > 5e-3 or front > 0.05, median


def test_resize_does_not_blend_edges_into_background(root):
    full = ViewDataset(root, channels=("rgb", "alpha", "depth", "normal"), background="black")[2]
    half = ViewDataset(root, resolution=RES // 2, channels=("rgb", "alpha", "depth", "normal"), background="black")[2]
    d_full, d_half = full["depths"], half["depths"]
    valid = d_half > 0
    # every resized depth is one of the input depths' range of its view, never pulled to 0
    for v in range(d_half.shape[0]):
        lo, hi = d_full[v][d_full[v] > 0].min(), d_full[v][d_full[v] > 0].max()
        assert (d_half[v][valid[v]] >= lo - 1e-5).all() and (d_half[v][valid[v]] <= hi + 1e-5).all()
    n = half["normals"].norm(dim=1)
    assert torch.allclose(n[valid[:, 0]], torch.ones_like(n[valid[:, 0]]), atol=2e-3)
    assert (n[~valid[:, 0]] == 0).all()
    # antialiased colour: mean colour is preserved by downsampling (box-like filter)
    assert torch.allclose(half["images"].mean(dim=(2, 3)), full["images"].mean(dim=(2, 3)), atol=0.02)
    assert torch.allclose(half["alphas"].mean(dim=(2, 3)), full["alphas"].mean(dim=(2, 3)), atol=0.02)


def test_eval_sampling(eval_root):
    ds = ViewDataset(eval_root, num_input_views=4, num_target_views=3, view_sampling="eval")
    rows = raw_rows(eval_root, 1)
    item = ds[1]
    ids = item["view_ids"].tolist()
    assert ids[:4] == [0, 1, 2, 3] and all(rows[v]["role"] == "input" for v in ids[:4])
    assert all(rows[v]["role"] == "target" for v in ids[4:]) and len(set(ids)) == 7
    ds.set_epoch(5)
    assert ds[1]["view_ids"].tolist() == ids  # evaluation does not change with the epoch
    # random sampling over an eval-rig root never picks the orthographic bev view
    rnd = ViewDataset(eval_root, num_input_views=5, num_target_views=5, channels=("alpha",))
    bev = [v for v, r in rows.items() if r["role"] == "bev"]
    assert bev and not set(bev) & set(rnd[1]["view_ids"].tolist())


def test_eval_sampling_refuses_random_rig(root):
    with pytest.raises(ValueError, match="not rendered with the evaluation rig"):
        ViewDataset(root, view_sampling="eval")


@pytest.mark.filterwarnings("ignore:.pin_memory. argument is set as true but no accelerator")
def test_dataloader_workers_and_epochs(root):
    ds = ViewDataset(root, num_input_views=2, num_target_views=2, resolution=32, channels=("rgb", "alpha", "depth"))
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=2, collate_fn=collate, persistent_workers=True, pin_memory=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)  # must reach the persistent workers
        batches = list(loader)
        ids = torch.cat([b["shape_id"] for b in batches]).tolist()
        assert ids == list(range(NUM_SHAPES))
        assert batches[0]["images"].shape == (2, 4, 3, 32, 32) and batches[0]["K"].shape == (2, 4, 3, 3)
        expected = [ds[i]["view_ids"].tolist() for i in range(NUM_SHAPES)]
        assert torch.cat([b["view_ids"] for b in batches]).tolist() == expected


def test_distributed_sampler_covers_each_shape_once(root):
    ds = ViewDataset(root, num_input_views=1, num_target_views=1, channels=("alpha",))
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        seen += [int(b["shape_id"][0]) for b in DataLoader(ds, batch_size=1, sampler=sampler, collate_fn=collate)]
    assert sorted(seen) == list(range(NUM_SHAPES))


def test_collate_and_config_errors(root):
    ds = ViewDataset(root, num_input_views=1, num_target_views=1, channels=("rgb",))
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 2, 3, RES, RES) and batch["shape_id"].tolist() == [0, 1]
    assert batch["view_ids"].shape == (2, 2)
    small = ViewDataset(root, num_input_views=1, num_target_views=1, channels=("rgb",), resolution=16)
    with pytest.raises(ValueError, match="resolution"):
        collate([ds[0], small[0]])
    for kwargs, match in [
        ({"channels": ("rgb", "colour")}, "unknown channel"),
        ({"background": "grey"}, "background"),
        ({"background": 2.0}, "background"),
        ({"resolution": 0}, "resolution"),
        ({"view_sampling": "orbit"}, "view_sampling"),
        ({"num_input_views": 0, "num_target_views": 0}, "at least one view"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            ViewDataset(root, **kwargs)
