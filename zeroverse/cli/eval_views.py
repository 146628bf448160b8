"""`zeroverse eval --real DIR` and `--root DIR`: render an eval-rig views root on the farm
(pipelines), then score it (zeroverse.lrm.evaluate). The composition lives on the CLI floor so
that lrm/ never imports pipelines/: evaluation only scores a views root.

    evaluate_real(checkpoint, real_dir, out_dir)       # real meshes (GSO): render, then score
    evaluate_procedural(checkpoint, shapes_root, out_dir, limit=100)  # held-out procedural shapes

The rendered roots are caches (out_dir/real_views, out_dir/procedural_views): a rerun with the
same settings resumes and reuses them; other settings are refused, naming the fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from zeroverse.lrm.evaluate import EvalResult, load_for_eval, score_views
from zeroverse.lrm.gslrm import GSLRMConfig


def _render_settings(resolution: int, samples: int | None, engine: str):
    from pipelines.render import resolve_engine
    from zeroverse.scene.render_settings import RenderSettings

    defaults = RenderSettings()
    return RenderSettings(
        engine=resolve_engine(engine, 1.0 if torch.cuda.is_available() else 0.0),
        resolution=resolution,
        samples=defaults.samples if samples is None else samples,
    )


def _check_render_resolution(resolution: int, cfg: GSLRMConfig, path: Path) -> None:
    if resolution < cfg.image_size:
        raise ValueError(
            f"render resolution {resolution} is below the image size {cfg.image_size} that {path} was trained at; "
            f"render at {cfg.image_size} or more (--resolution {cfg.image_size})"
        )


def _cache_mismatch(err: ValueError, cache: Path) -> ValueError:
    if "another config" in str(err) or "--seed" in str(err):
        return ValueError(
            f"{cache} already holds views rendered with other settings ({err}). Pass another cache_root, or delete "
            f"{cache} to render afresh."
        )
    return err


def evaluate_real(
    checkpoint: str | os.PathLike,
    real_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache_root: str | os.PathLike | None = None,
    resolution: int = 256,
    targets_per_ring: int = 16,
    samples: int | None = None,
    limit: int | None = None,
    engine: str = "auto",
    max_targets: int | None = None,
    device: str = "auto",
    lpips_weights: str | os.PathLike | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Renders the real meshes of `real_dir` (e.g. ../shared/evaldata/gso25; the first `limit`)
    with the eval rig and our renderer into `cache_root` (default out_dir/real_views; resumed
    and reused across runs), then scores them (lrm.evaluate.score_views) at the checkpoint's image size.

    resolution: the render resolution (>= the checkpoint's image size; views are downsampled to
    it). samples: Cycles/EEVEE samples (None: RenderSettings' default). engine: auto (EEVEE with
    CUDA, else Cycles) | cycles | eevee | workbench. The GSO attribution goes into
    out_dir/ATTRIBUTION.txt and metrics.md.
    """
    from pipelines.real_objects import render_real_objects
    from zeroverse.scene.cameras import RigConfig

    loaded = load_for_eval(checkpoint, device)  # fail before rendering
    _check_render_resolution(resolution, loaded.cfg, loaded.path)
    out = Path(out_dir)
    cache = Path(cache_root) if cache_root is not None else out / "real_views"
    settings = _render_settings(resolution, samples, engine)
    try:
        render_real_objects(real_dir, cache, RigConfig(kind="eval", eval_targets_per_ring=targets_per_ring), settings,
                            limit=limit, progress=progress)
    except ValueError as err:
        raise _cache_mismatch(err, cache) from err
    return score_views(loaded, cache, out, max_targets=max_targets, lpips_weights=lpips_weights,
                       batch_size=batch_size, progress=progress)


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst -> src (a symlink where the filesystem allows, else a copy); an existing dst must be
    that same link or a copy of the same stage (same manifest)."""
    if dst.is_symlink():
        if dst.resolve() != src.resolve():
            raise ValueError(f"{dst} links to {dst.resolve()}, not {src}; use another out_dir/cache_root")
        return
    if dst.exists():
        same = (dst / "manifest.json").is_file() and (src / "manifest.json").is_file() and \
            (dst / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes()
        if not same and (src / "manifest.json").is_file():
            raise ValueError(f"{dst} exists and is not a copy of {src}; use another out_dir/cache_root")
        return
    try:
        os.symlink(src.resolve(), dst, target_is_directory=True)
    except OSError:
        shutil.copytree(src, dst)


def _warn_if_training_shapes(shapes_root: Path, info: dict[str, Any]) -> None:
    """Best effort: the checkpoint's training root rendered these very shapes -> not held out."""
    from zeroverse.store.manifest import Manifest

    with contextlib.suppress(Exception):
        train_root = Path((info.get("train_config") or {})["root"])
        shapes = Manifest.load(shapes_root / "shapes")
        views = Manifest.load(train_root / "views")
        if shapes is None or views is None:
            return
        if views.seed == shapes.seed and views.config.get("shapes_config_hash") == shapes.config_hash:
            warnings.warn(
                f"{shapes_root} holds the shapes the checkpoint was trained on ({train_root}: same seed "
                f"{shapes.seed} and shape config): these scores are not held-out. Generate evaluation shapes with "
                "another --seed.",
                stacklevel=3,
            )


def evaluate_procedural(
    checkpoint: str | os.PathLike,
    shapes_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache_root: str | os.PathLike | None = None,
    resolution: int = 256,
    targets_per_ring: int = 16,
    samples: int | None = None,
    limit: int | None = None,
    engine: str = "auto",
    workers: int | None = None,
    address: str | None = None,
    max_targets: int | None = None,
    device: str = "auto",
    lpips_weights: str | os.PathLike | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Renders the first `limit` shapes of `shapes_root` (a root with shapes/, e.g. generated with
    a seed the model never saw; None: all its shapes) with the eval rig on the Ray farm into
    `cache_root` (default out_dir/procedural_views, which links ROOT/shapes and ROOT/textures and
    gets its own views/), then scores them (lrm.evaluate.score_views). Warns when the shapes are the training ones.
    """
    from pipelines.render import RenderConfig, run_render
    from zeroverse.scene.cameras import RigConfig

    src = Path(shapes_root)
    if src.name == "shapes" and (src / "manifest.json").is_file():
        src = src.parent  # ROOT/shapes given: its root
    if not (src / "shapes" / "manifest.json").is_file():
        raise ValueError(f"{src} has no shapes/manifest.json; pass a root written by `zeroverse generate`")
    loaded = load_for_eval(checkpoint, device)  # fail before rendering
    _check_render_resolution(resolution, loaded.cfg, loaded.path)
    _warn_if_training_shapes(src, loaded.info)
    out = Path(out_dir)
    cache = Path(cache_root) if cache_root is not None else out / "procedural_views"
    cache.mkdir(parents=True, exist_ok=True)
    _link_or_copy(src / "shapes", cache / "shapes")
    if (src / "textures").is_dir():  # the texture cache: reuse instead of regenerating
        _link_or_copy(src / "textures", cache / "textures")
    cfg = RenderConfig(
        root=cache,
        rig=RigConfig(kind="eval", eval_targets_per_ring=targets_per_ring),
        settings=_render_settings(resolution, samples, engine),
        limit=limit,
    )
    try:
        rendered = run_render(cfg, address=address, workers=workers,
                              gpus_per_worker=0.0, progress=progress)
    except ValueError as err:
        raise _cache_mismatch(err, cache / "views") from err
    if rendered.failures:
        warnings.warn(f"{len(rendered.failures)} shapes failed to render and are left out; first: {rendered.failures[0]}",
                      stacklevel=2)
    return score_views(loaded, cache, out, max_targets=max_targets, lpips_weights=lpips_weights, limit=limit,
                       batch_size=batch_size, progress=progress)
