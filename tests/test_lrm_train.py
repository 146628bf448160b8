"""Training-loop tests on a tiny synthetic multi-view dataset (the real ViewDataset comes later).

Each scene is a few coloured Gaussian blobs inside the object cube, rendered by the torch
rasterizer from cameras on a ring around the origin, composited on white like the real data.
"""

import json
import logging
import math
import shutil

import pytest
import torch
from torch.utils.data import Dataset

from zeroverse.lrm import losses, metrics
from zeroverse.lrm.camera_rays import intrinsics_from_fov, look_at, world_to_camera
from zeroverse.lrm.checkpoint import load_checkpoint, load_model
from zeroverse.lrm.rasterizer import rasterize_gaussians
from zeroverse.lrm.train import TrainConfig, train


class BlobScenes(Dataset):
    def __init__(self, num_scenes=4, views=4, size=32, seed=0):
        self.items = []
        for i in range(num_scenes):
            g = torch.Generator().manual_seed(seed * 1000 + i)
            n = 6
            means = (torch.rand(1, n, 3, generator=g) * 2 - 1) * 0.5
            scales = torch.rand(1, n, 3, generator=g) * 0.15 + 0.15
            quats = torch.randn(1, n, 4, generator=g)
            colors = torch.rand(1, n, 3, generator=g)
            opac = torch.full((1, n), 0.95)
            az = torch.rand(views, generator=g) * 2 * math.pi
            el = torch.rand(views, generator=g) * 0.6 + 0.1
            r = 2.5
            eye = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], -1)
            c2w = look_at(eye, torch.zeros(3))
            K = intrinsics_from_fov(50.0, size, size).expand(views, 3, 3).contiguous()
            with torch.no_grad():
                out = rasterize_gaussians(means, quats, scales, opac, colors,
                                          world_to_camera(c2w)[None], K[None], size, size,
                                          background=torch.ones(3), backend="torch")
            self.items.append({
                "images": out.rgb[0].permute(0, 3, 1, 2).contiguous(),
                "alphas": out.alpha[0].permute(0, 3, 1, 2).contiguous(),
                "depths": out.depth[0].permute(0, 3, 1, 2).contiguous(),
                "c2w": c2w.float(),
                "K": K.float(),
                "shape_id": torch.tensor(i, dtype=torch.int64),
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def scenes():
    return BlobScenes()


def _cfg(tmp_path, name, **kw):
    base = dict(root="unused", out=str(tmp_path / name), preset="tiny", steps=4, batch_size=2,
                lr=2e-3, warmup_steps=2, num_input_views=2, num_target_views=2, image_size=32,
                log_every=1, image_every=100, ckpt_every=2, num_workers=0, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_on_tiny_scenes(tmp_path, scenes, caplog):
    cfg = _cfg(tmp_path, "fall", steps=30, ckpt_every=30, image_every=15)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, dataset=scenes)
    assert "perceptual loss skipped" in caplog.text
    assert not result.perceptual and result.step == 30 and len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    out = tmp_path / "fall"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"loss", "mse", "ssim", "psnr", "lr", "grad_norm", "samples_per_s", "depth", "alpha"} <= set(records[0])
    assert records[-1]["psnr"] > records[0]["psnr"]
    # The geometry terms (the scenes carry depths and alphas) fall too.
    for term in ("depth", "alpha"):
        early = sum(r[term] for r in records[:5]) / 5
        late = sum(r[term] for r in records[-5:]) / 5
        assert late < early, (term, early, late)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "step-0000001.png", "step-0000015.png", "step-0000030.png"]
    ckpt = load_checkpoint(out / "latest.pt")  # weights_only=True
    assert ckpt["step"] == 30 and ckpt["model_config"]["width"] == 64
    model, mcfg = load_model(out / "ckpt-30.pt")
    assert mcfg.num_input_views == 2 and not model.training


def test_geometry_terms_can_be_switched_off(tmp_path, scenes):
    train(_cfg(tmp_path, "off", steps=2, depth_weight=0.0, alpha_weight=0.0), dataset=scenes)
    record = json.loads((tmp_path / "off" / "metrics.jsonl").read_text().splitlines()[0])
    assert "depth" not in record and "alpha" not in record
    with pytest.raises(ValueError, match="depth_weight"):
        _cfg(tmp_path, "bad", depth_weight=-1.0)


def test_resume_reproduces_next_steps(tmp_path, scenes):
    full = train(_cfg(tmp_path, "a"), dataset=scenes)  # 4 steps, checkpoints at 2 and 4
    assert len(full.losses) == 4
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    shutil.copyfile(tmp_path / "a" / "ckpt-2.pt", resumed_dir / "latest.pt")
    resumed = train(_cfg(tmp_path, "b", resume=True), dataset=scenes)
    # Steps 3 and 4 cross into the second epoch (2 batches per epoch): data order, model,
    # optimizer and schedule all come back exactly.
    assert resumed.losses == full.losses[2:]
    a = load_checkpoint(tmp_path / "a" / "latest.pt")["model"]
    b = load_checkpoint(resumed_dir / "latest.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trains_from_view_shards_and_resumes(tmp_path):
    # The real path: ViewDataset over Parquet view shards (tests/synthetic_views.py ray-casts
    # them), its collate, and set_epoch (new views per shape each epoch) across a resume.
    from synthetic_views import write_view_shards

    root = tmp_path / "data"
    write_view_shards(root, num_shapes=4, views_per_shape=8, resolution=32)
    full = train(_cfg(tmp_path, "a", root=str(root)))
    (tmp_path / "b").mkdir()
    shutil.copyfile(tmp_path / "a" / "ckpt-2.pt", tmp_path / "b" / "latest.pt")
    resumed = train(_cfg(tmp_path, "b", root=str(root), resume=True))
    assert resumed.losses == full.losses[2:]


def test_refuses_to_overwrite_and_checks_model_config(tmp_path, scenes):
    train(_cfg(tmp_path, "c", steps=2), dataset=scenes)
    with pytest.raises(ValueError, match="resume"):
        train(_cfg(tmp_path, "c", steps=2), dataset=scenes)
    with pytest.raises(ValueError, match="different model config"):
        train(_cfg(tmp_path, "c", steps=3, resume=True, num_input_views=1), dataset=scenes)


@pytest.mark.gpu
def test_train_on_cuda_smoke(tmp_path, scenes):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # bf16 autocast, fused AdamW, gsplat when installed (else the torch rasterizer on CUDA).
    result = train(_cfg(tmp_path, "cuda", steps=6, device="cuda", warmup_steps=1), dataset=scenes)
    assert result.step == 6 and all(math.isfinite(v) for v in result.losses)
    assert result.losses[-1] < result.losses[0]


def test_config_validation():
    with pytest.raises(ValueError, match="model"):
        TrainConfig(root="r", out="o", model="nerf")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(root="r", out="o", preset="huge")
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(root="r", out="o", steps=0)


# --------------------------------------------------------------------------------------------
# Perceptual loss: never without weights
# --------------------------------------------------------------------------------------------


def _fake_vgg_file(path):
    """A file shaped like torchvision's VGG16 state dict (stands in for the user's weights)."""
    from zeroverse.lrm.losses import VGG16_CONVS

    g = torch.Generator().manual_seed(0)
    sd = {}
    for idx, cin, cout in VGG16_CONVS:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(cout)
    torch.save(sd, path)
    return path


def test_perceptual_loss_refuses_without_weights(tmp_path):
    with pytest.raises(ValueError, match="needs pretrained VGG16 weights"):
        losses.PerceptualLoss(None)
    with pytest.raises(FileNotFoundError):
        losses.PerceptualLoss(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="not a VGG16 state dict"):
        losses.PerceptualLoss(bad)
    x = torch.rand(2, 3, 3, 32, 32)
    assert metrics.lpips(x, x, None) is None


def test_perceptual_loss_with_given_weights(tmp_path, scenes):
    path = _fake_vgg_file(tmp_path / "vgg16.pth")
    p = losses.PerceptualLoss(path)
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32)
    assert p(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert p(x, y).item() > 0
    assert metrics.lpips(x, y, p).shape == (2,)
    result = train(_cfg(tmp_path, "p", steps=2, perceptual_weights=str(path)), dataset=scenes)
    assert result.perceptual and all(math.isfinite(v) for v in result.losses)


def test_run_sampler_resumes_mid_epoch_and_covers_each_epoch_once():
    from itertools import islice

    from zeroverse.lrm.run import EpochItems, RunSampler

    n, batch = 10, 3  # 3 whole batches per epoch; one sample per epoch is left out
    full = list(islice(iter(RunSampler(n, seed=5, rank=0, world=1, batch_size=batch, step=0)), 5 * 9))
    epochs = [[i for e, i in full if e == k] for k in range(5)]
    assert all(len(ep) == 9 and len(set(ep)) == 9 for ep in epochs)
    assert epochs[0] != epochs[1]  # a new permutation each epoch
    resumed = list(islice(iter(RunSampler(n, seed=5, rank=0, world=1, batch_size=batch, step=4)), 5 * 9 - 12))
    assert resumed == full[12:]
    # Two ranks split each epoch without overlap.
    r0 = [i for e, i in islice(iter(RunSampler(n, 5, 0, 2, 2, 0)), 4) if e == 0]
    r1 = [i for e, i in islice(iter(RunSampler(n, 5, 1, 2, 2, 0)), 4) if e == 0]
    assert not set(r0) & set(r1)

    class Recorder:
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

        def __getitem__(self, i):
            return (self.epoch, i)

        def __len__(self):
            return n

    assert EpochItems(Recorder())[(3, 7)] == (3, 7)
