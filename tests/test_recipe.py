"""Recipes: pure, seeded, configurable, and every augmentation at its configured rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zeroverse.scene.recipe import (
    AUGMENTATIONS,
    REGIONS_PER_KIND,
    RecipeConfig,
    ShapeRecipe,
    load_recipe_config,
    sample_recipe,
)

REPO = Path(__file__).resolve().parents[1]


def test_pure_modules_import_without_bpy_ray_torch_pil():
    # Every module of the pure floor, the texture package's modules included, one by one.
    code = (
        "import sys, importlib, pkgutil\n"
        "for name in ('bpy', 'ray', 'torch', 'PIL', 'pyarrow', 'trimesh'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "import zeroverse, zeroverse.scene\n"
        "names = [m.name for m in pkgutil.walk_packages(zeroverse.scene.__path__, 'zeroverse.scene.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from zeroverse.scene.recipe import RecipeConfig, sample_recipe\n"
        "print(len(sample_recipe(RecipeConfig(), 0, 0).primitives) >= 1)\n"
        "print(' '.join(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    ok, names = out.stdout.strip().splitlines()
    assert ok == "True"
    for name in ("recipe", "primitives", "cameras", "imageio", "textures", "textures.bank", "textures.generators"):
        assert f"zeroverse.scene.{name}" in names.split()


def test_same_seed_same_recipe_and_json_round_trip():
    cfg = RecipeConfig(boolean_prob=0.5, wireframe_prob=0.5, height_field_prob=0.5)
    for shape_id in range(50):
        a, b = sample_recipe(cfg, 7, shape_id), sample_recipe(cfg, 7, shape_id)
        assert a.to_json() == b.to_json()
        assert ShapeRecipe.from_json(a.to_json()) == a
        assert json.loads(a.to_json())["augmentations"] == list(a.augmentations)
    assert sample_recipe(cfg, 7, 1).to_json() != sample_recipe(cfg, 7, 2).to_json()
    assert sample_recipe(cfg, 7, 1).to_json() != sample_recipe(cfg, 8, 1).to_json()


@pytest.mark.parametrize(
    "probs",
    [
        {"height_field_prob": 0.3, "boolean_prob": 0.3, "wireframe_prob": 0.2},  # defaults
        {"height_field_prob": 0.9, "boolean_prob": 0.1, "wireframe_prob": 0.5},
        {"height_field_prob": 0.0, "boolean_prob": 1.0, "wireframe_prob": 0.0},
    ],
)
def test_each_augmentation_appears_at_its_configured_rate(probs):
    n = 1000
    cfg = RecipeConfig(**probs)
    recipes = [sample_recipe(cfg, 3, i) for i in range(n)]
    for aug in AUGMENTATIONS:
        p = probs[f"{aug}_prob"]
        rate = np.mean([aug in r.augmentations for r in recipes])
        # 4 standard deviations of a binomial proportion (+ exactness at 0 and 1).
        tolerance = 4 * np.sqrt(p * (1 - p) / n)
        assert abs(rate - p) <= tolerance, (aug, rate, p, tolerance)
    # The recipe records the applied augmentations' parameters.
    for r in recipes:
        assert ("boolean" in r.augmentations) == (r.boolean is not None)
        assert ("wireframe" in r.augmentations) == (r.wireframe is not None)
        assert ("height_field" in r.augmentations) == any(p.height_field is not None for p in r.primitives)


def test_primitive_count_and_kinds_follow_the_weights():
    cfg = RecipeConfig()
    recipes = [sample_recipe(cfg, 0, i) for i in range(2000)]
    counts = np.bincount([len(r.primitives) for r in recipes], minlength=10)[1:]
    expected = np.asarray(cfg.primitive_count_weights) / sum(cfg.primitive_count_weights) * len(recipes)
    assert np.all(np.abs(counts - expected) <= 4 * np.sqrt(expected) + 2), (counts, expected)
    kinds = [p.kind for r in recipes for p in r.primitives]
    for kind in REGIONS_PER_KIND:
        assert abs(kinds.count(kind) / len(kinds) - 0.2) < 0.03
    semi = np.array([p.semi_axes for r in recipes for p in r.primitives])
    assert semi.min() >= 0.25 and semi.max() <= 2.0
    for r in recipes[:200]:
        for p in r.primitives:
            assert len(p.textures) == REGIONS_PER_KIND[p.kind]
            assert abs(np.linalg.norm(p.rotation) - 1) < 1e-9


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"boolean_prob": 1.5}, "boolean_prob=1.5"),
        ({"wireframe_prob": -0.1}, "wireframe_prob=-0.1"),
        ({"primitive_kinds": ("box", "blob"), "primitive_kind_weights": (1, 1)}, "blob"),
        ({"semi_axis_range": (2.0, 1.0)}, "semi_axis_range"),
        ({"primitive_count_weights": (0, 0)}, "primitive_count_weights"),
    ],
)
def test_bad_config_values_name_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        RecipeConfig(**bad)


def test_config_files_toml_and_yaml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[recipe]\nboolean_prob = 0.9\nsemi_axis_range = [0.5, 1.5]\n")
    cfg = load_recipe_config(toml)
    assert cfg.boolean_prob == 0.9 and cfg.semi_axis_range == (0.5, 1.5)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("wireframe_prob: 0.0\n")
    assert load_recipe_config(yaml_file).wireframe_prob == 0.0
    unknown = tmp_path / "u.toml"
    unknown.write_text("booleen_prob = 0.2\n")
    with pytest.raises(ValueError, match="booleen_prob"):
        load_recipe_config(unknown)
    with pytest.raises(ValueError, match="not a readable file"):
        load_recipe_config(tmp_path / "missing.toml")
    assert RecipeConfig().digest() != RecipeConfig(boolean_prob=0.31).digest()


@pytest.mark.parametrize(
    "line, key, value",
    [
        ('segments = "abc"', "segments", "'abc'"),
        ("translation_range = -3", "translation_range", "-3"),
        ("height_field_terms = -2", "height_field_terms", "-2"),
        ("segments = 40.5", "segments", "40.5"),
        ("texture_bank_size = 1e12", "texture_bank_size", "1000000000000.0"),
        ("box_grid = true", "box_grid", "True"),
        ("boolean_prob = \"0.5\"", "boolean_prob", "'0.5'"),
        ("semi_axis_range = \"0.2-0.4\"", "semi_axis_range", "'0.2-0.4'"),
        ("semi_axis_range = [0.5]", "semi_axis_range", "[0.5]"),
        ("torus_tube_ratio_range = [0.5, 1.5]", "torus_tube_ratio_range", "[0.5, 1.5]"),
        ("wireframe_segments_range = [4.5, 10]", "wireframe_segments_range", "[4.5, 10]"),
        ("primitive_kind_weights = [0, 0, 0, 0, 0]", "primitive_kind_weights", "[0, 0, 0, 0, 0]"),
        ("primitive_kinds = []", "primitive_kinds", "[]"),
        ("height_field_prob = nan", "height_field_prob", "nan"),
    ],
)
def test_every_config_value_is_checked_naming_key_value_and_range(tmp_path, line, key, value):
    path = tmp_path / "c.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as err:
        load_recipe_config(path)
    said = str(err.value)
    assert f"recipe config: {key}={value} is not " in said and "docs/config.md" in said, said


def test_the_cli_says_it_in_one_line(tmp_path):
    from click.testing import CliRunner

    from zeroverse.cli import main

    for name, text in (("c.yaml", "segments: abc\n"), ("d.yaml", "segments: [1, 2\n"), ("e.toml", "segments = \n")):
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(main, ["generate", "--n", "1", "--root", str(tmp_path / "root"), "--config", str(tmp_path / name)])
        named = "segments='abc'" if name == "c.yaml" else f"{name}' is not valid"
        assert result.exit_code == 1 and "Traceback" not in result.output and named in result.output, result.output
        assert isinstance(result.exception, SystemExit)
    assert not (tmp_path / "root").exists()


def test_every_field_has_a_rule_and_a_line_in_docs_config():
    import dataclasses

    from zeroverse.scene.recipe import FIELD_RULES, allowed

    names = [f.name for f in dataclasses.fields(RecipeConfig)]
    assert sorted(FIELD_RULES) == sorted(names)
    doc = (REPO / "docs" / "config.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines() if line.startswith("| `")}
    for name in names:
        assert name in rows, f"docs/config.md has no row for {name}"
        assert allowed(FIELD_RULES[name]) in rows[name], f"docs/config.md: {name} should say {allowed(FIELD_RULES[name])!r}"
        default = getattr(RecipeConfig(), name)
        shown = json.dumps(list(default) if isinstance(default, tuple) else default)
        assert f"`{shown}`" in rows[name], f"docs/config.md: {name} should show the default `{shown}`"
