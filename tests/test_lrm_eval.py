"""Evaluation and .ply export of GS-LRM checkpoints (zeroverse.lrm.evaluate).

A tiny model is trained for two steps on synthetic view shards (tests/synthetic_views.py, the
same ViewDataset path the real trainer uses), then scored on eval-rig shards, on two real GSO
objects rendered by Blender, and on two held-out procedural shapes rendered by the farm.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic_views import write_view_shards
from zeroverse.cli.eval_views import EvalRender, evaluate_procedural, evaluate_real
from zeroverse.lrm.checkpoint import load_model, save_checkpoint
from zeroverse.lrm.evaluate import LPIPS_SKIPPED, evaluate
from zeroverse.lrm.export import export_ply_from_checkpoint, predict_gaussians
from zeroverse.lrm.ply import read_ply
from zeroverse.lrm.train import TrainConfig, train

GSO25 = Path(__file__).resolve().parents[2] / "shared" / "evaldata" / "gso25"
if not GSO25.is_dir():
    GSO25 = Path("/work/shared/evaldata/gso25")
RES = 32  # the tiny preset's image size
TARGETS = 6


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lrm_eval")
    train_root, eval_root, small_root = base / "train", base / "eval", base / "small"
    write_view_shards(train_root, num_shapes=4, views_per_shape=6, resolution=RES, rig="random")
    write_view_shards(eval_root, num_shapes=3, views_per_shape=4 + TARGETS, resolution=RES, rig="eval", shard_size=2)
    write_view_shards(small_root, num_shapes=1, views_per_shape=6, resolution=16, rig="eval")
    return {"base": base, "train": train_root, "eval": eval_root, "small": small_root}


@pytest.fixture(scope="module")
def ckpt(roots) -> Path:
    """A real training checkpoint (optimizer, scheduler, rng, configs) of a tiny GS-LRM."""
    cfg = TrainConfig(root=str(roots["train"]), out=str(roots["base"] / "run"), preset="tiny", steps=2, batch_size=2,
                      warmup_steps=1, num_input_views=4, num_target_views=2, image_size=RES, log_every=1,
                      image_every=100, ckpt_every=2, num_workers=0, device="cpu")
    result = train(cfg)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_evaluate_writes_metrics_md_and_grid(tmp_path, roots, ckpt):
    out = tmp_path / "eval"
    result = evaluate(ckpt, roots["eval"], out, progress=False)
    report = json.loads((out / "metrics.json").read_text())
    assert report["step"] == result.step == 2
    assert [o["name"] for o in report["objects"]] == ["shape 0", "shape 1", "shape 2"]
    for o in report["objects"]:
        assert _finite(o["psnr"]) and _finite(o["ssim"]) and -1 <= o["ssim"] <= 1
        assert o["lpips"] is None and o["num_targets"] == TARGETS
        assert len(o["targets"]["psnr"]) == TARGETS and o["targets"]["view_ids"] == list(range(4, 4 + TARGETS))
    assert report["lpips_skipped"] == LPIPS_SKIPPED and "random weights are never used" in LPIPS_SKIPPED
    overall = report["overall"]
    assert overall["num_objects"] == 3 and overall["num_targets"] == 3 * TARGETS and overall["lpips"] is None
    assert overall["psnr"] == pytest.approx(np.mean([o["psnr"] for o in report["objects"]]))
    assert report["overall_per_image"]["psnr"] == pytest.approx(overall["psnr"])  # equal target counts
    s = report["settings"]
    assert s["resolution"] == RES and s["num_input_views"] == 4 and s["num_target_views"] == TARGETS
    assert s["device"] == "cpu" and not s["bf16"] and s["background"] == "white" and s["target_sampling"] == "all"
    assert report["model_config"]["image_size"] == RES and report["attribution"] is None

    md = (out / "metrics.md").read_text()
    assert "| # | object | PSNR ↑ | SSIM ↑ | LPIPS ↓ | targets |" in md
    assert "LPIPS: skipped" in md and "**mean**" in md and "| shape 2 |" in md and "step 2" in md

    grid = Image.open(out / "grid.png")
    # 3 object rows of (label + ground truth line + prediction line), 4 inputs + 4 shown targets wide
    assert grid.size[0] >= 8 * RES and grid.size[1] >= 3 * 2 * RES
    assert np.asarray(grid.convert("RGB")).astype(int).std() > 5  # not a blank page


def test_evaluate_subsets_and_batches_agree(tmp_path, roots, ckpt):
    full = evaluate(ckpt, roots["eval"], tmp_path / "full", progress=False)
    batched = evaluate(ckpt, roots["eval"], tmp_path / "batched", batch_size=2, progress=False)
    for a, b in zip(full.objects, batched.objects):
        assert a.psnr == pytest.approx(b.psnr, abs=1e-4) and a.ssim == pytest.approx(b.ssim, abs=1e-5)
    sub = evaluate(ckpt, roots["eval"], tmp_path / "sub", max_targets=2, limit=2, progress=False)
    assert [o.shape_id for o in sub.objects] == [0, 1] and all(o.num_targets == 2 for o in sub.objects)
    assert sub.settings["target_sampling"].startswith("subset")
    for o in sub.objects:  # the same target view scores the same in a subset
        ref = dict(zip(full.objects[o.shape_id].view_ids, full.objects[o.shape_id].target_psnr))
        for view, value in zip(o.view_ids, o.target_psnr):
            assert value == pytest.approx(ref[view], abs=1e-4)


def test_evaluate_with_user_given_vgg_weights(tmp_path, roots, ckpt):
    """The LPIPS path: any VGG16-shaped state dict the user gives is used (and reported as not
    true LPIPS when it lacks the linear layers); the test's weights are arbitrary on purpose."""
    from zeroverse.lrm.losses import VGG16_CONVS

    g = torch.Generator().manual_seed(0)
    sd = {}
    for idx, cin, cout in VGG16_CONVS:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(cout)
    weights = tmp_path / "vgg16.pth"
    torch.save(sd, weights)
    result = evaluate(ckpt, roots["eval"], tmp_path / "lp", max_targets=2, limit=1, lpips_weights=weights, progress=False)
    assert result.lpips_skipped is None and _finite(result.lpips) and _finite(result.objects[0].lpips)
    report = json.loads((tmp_path / "lp" / "metrics.json").read_text())
    assert report["lpips_skipped"] is None and "not comparable" in report["settings"]["lpips_kind"]
    assert len(report["objects"][0]["targets"]["lpips"]) == 2


def test_export_ply_round_trip(tmp_path, roots, ckpt):
    exported = export_ply_from_checkpoint(ckpt, roots["eval"], 1, tmp_path / "one.ply")
    assert exported.shape_id == 1 and exported.view_sampling == "eval" and exported.view_ids == [0, 1, 2, 3]
    g = read_ply(exported.path)
    assert exported.num_gaussians == g.num == 4 * RES * RES
    assert torch.isfinite(g.means).all() and ((g.opacities > 0) & (g.opacities < 1)).all()
    # the same Gaussians as a direct prediction from the same inputs
    from zeroverse.data import ViewDataset

    model, _ = load_model(ckpt)
    item = ViewDataset(roots["eval"], num_input_views=4, num_target_views=0, resolution=RES, view_sampling="eval")[1]
    direct = predict_gaussians(model, item["images"][None], item["c2w"][None], item["K"][None])[0]
    torch.testing.assert_close(g.means, direct.means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.colors, direct.colors, atol=1e-5, rtol=1e-5)
    # a random-rig root: seeded random input views
    rnd = export_ply_from_checkpoint(ckpt, roots["train"], 0, tmp_path / "rnd.ply")
    assert rnd.view_sampling == "random" and read_ply(rnd.path).num == 4 * RES * RES


def test_clear_errors(tmp_path, roots, ckpt):
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tmp_path / "missing.pt", roots["eval"], tmp_path / "o", progress=False)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match="without latest.pt"):
        evaluate(tmp_path / "empty_run", roots["eval"], tmp_path / "o", progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        evaluate(junk, roots["eval"], tmp_path / "o", progress=False)
    no_model = save_checkpoint({"step": 1}, tmp_path / "nomodel.pt")
    with pytest.raises(ValueError, match="not a GS-LRM training checkpoint"):
        evaluate(no_model, roots["eval"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="no eval-rig views.*--rig eval"):
        evaluate(ckpt, roots["train"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="no eval-rig views"):
        export_ply_from_checkpoint(ckpt, roots["train"], 0, tmp_path / "x.ply", view_sampling="eval")
    with pytest.raises(ValueError, match="has no views/manifest.json"):
        evaluate(ckpt, tmp_path, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match=r"16x16 pixels but evaluation runs at 32x32"):
        evaluate(ckpt, roots["small"], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="multiple of the model's patch_size"):
        evaluate(ckpt, roots["eval"], tmp_path / "o", resolution=20, progress=False)
    with pytest.raises(ValueError, match="holds 3 shapes; use 0..2"):
        export_ply_from_checkpoint(ckpt, roots["eval"], 3, tmp_path / "x.ply")
    with pytest.raises(ValueError, match="num_input_views=5"):
        evaluate(ckpt, roots["eval"], tmp_path / "o", num_input_views=5, progress=False)
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.blender
def test_evaluate_real_gso_objects(tmp_path, ckpt):
    if not (GSO25 / "objects").is_dir():
        pytest.skip(f"{GSO25} is not available")
    out = tmp_path / "real"
    render = EvalRender(resolution=RES, targets_per_ring=1, samples=2, engine="cycles")
    kw = dict(render=render, limit=2, progress=False)
    result = evaluate_real(ckpt, GSO25, out, **kw)
    names = sorted(p.name for p in (GSO25 / "objects").iterdir() if (p / "model.obj").is_file())[:2]
    assert [o.name for o in result.objects] == names
    assert all(o.num_targets == 4 and _finite(o.psnr) and _finite(o.ssim) for o in result.objects)
    report = json.loads((out / "metrics.json").read_text())
    assert [o["name"] for o in report["objects"]] == names and report["lpips_skipped"]
    assert "Google Scanned Objects" in (out / "ATTRIBUTION.txt").read_text()
    assert "Google Scanned Objects" in report["attribution"]
    md = (out / "metrics.md").read_text()
    assert "Attribution:" in md and "CC BY 4.0" in md and f"| {names[0]} |" in md
    # a rerun reuses the rendered views (the manifest makes rendering resumable)
    shards = sorted((out / "real_views" / "views").glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = evaluate_real(ckpt, GSO25, out, **kw)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert again.psnr == pytest.approx(result.psnr)
    # other render settings into the same cache are refused with the fix
    with pytest.raises(ValueError, match="another cache_root"):
        evaluate_real(ckpt, GSO25, out, **{**kw, "render": replace(render, samples=3)})
    with pytest.raises(ValueError, match="render resolution 16 is below"):
        evaluate_real(ckpt, GSO25, tmp_path / "low", **{**kw, "render": replace(render, resolution=16)})


@pytest.mark.blender
@pytest.mark.ray
def test_evaluate_procedural_held_out_shapes(tmp_path, ckpt, ray_local):
    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.texture_bank import prepare_bank

    shapes_root = tmp_path / "heldout"
    bank = prepare_bank(shapes_root, None, 1024)
    run_generate(GenerateConfig(root=shapes_root, n=3, seed=7, shard_size=4, textures=bank.describe()), progress=False)
    out = tmp_path / "proc"
    render = EvalRender(resolution=RES, targets_per_ring=1, samples=2, engine="cycles")
    result = evaluate_procedural(ckpt, shapes_root, out, render, limit=2, progress=False)
    assert [o.name for o in result.objects] == ["shape 0", "shape 1"]
    assert all(o.num_targets == 4 and _finite(o.psnr) for o in result.objects)
    assert (out / "procedural_views" / "shapes").is_symlink() and (out / "metrics.md").is_file()
    assert not (out / "ATTRIBUTION.txt").exists()


@pytest.mark.parametrize("engine", ["cycles", "eevee"])
def test_eval_renders_use_the_sample_count_render_uses(engine):
    """One default per engine for `zeroverse render`, `render --real` and evaluation renders, so
    evaluation images look like the training data (they rendered 16 Cycles samples against 8)."""
    from click.testing import CliRunner

    from zeroverse.cli import main
    from zeroverse.scene.render_settings import default_samples

    assert EvalRender(engine=engine).settings().samples == default_samples(engine)
    assert EvalRender(engine=engine, samples=3).settings().samples == 3
    help_text = CliRunner().invoke(main, ["render", "--help"]).output
    assert f"{engine.replace('eevee', 'EEVEE').replace('cycles', 'Cycles')} {default_samples(engine)}" in help_text
