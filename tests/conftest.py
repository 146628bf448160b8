"""Shared fixtures: one local Ray for the whole session (starting Ray costs seconds), and small
real roots built once and reused read-only by many tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Tests read local Parquet only: never let Hugging Face libraries reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def small_root(tmp_path_factory, ray_local) -> Path:
    """8 generated shapes (seed 0, shards of 4) with 4 Cycles views each at 64² (READ-ONLY: copy it
    with `copy_root` before changing anything)."""
    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.render import RenderConfig, run_render
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    root = tmp_path_factory.mktemp("small_root")
    bank = prepare_bank(root, None, 1024)
    run_generate(GenerateConfig(root=root, n=8, seed=0, shard_size=4, textures=bank.describe()), progress=False)
    run_render(
        RenderConfig(root=root, rig=RigConfig(num_views=4), settings=RenderSettings(resolution=64, samples=4), shapes_per_shard=4),
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def four_shapes_root(tmp_path_factory, ray_local) -> Path:
    """Four shapes (seed 0) in two shards, no views, built by the real pipeline (Ray + Blender),
    ~10 s (READ-ONLY)."""
    from pipelines.generate import GenerateConfig, run_generate

    root = tmp_path_factory.mktemp("four_shapes_root")
    result = run_generate(GenerateConfig(root=root, n=4, seed=0, shard_size=2), workers=2, progress=False)
    assert result.shapes == 4, result.failures
    return root


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
