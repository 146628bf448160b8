"""The GS-LRM training recipe (issue: a GS-LRM that learns fast): object-centred Gaussians,
GS-LRM's activations, input-view supervision, schedules, curriculum, layout sampling, the
GPU-resident loader, checkpoint versions and the CPU rasterizer's memory guard."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from zeroverse.scene.cameras import RigConfig, make_cameras, rig_identity, rig_rng
from zeroverse.lrm import rasterizer
from zeroverse.lrm.gslrm import GSLRM, GSLRMConfig
from zeroverse.lrm.train import RunClock, TrainConfig, downsample_batch, train


from test_lrm_model import _cameras  # noqa: E402  (cameras on a ring around the object)


@pytest.mark.parametrize("radius", [1.8, 2.5, 3.1])
def test_initial_gaussians_sit_in_the_cube_near_the_plane_through_the_centre(radius):
    torch.manual_seed(0)
    model = GSLRM(GSLRMConfig.preset("tiny"))
    c2w, K = _cameras(2, 4, 32, radius)
    g = model(torch.rand(2, 4, 3, 32, 32), c2w, K)
    assert g.means.abs().max() <= 1.0 + 1e-6  # inside the object's cube
    # Each Gaussian is near the point of its ray closest to the centre: its offset from the
    # plane through the origin perpendicular to its ray is a small share of the spread.
    from zeroverse.lrm.camera_rays import ray_origins_directions

    o, d = ray_origins_directions(c2w, K, 32, 32)
    d = d.reshape(2, -1, 3)
    along = (g.means * d).sum(-1)  # signed distance from that plane (|d| = 1)
    assert along.abs().median() < 0.15, along.abs().median()
    # Unlike v1, which put them ~2.55 from the camera whatever the camera's distance.
    v1 = GSLRM(GSLRMConfig.preset("tiny", distance="camera", scale_activation="sigmoid", init_scale=0.01))
    g1 = v1(torch.rand(2, 4, 3, 32, 32), c2w, K)
    assert (g1.means * d).sum(-1).abs().median() > 0.15 or radius == 2.5


def test_initial_scale_and_opacity_follow_gs_lrm():
    torch.manual_seed(0)
    model = GSLRM(GSLRMConfig.preset("tiny"))
    c2w, K = _cameras(1, 4, 32)
    g = model(torch.rand(1, 4, 3, 32, 32), c2w, K)
    assert abs(g.scales.median().item() - math.exp(-2.3)) < 0.01  # GS-LRM's exp(s - 2.3)
    assert abs(g.opacities.median().item() - 1 / (1 + math.exp(2.0))) < 0.01  # sigmoid(x - 2)
    assert g.scales.max() <= 0.3 + 1e-6  # the 0.3 cap


def test_qk_norm_and_fp32_head_are_settings():
    with_norm = GSLRM(GSLRMConfig.preset("tiny"))
    names = {n for n, _ in with_norm.named_parameters()}
    assert any("q_norm" in n for n in names) and any("k_norm" in n for n in names)
    without = GSLRM(GSLRMConfig.preset("tiny", qk_norm=False))
    assert not any("q_norm" in n for n, _ in without.named_parameters())


def test_old_parameterisation_checkpoints_are_refused_by_version():
    old = GSLRMConfig.preset("tiny").to_dict()
    for key in ("param_version", "distance", "object_spread", "object_bound", "scale_activation", "qk_norm", "fp32_head"):
        old.pop(key)
    with pytest.raises(ValueError, match="parameterisation v1"):
        GSLRMConfig.from_dict(old)
    assert GSLRMConfig.from_dict(GSLRMConfig.preset("tiny").to_dict()) == GSLRMConfig.preset("tiny")


def test_run_clock_schedules():
    cfg = TrainConfig(root="r", out="o", steps=100, warmup_steps=10, depth_weight=1.0, depth_weight_end=0.1,
                      depth_decay=0.5)
    clock = RunClock(cfg)
    assert clock.lr_factor(0) == pytest.approx(0.1) and clock.lr_factor(9) == pytest.approx(1.0)
    assert clock.lr_factor(100) == pytest.approx(0.0, abs=1e-9)
    assert clock.depth_weight(0.0) == pytest.approx(1.0)
    assert clock.depth_weight(0.25) == pytest.approx(0.55)
    assert clock.depth_weight(0.5) == pytest.approx(0.1) and clock.depth_weight(0.9) == pytest.approx(0.1)
    timed = RunClock(TrainConfig(root="r", out="o", steps=10_000, schedule="time", max_minutes=1.0))
    timed.elapsed = 30.0  # half the minute: progress follows the clock, not the step count
    assert timed.progress(10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(root="r", out="o", schedule="time")


def test_downsample_keeps_cameras_exact_and_depth_unblended():
    c2w, K = _cameras(1, 2, 16)
    depth = torch.zeros(1, 2, 1, 16, 16)
    depth[..., :8] = 2.0  # left half covered at depth 2, right half empty
    batch = {"images": torch.rand(1, 2, 3, 16, 16), "alphas": (depth > 0).float(), "depths": depth, "c2w": c2w, "K": K}
    small = downsample_batch(batch, 8)
    assert small["images"].shape[-2:] == (8, 8)
    assert torch.allclose(small["images"][0, 0, :, 0, 0], batch["images"][0, 0, :, :2, :2].mean((-1, -2)))
    assert torch.allclose(small["K"][..., 0, 0], K[..., 0, 0] / 2) and torch.allclose(small["K"][..., 0, 2], K[..., 0, 2] / 2)
    assert set(small["depths"].unique().tolist()) == {0.0, 2.0}  # averaged over covered pixels only
    assert downsample_batch(batch, 16) is batch


def _cfg(tmp_path, name, **kw):
    base = dict(root="unused", out=str(tmp_path / name), preset="tiny", steps=4, batch_size=2, lr=2e-3, warmup_steps=2,
                num_input_views=2, num_target_views=2, log_every=1, image_every=100, ckpt_every=100, num_workers=0,
                seed=0, device="cpu", low_res=16, low_res_until=0.5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def views_root(tmp_path_factory):
    from synthetic_views import write_view_shards

    root = tmp_path_factory.mktemp("recipe") / "data"
    write_view_shards(root, num_shapes=4, views_per_shape=6, resolution=32, with_position=False)
    return root


def test_curriculum_switches_resolution_at_its_step(tmp_path, views_root):
    train(_cfg(tmp_path, "cur", root=str(views_root), low_res=16, low_res_until=0.5))
    records = [json.loads(x) for x in (tmp_path / "cur" / "metrics.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in records] == [16, 16, 32, 32]
    run = json.loads((tmp_path / "cur" / "run.json").read_text())
    assert run["model_config"]["image_size"] == 32  # image_size=None: the views' stored size


def test_input_views_are_rendered_and_supervised(tmp_path, views_root):
    # Supervising inputs as well: the loss covers 2 input + 2 target renders; without, 2.
    from zeroverse.lrm import train as train_module

    seen = []
    original = GSLRM.render

    def spy(g, c2w, K, H, W, *a, **kw):
        seen.append(c2w.shape[1])
        return original(g, c2w, K, H, W, *a, **kw)

    try:
        train_module.GSLRM.render = staticmethod(spy)
        train(_cfg(tmp_path, "in", root=str(views_root), steps=1))
        train(_cfg(tmp_path, "noin", root=str(views_root), steps=1, supervise_inputs=False))
    finally:
        train_module.GSLRM.render = staticmethod(original)
    assert seen == [4, 2]


def test_resident_views_give_the_dataloaders_batches(views_root):
    from zeroverse.data import ViewDataset, collate
    from zeroverse.data.resident import ResidentViews, resident_bytes

    for resolution in (None, 16):
        ds = ViewDataset(views_root, num_input_views=2, num_target_views=3, resolution=resolution, seed=3)
        resident = ResidentViews(ds, device="cpu", num_workers=0, progress=False)
        assert resident.nbytes == resident_bytes(ds)
        keys = [(0, 1), (2, 3), (1, 0)]
        expect = []
        for epoch, index in keys:
            ds.set_epoch(epoch)
            expect.append(ds[index])
        expect = collate(expect)
        got = resident.batch(keys)
        assert set(got) == set(expect)
        for k in expect:
            assert got[k].shape == expect[k].shape, k
            assert torch.allclose(got[k].float(), expect[k].float(), atol=1e-6), k


def test_trains_from_resident_views_like_from_the_dataloader(tmp_path, views_root):
    a = train(_cfg(tmp_path, "dl", root=str(views_root), data_on_gpu="off"))
    b = train(_cfg(tmp_path, "res", root=str(views_root), data_on_gpu="on"))
    assert np.allclose(a.losses, b.losses, rtol=1e-5), (a.losses, b.losses)
    assert "resident" in json.loads((tmp_path / "res" / "run.json").read_text())["data"]


def test_other_image_size_resizes_instead_of_failing(tmp_path, views_root):
    result = train(_cfg(tmp_path, "resize", root=str(views_root), image_size=16, steps=1))
    assert result.step == 1


def test_one_batch_overfit_with_the_full_recipe(tmp_path, views_root):
    from zeroverse.data import ViewDataset

    ds = ViewDataset(views_root, num_input_views=2, num_target_views=2, seed=0)

    class One(torch.utils.data.Dataset):
        def __init__(self):
            ds.set_epoch(0)
            self.item = ds[0]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.item

    train(_cfg(tmp_path, "fit", steps=40, lr=3e-3, warmup_steps=5, image_size=32, low_res=16, low_res_until=1.0),
          dataset=One())
    psnr = [json.loads(x)["psnr"] for x in (tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(psnr[-5:]) > np.mean(psnr[:5]) + 3.0, psnr


def test_layout_views_follow_the_evaluation_layout():
    cfg = RigConfig(num_views=10, layout_views=4)
    cams = make_cameras(cfg, rig_rng(0, 7), 64)
    assert cams.roles[:4] == ["layout"] * 4 and cams.roles[4:] == ["view"] * 6
    eyes = cams.c2w[:4, :3, 3]
    radius = np.linalg.norm(eyes, axis=1)
    assert np.allclose(radius, radius[0])
    elevation = np.degrees(np.arcsin(eyes[:, 2] / radius))
    assert elevation.max() - elevation.min() <= cfg.layout_jitter_deg + 1e-6
    assert cfg.layout_elevation_range_deg[0] - 5 <= elevation.mean() <= cfg.layout_elevation_range_deg[1] + 5
    azimuth = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
    gaps = np.diff(np.sort(azimuth))
    assert np.all(np.abs(gaps - 90) <= 2 * cfg.layout_jitter_deg + 1e-6)
    # Roots written before layout views existed keep their identity (they still resume).
    assert "layout_views" not in rig_identity(RigConfig()) and rig_identity(cfg)["layout_views"] == 4
    plain = make_cameras(RigConfig(num_views=6), rig_rng(0, 7), 64)
    assert plain.roles == ["view"] * 6
    with pytest.raises(ValueError, match="layout_views"):
        RigConfig(kind="eval", layout_views=4)


def test_mixed_sampling_gives_a_share_of_samples_layout_inputs():
    from zeroverse.data.config import ViewConfig
    from zeroverse.data.dataset import ShapeEntry, ViewReader

    roles = ["layout"] * 4 + ["view"] * 8
    views = np.arange(12)
    proj = ["perspective"] * 12
    reader = ViewReader(ViewConfig.make(4, 4, None, ("rgb",), "white", "mixed", 0, False, layout_share=0.3))
    hits = 0
    for shape_id in range(400):
        rows = reader.choose_rows(ShapeEntry(shape_id, "x", 0, 12), views, roles, proj, epoch=0)
        assert len(set(rows)) == 8
        if rows[:4] == [0, 1, 2, 3]:
            hits += 1
            assert not set(rows[4:]) & {0, 1, 2, 3}
    assert 0.2 < hits / 400 < 0.4, hits
    # Without layout views, mixed sampling is plain random sampling.
    random_reader = ViewReader(ViewConfig.make(4, 4, None, ("rgb",), "white", "random", 0, False))
    plain = ["view"] * 12
    for shape_id in range(20):
        e = ShapeEntry(shape_id, "x", 0, 12)
        assert reader.choose_rows(e, views, plain, proj, 0) == random_reader.choose_rows(e, views, plain, proj, 0)


def test_cpu_rasterizer_refuses_before_exhausting_memory(monkeypatch):
    monkeypatch.setattr(rasterizer, "available_memory_bytes", lambda: 2_000_000)
    torch.manual_seed(0)
    B, N, size = 1, 4 * 64 * 64, 64
    c2w, K = _cameras(B, 4, size)
    means = (torch.rand(B, N, 3) * 2 - 1).requires_grad_(True)
    with pytest.raises(MemoryError, match="available memory"):
        rasterizer.rasterize_gaussians(means, torch.randn(B, N, 4), torch.full((B, N, 3), 0.1), torch.full((B, N), 0.5),
                                       torch.rand(B, N, 3), torch.linalg.inv(c2w), K, size, size, backend="torch")


def test_render_without_depth_returns_none():
    torch.manual_seed(0)
    model = GSLRM(GSLRMConfig.preset("tiny"))
    c2w, K = _cameras(1, 4, 32)
    g = model(torch.rand(1, 4, 3, 32, 32), c2w, K)
    out = GSLRM.render(g, c2w[:, :2], K[:, :2], 32, 32, torch.ones(3), with_depth=False)
    assert out.depth is None and out.rgb.shape == (1, 2, 32, 32, 3)


def test_model_options_reach_the_model(tmp_path, views_root):
    train(_cfg(tmp_path, "opt", root=str(views_root), steps=1, model_options={"distance": "camera", "qk_norm": False}))
    run = json.loads((tmp_path / "opt" / "run.json").read_text())
    assert run["model_config"]["distance"] == "camera" and run["model_config"]["qk_norm"] is False
    with pytest.raises(ValueError, match="not GS-LRM settings"):
        _cfg(tmp_path, "bad", model_options={"colour": 1})
    shutil.rmtree(tmp_path / "opt")


def test_a_failing_compile_falls_back_to_eager(caplog):
    import logging

    from zeroverse.lrm.train import forward_step

    torch.manual_seed(0)
    model = GSLRM(GSLRMConfig.preset("tiny"))
    c2w, K = _cameras(1, 4, 32)
    inputs = {"images": torch.rand(1, 4, 3, 32, 32), "c2w": c2w, "K": K}
    expect = model(inputs["images"], c2w, K).means

    def broken(*args, **kwargs):
        raise RuntimeError("no C compiler on this machine")

    for block in model.blocks:
        block._compiled_call_impl = broken
    assert model.blocks_compiled
    with caplog.at_level(logging.WARNING):
        got = forward_step(model, model, inputs, is_main=True).means
    assert "torch.compile failed" in caplog.text and not model.blocks_compiled
    assert torch.equal(got, expect)
