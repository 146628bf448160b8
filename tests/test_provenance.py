"""Provenance that identifies content, not an install: a root resumes from another checkout or
venv path, and every shard and manifest records the git commit of the code that wrote it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zeroverse
import zeroverse.scene.textures.presets as P
from zeroverse.scene.textures import KINDS
from zeroverse.store.manifest import Manifest, open_manifest
from zeroverse.store.shards import file_metadata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def presets_at(monkeypatch):
    """Makes the bundled presets file live at a given path (as another checkout would)."""

    def install(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "textures" / "presets.toml", path)
        monkeypatch.setattr(P, "BUNDLED_PRESETS", path)
        P.bundled_presets.cache_clear()

    yield install
    P.bundled_presets.cache_clear()


def _identity(root: Path) -> dict:
    from pipelines.generate import GenerateConfig
    from pipelines.texture_bank import prepare_bank

    return GenerateConfig(root=root, n=4, seed=3, textures=prepare_bank(root, None, 1024).describe()).identity()


def test_a_root_resumes_from_another_checkout_path(tmp_path, presets_at):
    root = tmp_path / "root"
    presets_at(tmp_path / "checkout-a" / "textures" / "presets.toml")
    first = _identity(root)
    assert "checkout-a" not in json.dumps(first)  # no install path in what identifies the root
    open_manifest(root / "shapes", "shapes", 3, first).save(root / "shapes")
    presets_at(tmp_path / "venvs" / "checkout-b" / "textures" / "presets.toml")  # same presets, moved
    again = _identity(root)
    assert open_manifest(root / "shapes", "shapes", 3, again).config_hash == Manifest.load(root / "shapes").config_hash


def test_a_root_made_with_a_recorded_install_path_still_resumes(tmp_path, presets_at):
    """Manifests written before the path was dropped hold textures.presets_source."""
    root = tmp_path / "root"
    presets_at(tmp_path / "checkout-b" / "textures" / "presets.toml")
    now = _identity(root)
    old = json.loads(json.dumps(now))
    old["textures"]["presets_source"] = "/home/someone/old-checkout/textures/presets.toml"
    open_manifest(root / "shapes", "shapes", 3, old).save(root / "shapes")
    resumed = open_manifest(root / "shapes", "shapes", 3, now)
    assert resumed.config_hash == Manifest.load(root / "shapes").config_hash  # the views' identity stays valid
    from zeroverse.store.manifest import differs

    assert not differs(root / "shapes", 3, now)


def test_other_presets_content_is_still_another_config(tmp_path, presets_at):
    root = tmp_path / "root"
    presets_at(tmp_path / "a" / "presets.toml")
    open_manifest(root / "shapes", "shapes", 3, _identity(root)).save(root / "shapes")
    other = tmp_path / "b" / "presets.toml"
    presets_at(other)
    other.write_text("[weights]\n" + "".join(f"{k} = {float(k == 'stripes')}\n" for k in KINDS))  # stripes only
    P.bundled_presets.cache_clear()
    with pytest.raises(ValueError, match="textures.presets_hash: root has"):
        open_manifest(root / "shapes", "shapes", 3, _identity(root))


def test_code_version_is_the_git_commit_in_a_checkout(tmp_path):
    version = zeroverse.code_version()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("this copy of the code is not a git checkout")
    assert version == f"{zeroverse.__version__}+g{head.stdout.strip()[:12]}"
    meta = file_metadata("shapes", {}, 0)
    assert meta[b"zeroverse.code_version"] == version.encode()
    Manifest("shapes", 0, {}, "x", [], []).save(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["code_version"] == version


@pytest.mark.parametrize("how", ["copied", "no-git"])
def test_code_version_without_git_is_the_package_version(tmp_path, how):
    """An installed copy (not a checkout), or a machine without git (Blender's Python on a GPU
    node): the package version alone, and no error."""
    env = dict(os.environ)
    if how == "copied":
        shutil.copytree(REPO / "zeroverse", tmp_path / "site" / "zeroverse", ignore=shutil.ignore_patterns("__pycache__"))
        env["PYTHONPATH"] = str(tmp_path / "site")
    else:
        env.update(PYTHONPATH=str(REPO), PATH=str(tmp_path))  # no git on PATH
    code = "import zeroverse; print(zeroverse.__file__); print(zeroverse.code_version())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, version = done.stdout.split()
    assert version == zeroverse.__version__ and (how != "copied" or where.startswith(str(tmp_path)))
