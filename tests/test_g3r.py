"""G3R learned optimizer: initialisation, schedule, normalisation, training, resume, baseline.

CPU, tiny sizes: 32² views, a few hundred Gaussians, the pure-PyTorch rasterizer.
"""

import json
import math
import shutil

import pytest
import torch

from zeroverse.lrm import g3r
from zeroverse.lrm.baseline_3dgs import AdamConfig, optimize_adam
from zeroverse.lrm.camera_rays import intrinsics_from_fov, look_at
from zeroverse.lrm.checkpoint import load_checkpoint
from zeroverse.lrm.g3r import G3R, G3RConfig
from zeroverse.lrm.g3r_train import G3RTrainConfig, load_g3r, refine_shape, train_g3r

SIZE = 32


# --------------------------------------------------------------------------------------------
# Synthetic depth of known surfaces
# --------------------------------------------------------------------------------------------


def _cameras(eyes, size=SIZE):
    eyes = torch.tensor(eyes, dtype=torch.float32)
    c2w = look_at(eyes, torch.zeros(3), up=torch.tensor([0.0, 1.0, 0.0]))
    K = intrinsics_from_fov(50.0, size, size).expand(len(eyes), 3, 3).contiguous()
    return c2w, K


def _rays(c2w, K, size=SIZE):
    """World direction per pixel with unit camera-z component: point = centre + depth * d."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    r = torch.stack([(u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None],
                     (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None],
                     torch.ones(len(K), size, size)], -1)  # [V, H, W, 3]
    return torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], r)


def _plane_depth(c2w, K, normal, size=SIZE):
    """Planar depth of the plane n·x = 0 (0 where the ray misses it or hits behind)."""
    d = _rays(c2w, K, size)
    c = c2w[:, None, None, :3, 3]
    z = -(c * normal).sum(-1) / (d * normal).sum(-1)
    return torch.where(z > 0, z, torch.zeros_like(z))[:, None]  # [V, 1, H, W]


def _sphere_depth(c2w, K, centre, radius, size=SIZE):
    d = _rays(c2w, K, size)
    oc = c2w[:, None, None, :3, 3] - centre
    a, b, c = (d * d).sum(-1), (oc * d).sum(-1), (oc * oc).sum(-1) - radius**2
    disc = b * b - a * c
    z = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where(disc > 0, z, torch.zeros_like(z))[:, None]


def _images(V, color=(0.2, 0.5, 0.8), size=SIZE):
    return torch.tensor(color).view(1, 3, 1, 1).expand(V, 3, size, size).contiguous()


def _third_nn(points):  # brute force: distance to the 3rd-nearest other point
    d = torch.cdist(points.double(), points.double())
    return d.sort(dim=-1).values[:, 3].float()


@pytest.mark.parametrize("method", ["voxel", "fps"])
def test_init_from_depth_puts_points_on_a_sphere(method):
    centre, radius = torch.tensor([0.1, -0.2, 0.05]), 0.6
    c2w, K = _cameras([[2.5, 0.3, 0.8], [-2.2, 1.0, 0.5], [0.2, -2.4, -0.9], [0.4, 0.5, 2.6]])
    depth = _sphere_depth(c2w, K, centre, radius)
    assert (depth > 0).float().mean() > 0.2
    cfg = G3RConfig.preset("tiny", num_points=300, downsample=method)
    state = g3r.init_from_depth(_images(4), depth, c2w, K, cfg, torch.Generator().manual_seed(0))
    assert state.shape == (300, 14 + cfg.latent_dim)
    pts = state[:, :3]
    err = ((pts - centre).norm(dim=-1) - radius).abs()
    assert err.max() < 1e-4, err.max()
    # Spread over the whole visible sphere, not clumped: points reach every octant about the centre.
    octants = ((pts - centre > 0).long() * torch.tensor([1, 2, 4])).sum(-1)
    assert len(torch.unique(octants)) == 8
    # Scale: distance to the 3rd-nearest other point, isotropic; identity rotation; opacity 0.7.
    scales = state[:, 3:6].exp()
    expect = _third_nn(pts).clamp(cfg.min_scale, cfg.max_scale)
    torch.testing.assert_close(scales, expect[:, None].expand(-1, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state[:, 6:10], torch.tensor([1.0, 0, 0, 0]).expand(300, 4))
    torch.testing.assert_close(torch.sigmoid(state[:, 13]), torch.full((300,), 0.7))
    torch.testing.assert_close(torch.sigmoid(state[:, 10:13]), torch.tensor([0.2, 0.5, 0.8]).expand(300, 3),
                               rtol=1e-4, atol=1e-4)
    # Deterministic given the seed; another seed draws another subset and latent.
    again = g3r.init_from_depth(_images(4), depth, c2w, K, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(state, again)
    other = g3r.init_from_depth(_images(4), depth, c2w, K, cfg, torch.Generator().manual_seed(1))
    assert not torch.equal(state[:, 14:], other[:, 14:])
    for seed in range(2, 6):  # the invariants hold for every seed
        s = g3r.init_from_depth(_images(4), depth, c2w, K, cfg, torch.Generator().manual_seed(seed))
        assert s.shape == state.shape
        assert ((s[:, :3] - centre).norm(dim=-1) - radius).abs().max() < 1e-4
        torch.testing.assert_close(s[:, 3].exp(), _third_nn(s[:, :3]).clamp(cfg.min_scale, cfg.max_scale),
                                   rtol=1e-4, atol=1e-6)


def test_init_from_depth_plane_skips_empty_pixels_and_pads():
    normal = torch.tensor([0.3, -0.2, 1.0])
    normal = normal / normal.norm()
    c2w, K = _cameras([[0.3, 0.4, 2.0], [-0.8, 0.2, 1.7]], size=8)
    depth = _plane_depth(c2w, K, normal, size=8)
    depth[0, 0, :2] = 0.0  # empty
    depth[1, 0, :, :3] = 1e10  # Cycles' background value
    alphas = torch.ones_like(depth)
    alphas[0, 0, 5:] = 0.2  # transparent pixels are skipped too
    valid = int(((depth > 0) & (depth < 1e9) & (alphas >= 0.5)).sum())
    cfg = G3RConfig.preset("tiny", num_points=200)
    assert valid < cfg.num_points  # fewer pixels than Gaussians: padded
    state = g3r.init_from_depth(_images(2, size=8), depth, c2w, K, cfg,
                                torch.Generator().manual_seed(0), alphas=alphas)
    assert state.shape[0] == 200
    pts, scales = state[:, :3], state[:, 3:6].exp()
    # The first `valid` rows are the back-projected pixels, exactly on the plane.
    assert (pts[:valid] @ normal).abs().max() < 1e-5
    torch.testing.assert_close(scales[:valid, 0], _third_nn(pts[:valid]).clamp(cfg.min_scale, cfg.max_scale),
                               rtol=1e-4, atol=1e-6)
    # Padding repeats points, jittered by a tenth of their scale: near the plane, never coincident.
    assert ((pts[valid:] @ normal).abs() < 0.6 * scales[valid:, 0]).all()
    assert torch.pdist(pts).min() > 0
    with pytest.raises(ValueError, match="no source view"):
        g3r.init_from_depth(_images(2, size=8), torch.zeros_like(depth), c2w, K, cfg,
                            torch.Generator().manual_seed(0))


def test_unproject_matches_numpy_reference():
    from zeroverse.scene.cameras import unproject_depth as reference

    c2w, K = _cameras([[2.0, 1.0, 0.7], [0.5, -2.0, 1.5]])
    depth = _sphere_depth(c2w, K, torch.zeros(3), 0.7)
    out = g3r.unproject_depth(depth[:, 0], c2w, K)
    for v in range(2):
        k = K[v]
        ref = reference(depth[v, 0].double().numpy(), c2w[v].double().numpy(),
                        [float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])])
        torch.testing.assert_close(out[v].double(), torch.from_numpy(ref), atol=1e-5, rtol=0)


def test_knn_matches_brute_force():
    p = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(0))
    dist, idx = g3r.knn(p, 5, chunk=64)
    ref = torch.cdist(p.double(), p.double()).sort(dim=-1)
    torch.testing.assert_close(dist.double(), ref.values[..., :5], rtol=1e-5, atol=1e-6)
    assert (idx[..., 0] == torch.arange(300)).all()  # the point itself comes first


# --------------------------------------------------------------------------------------------
# Schedule and gradient normalisation
# --------------------------------------------------------------------------------------------


def test_gamma_decays_as_a_cosine():
    T, hi, lo = 24, 1.0, 0.05
    values = [g3r.gamma(t, T, hi, lo) for t in range(T + 1)]
    assert values[0] == pytest.approx(hi) and values[-1] == pytest.approx(lo)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[T // 2] == pytest.approx((hi + lo) / 2)
    for t in range(T + 1):
        assert values[t] == pytest.approx(lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * t / T)))
    model = G3R(G3RConfig.preset("tiny", gamma_max=0.8, gamma_min=0.1))
    assert model.gamma(0, 6) == pytest.approx(0.8) and model.gamma(6, 6) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        g3r.gamma(7, 6, hi, lo)


def test_gradient_normalisation_gives_unit_rms_per_channel():
    g = torch.Generator().manual_seed(0)
    magnitudes = torch.logspace(-18, 3, 8)
    grad = torch.randn(3, 500, 8, generator=g) * magnitudes
    grad[1, :, 2] = 0.0  # a channel without gradient (e.g. invisible points' latents) stays 0
    out = g3r.normalize_gradient(grad)
    rms = out.square().mean(dim=1).sqrt()
    expect = torch.ones(3, 8)
    expect[1, 2] = 0.0
    torch.testing.assert_close(rms, expect, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g3r.grad_rms(out), expect, rtol=1e-4, atol=1e-6)
    # grad_rms itself does not underflow on tiny gradients.
    torch.testing.assert_close(g3r.grad_rms(grad)[0], grad[0].double().square().mean(0).sqrt().float(),
                               rtol=1e-4, atol=0)
    # Direction within a channel is kept.
    assert (torch.sign(out) == torch.sign(grad)).all()


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------


def _scene(V=4, size=SIZE, seed=0):
    c2w, K = _cameras([[2.5 * math.cos(a), 2.5 * math.sin(a), 0.8] for a in torch.arange(V) * 2.1 + seed])
    depth = _sphere_depth(c2w, K, torch.zeros(3), 0.6, size)
    return _images(V, size=size), depth, c2w, K


def test_fresh_model_decodes_the_scaffold_and_gaussians_round_trip():
    cfg = G3RConfig.preset("tiny")
    model = G3R(cfg)
    images, depth, c2w, K = _scene()
    s = g3r.init_from_depth(images, depth, c2w, K, cfg, torch.Generator().manual_seed(0))[None]
    a, b = model.decode(s), g3r.activate(s[..., :14], cfg)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    # The GS-LRM hook: Gaussians in, a state that decodes back to the same Gaussians out.
    s2 = g3r.init_from_gaussians(a[0], cfg, torch.Generator().manual_seed(1))
    back = model.decode(s2[None])[0]
    order = torch.cdist(back.means, a.means[0]).argmin(dim=1)
    torch.testing.assert_close(back.means, a.means[0][order])
    torch.testing.assert_close(back.scales, a.scales[0][order], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(back.opacities, a.opacities[0][order], rtol=1e-4, atol=1e-5)


def test_training_gradient_shortcut_equals_source_gradient():
    # The trainer reads ∇S_{t+1} off the supervision render of S_{t+1} instead of rendering
    # again: it must be exactly what refine() computes.
    torch.manual_seed(0)
    cfg = G3RConfig.preset("tiny", num_points=64)
    model = G3R(cfg)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)  # not the identity decoder
    images, depth, c2w, K = _scene(V=3)
    s0 = g3r.init_from_depth(images, depth, c2w, K, cfg, torch.Generator().manual_seed(0))[None]
    grad, _ = g3r.source_gradient(model, s0, images[None], c2w[None], K[None], torch.ones(3), "torch")
    s1 = model(s0, grad, 0, 4, g3r.grad_rms(grad))  # depends on the parameters: a non-leaf
    cams = torch.cat([c2w, _cameras([[0.0, 2.6, -0.5]])[0]])[None]
    Ks = torch.cat([K, K[:1]])[None]
    pred = g3r.images_of(g3r.render(model.decode(s1), cams, Ks, SIZE, SIZE, torch.ones(3), "torch"))
    mse = (pred[:, :3] - images[None]).square().mean(dim=(1, 2, 3, 4))
    (shortcut,) = torch.autograd.grad(mse.sum(), s1, retain_graph=True)
    reference, _ = g3r.source_gradient(model, s1, images[None], c2w[None], K[None], torch.ones(3), "torch")
    torch.testing.assert_close(shortcut, reference, rtol=1e-4, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Training on view shards
# --------------------------------------------------------------------------------------------


def _train_cfg(root, out, **kw):
    base = dict(root=str(root), out=str(out), preset="tiny", steps=4, batch_size=2, lr=3e-3,
                warmup_steps=3, num_input_views=6, num_target_views=2, image_size=SIZE,
                unroll_steps=3, turbo_steps=2, turbo_fraction=0.25, unroll_warmup=4,
                truncate_every=2, log_every=1, image_every=100, ckpt_every=2, num_workers=0,
                seed=0, device="cpu", backend="torch")
    base.update(kw)
    return G3RTrainConfig(**base)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from synthetic_views import write_view_shards

    base = tmp_path_factory.mktemp("g3r_data")
    write_view_shards(base / "train", num_shapes=6, views_per_shape=8, resolution=SIZE, seed=0)
    write_view_shards(base / "heldout", num_shapes=2, views_per_shape=8, resolution=SIZE, seed=1)
    return base


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("g3r_run") / "run"
    result = train_g3r(_train_cfg(shards / "train", out, steps=30, ckpt_every=30, image_every=15,
                                  unroll_warmup=6))
    return out, result


def test_training_writes_metrics_images_and_checkpoints(trained):
    out, result = trained
    assert result.step == 30 and len(result.losses) == 30
    assert all(math.isfinite(v) for v in result.losses)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"loss", "mse_source", "mse_novel", "psnr_novel", "psnr_source_init", "unroll", "turbo",
            "flat", "lr", "grad_norm"} <= set(records[0])
    unroll = [r["unroll"] for r in records]
    assert unroll[0] == 1 and max(unroll) == 3  # unroll warm-up: 1 step first, T = 3 later
    assert any(r["turbo"] for r in records)  # some iterations unroll the turbo schedule (T = 2)
    assert (out / "images" / "step-0000015.png").is_file()
    ckpt = load_checkpoint(out / "latest.pt")  # weights_only=True
    assert ckpt["model_kind"] == "g3r" and ckpt["step"] == 30
    assert ckpt["model_config"]["steps"] == 3 and ckpt["model_config"]["turbo_steps"] == 2


def test_one_learned_step_lowers_the_loss_on_a_held_out_shape(trained, shards):
    from zeroverse.data import ViewDataset, collate

    out, _ = trained
    model, cfg, _ = load_g3r(out / "latest.pt")
    fresh = G3R(cfg)
    ds = ViewDataset(shards / "heldout", num_input_views=6, num_target_views=2, resolution=SIZE)
    batch = collate([ds[0], ds[1]])
    src = {k: batch[k][:, :6] for k in ("images", "depths", "alphas", "c2w", "K")}
    after = {}
    for name, m in (("trained", model), ("fresh", fresh)):
        s0 = g3r.init_batch_from_depth(src["images"], src["depths"], src["c2w"], src["K"], cfg,
                                       torch.Generator().manual_seed(7), src["alphas"])
        res = g3r.refine(m, s0, src["images"], src["c2w"], src["K"], steps=1,
                         background=torch.ones(3), backend="torch")
        before, after[name] = res.source_mse
        assert res.render_passes == 1
        if name == "trained":
            assert (after[name] < 0.8 * before).all(), (before, after[name])
    # Training made the step better than the untrained optimizer's (normalised gradient descent).
    assert (after["trained"] < after["fresh"]).all(), after


def test_refine_full_schedule_and_refine_shape(trained, shards, tmp_path):
    out, _ = trained
    report = refine_shape(out / "latest.pt", shards / "heldout", 1, out=tmp_path / "s.ply",
                          num_heldout_views=2, device="cpu", backend="torch")
    assert report.steps == 3 and report.render_passes == 3
    assert report.source_psnr > report.source_psnr_init + 1.0
    assert report.heldout_psnr is not None and math.isfinite(report.heldout_psnr)
    from zeroverse.lrm.ply import read_ply

    g = read_ply(report.ply)
    assert g.means.shape == (256, 3)
    torch.testing.assert_close(g.means, report.gaussians.means)
    turbo = refine_shape(out / "latest.pt", shards / "heldout", 1, turbo=True, device="cpu", backend="torch")
    assert turbo.render_passes == 2 and turbo.ply is None
    assert json.dumps(report.summary())


def test_checkpoint_resumes_with_the_same_next_losses(shards, tmp_path):
    full = train_g3r(_train_cfg(shards / "train", tmp_path / "a"))  # 4 iterations, ckpts at 2, 4
    assert len(full.losses) == 4
    (tmp_path / "b").mkdir()
    shutil.copyfile(tmp_path / "a" / "ckpt-2.pt", tmp_path / "b" / "latest.pt")
    resumed = train_g3r(_train_cfg(shards / "train", tmp_path / "b", resume=True))
    # Iteration 4 starts the second epoch (6 shapes / batch 2 = 3 batches per epoch):
    # data order, init draws, turbo draws, model, optimizer and schedule all come back.
    assert resumed.losses == full.losses[2:]
    a = load_checkpoint(tmp_path / "a" / "latest.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "latest.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="resume"):
        train_g3r(_train_cfg(shards / "train", tmp_path / "a"))
    with pytest.raises(ValueError, match="different model config"):
        train_g3r(_train_cfg(shards / "train", tmp_path / "a", steps=5, resume=True, unroll_steps=5))


# --------------------------------------------------------------------------------------------
# Adam baseline
# --------------------------------------------------------------------------------------------


def test_max_minutes_stops_early_with_a_checkpoint(shards, tmp_path):
    # A time limit far below one iteration: the run stops after its first step and still
    # leaves a loadable checkpoint and a metrics record for it.
    result = train_g3r(_train_cfg(shards / "train", tmp_path / "run", steps=50, max_minutes=1e-6))
    assert result.step == 1 and result.last_checkpoint is not None
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 1
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1
    with pytest.raises(ValueError, match="max_minutes"):
        _train_cfg(shards / "train", tmp_path / "x", max_minutes=0.0)


def test_adam_baseline_lowers_the_loss():
    cfg = G3RConfig.preset("tiny")
    images, depth, c2w, K = _scene(V=4)
    images = images.clone()
    images[:, 0] = torch.linspace(0, 1, SIZE)  # something the flat-coloured init must learn
    s0 = g3r.init_from_depth(images, depth, c2w, K, cfg, torch.Generator().manual_seed(0))[None]
    res = optimize_adam(s0[..., :14], images[None], c2w[None], K[None],
                        AdamConfig(steps=20, lr_scale=3.0), g3r_cfg=cfg,
                        generator=torch.Generator().manual_seed(0), background=torch.ones(3),
                        backend="torch")
    assert res.render_passes == 20 and len(res.losses) == 20
    assert res.losses[-1] < 0.9 * res.losses[0], res.losses
    assert sum(res.losses[-5:]) < sum(res.losses[:5])
    assert res.explicit.shape == s0[..., :14].shape
    # views_per_step: a seeded subset of the source views each step.
    sub = optimize_adam(s0[..., :14], images[None], c2w[None], K[None],
                        AdamConfig(steps=3, views_per_step=2), g3r_cfg=cfg,
                        generator=torch.Generator().manual_seed(0), backend="torch")
    assert sub.render_passes == 3 and sub.source_mse[0].shape == (1,)


def test_config_validation():
    with pytest.raises(ValueError, match="preset"):
        G3RConfig.preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        G3RConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="downsample"):
        G3RConfig(downsample="random")
    cfg = G3RConfig.preset("tiny")
    assert G3RConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="model"):
        G3RTrainConfig(root="r", out="o", model="gs-lrm")
    with pytest.raises(ValueError, match="turbo_fraction"):
        G3RTrainConfig(root="r", out="o", turbo_fraction=2.0)
    with pytest.raises(ValueError, match="steps"):
        AdamConfig(steps=0)
