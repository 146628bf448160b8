"""`zeroverse generate`: real Blender builds on real Ray, written to real Parquet shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from zeroverse.scene.recipe import RecipeConfig, sample_recipe
from zeroverse.store.manifest import Manifest

pytestmark = [pytest.mark.blender]


def _digests(shapes_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shapes_dir.glob("*.parquet"))}


def test_built_shapes_are_clean_over_many_seeds():
    from blender_scripts.build_shape import build_shape, region_count

    cfg = RecipeConfig(height_field_prob=0.5, boolean_prob=0.5, wireframe_prob=0.5)
    cuts = 0
    for shape_id in range(40):
        recipe = sample_recipe(cfg, 11, shape_id)
        built = build_shape(recipe)
        m = built.mesh
        v = m.vertices.astype(np.float64)
        assert np.all(np.isfinite(v)) and np.abs(v).max() <= 1.0
        assert abs((v.max(0) - v.min(0)).max() - 2.0) < 1e-4  # scaled to the cube
        assert m.faces.min() >= 0 and m.faces.max() < len(v)
        area2 = np.linalg.norm(np.cross(v[m.faces[:, 1]] - v[m.faces[:, 0]], v[m.faces[:, 2]] - v[m.faces[:, 0]]), axis=1)
        assert area2.min() > 0, "degenerate face"
        assert m.uvs.min() >= 0 and m.uvs.max() <= 1
        assert len(built.region_textures) == region_count(recipe)
        assert 0 <= m.regions.min() and m.regions.max() < len(built.region_textures)
        if recipe.boolean is not None:
            # The cut really happened: volume went away and the cavity wears the cutter's regions.
            assert built.stats["boolean_removed_volume"] > 0
            offset = sum(len(p.textures) for p in recipe.primitives[: recipe.boolean.target + 1])
            cutter = set(range(offset, offset + len(recipe.boolean.cutter.textures)))
            assert cutter & set(m.regions.tolist())
            cuts += 1
    assert cuts >= 10


@pytest.mark.ray
def test_same_seed_same_bytes_with_one_and_two_workers(tmp_path, ray_local):
    from pipelines.generate import GenerateConfig, run_generate

    roots = []
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        result = run_generate(GenerateConfig(root=root, n=10, seed=5, shard_size=3), workers=workers, progress=False)
        assert result.shapes == 10 and not result.failures
        roots.append(root / "shapes")
    assert _digests(roots[0]) == _digests(roots[1])
    assert len(_digests(roots[0])) == 4  # 3 + 3 + 3 + 1
    table = pq.read_table(sorted(roots[0].glob("*.parquet"))[0])
    meta = table.schema.metadata
    assert json.loads(meta[b"zeroverse.config"])["recipe"]["boolean_prob"] == 0.3
    assert meta[b"zeroverse.seed"] == b"5"
    assert table.column("shape_id").to_pylist() == [0, 1, 2]
    recipe = json.loads(table.column("recipe")[0].as_py())
    assert set(recipe["augmentations"]) <= {"height_field", "boolean", "wireframe"}


def test_process_backend_gives_the_ray_bytes_and_retries_a_killed_worker(tmp_path, monkeypatch):
    """The executor's process backend (no Ray): the same shard bytes as the Ray farm's fixed
    digest test above, and a worker killed mid-shard (kill -9) is replaced and its shard redone."""
    from pipelines.generate import GenerateConfig, run_generate

    reference = tmp_path / "ref"
    run_generate(GenerateConfig(root=reference, n=4, seed=5, shard_size=2), workers=2, progress=False, backend="processes")
    monkeypatch.setenv("ZEROVERSE_FAULTS", "generate:kill@2")
    monkeypatch.setenv("ZEROVERSE_FAULTS_DIR", str(tmp_path))
    root = tmp_path / "root"
    result = run_generate(GenerateConfig(root=root, n=4, seed=5, shard_size=2), workers=2, progress=False, backend="processes")
    assert (tmp_path / "generate-kill-2-0").exists(), "the fault never fired"
    assert result.shapes == 4 and not result.failures and result.retries == 1
    assert _digests(root / "shapes") == _digests(reference / "shapes")


@pytest.mark.ray
def test_resume_after_an_interrupted_run_and_extend(tmp_path, ray_local):
    from pipelines.generate import GenerateConfig, run_generate

    reference = tmp_path / "reference"
    run_generate(GenerateConfig(root=reference, n=8, seed=2, shard_size=4), progress=False)

    root = tmp_path / "root"
    cfg6 = GenerateConfig(root=root, n=6, seed=2, shard_size=4)  # shards 0-3 and 4-5
    run_generate(cfg6, progress=False)
    shapes = root / "shapes"
    # Simulate a run killed after writing one shard but before recording it, plus a torn temp file.
    manifest = Manifest.load(shapes)
    lost = manifest.shards.pop()
    manifest.save(shapes)
    (shapes / ".tmp-shapes-torn.parquet-1-abc").write_bytes(b"half a shard")
    kept = _digests(shapes)
    result = run_generate(cfg6, progress=False)
    assert result.written == [lost["file"]] and result.skipped == 4
    assert not list(shapes.glob(".tmp-*"))
    assert _digests(shapes)[lost["file"]] == kept[lost["file"]]  # rebuilt byte-identically
    again = run_generate(cfg6, progress=False)
    assert again.written == [] and again.skipped == 6
    # A larger --n extends: the short last shard is replaced, the rest untouched.
    result = run_generate(GenerateConfig(root=root, n=8, seed=2, shard_size=4), progress=False)
    assert result.shapes == 8 and result.skipped == 4 and result.written == ["shapes-000000004-000000007.parquet"]
    assert _digests(shapes) == _digests(reference / "shapes")
    assert Manifest.load(shapes).shape_ids() == list(range(8))


@pytest.mark.ray
def test_cli_generate_and_bad_inputs(tmp_path, ray_local):
    from zeroverse.cli import main

    runner = CliRunner()
    root = tmp_path / "root"
    ok = runner.invoke(main, ["generate", "--n", "3", "--root", str(root), "--shard-size", "2", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "3 shapes" in ok.output
    manifest_bytes = (root / "shapes" / "manifest.json").read_bytes()

    def fails(args, message):
        res = runner.invoke(main, args)
        assert res.exit_code != 0, res.output
        assert message in res.output, res.output

    fails(["generate", "--n", "0", "--root", str(tmp_path / "x")], "0 is not positive")
    fails(["generate", "--n", "-5", "--root", str(tmp_path / "x")], "-5 is not positive")
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("boolean_probability = 0.5\n")
    fails(["generate", "--n", "2", "--root", str(tmp_path / "x"), "--config", str(bad_key)], "boolean_probability")
    bad_prob = tmp_path / "prob.yaml"
    bad_prob.write_text("wireframe_prob: 1.5\n")
    fails(["generate", "--n", "2", "--root", str(tmp_path / "x"), "--config", str(bad_prob)], "wireframe_prob=1.5")
    fails(["generate", "--n", "2", "--root", str(tmp_path / "x"), "--textures", str(tmp_path / "nope")], "nope")
    # The existing root refuses another seed or config and is left exactly as it was.
    fails(["generate", "--n", "3", "--root", str(root), "--seed", "1", "--shard-size", "2"], "--seed 0")
    other = tmp_path / "other.toml"
    other.write_text("boolean_prob = 0.9\n")
    fails(["generate", "--n", "3", "--root", str(root), "--shard-size", "2", "--config", str(other)], "boolean_prob")
    fails(["generate", "--n", "3", "--root", str(root)], "shard_size")
    assert (root / "shapes" / "manifest.json").read_bytes() == manifest_bytes


def test_views_manifest_of_other_shapes_names_the_fix_render_accepts(tmp_path):
    # render takes its seed from the shapes, so its refusal must not tell the user to pass
    # --seed (render has no such option) but how to keep or redo the old views.
    from zeroverse.store.manifest import config_digest, open_manifest

    config = {"render": {"resolution": 32}}
    Manifest("views", 0, config, config_digest(config), [], []).save(tmp_path)
    with pytest.raises(ValueError, match="rendered from shapes of seed 0") as err:
        open_manifest(tmp_path, "views", 1, config)
    assert "--new-version" in str(err.value) and "--seed" not in str(err.value)
    with pytest.raises(ValueError, match="--seed 0"):
        Manifest("shapes", 0, config, config_digest(config), [], []).save(tmp_path / "s")
        open_manifest(tmp_path / "s", "shapes", 1, config)
