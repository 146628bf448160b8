"""`zeroverse eval --real DIR` and `--root DIR`: render an eval-rig views root on the farm
(pipelines), then score it (zeroverse.lrm.evaluate). The composition lives on the CLI floor so
that lrm/ never imports pipelines/: evaluation only scores a views root.

    evaluate_real(checkpoint, real_dir, out_dir)       # real meshes (GSO): render, then score
    evaluate_procedural(checkpoint, shapes_root, out_dir, limit=100)  # held-out procedural shapes
    evaluate_real(checkpoint, real_dir, out_dir, EvalRender(resolution=512, engine="cycles"))

The rendered roots are caches (out_dir/real_views, out_dir/procedural_views): a rerun with the
same settings resumes and reuses them; other settings are refused, naming the fix. Scoring
options (max_targets, lpips_weights, batch_size) pass through to score_views.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroverse.lrm.evaluate import EvalResult, LoadedCheckpoint, load_for_eval, score_views


@dataclass(frozen=True)
class EvalRender:
    """How the eval-rig views are rendered: the GSO protocol's rig (4 inputs at elevation 20°,
    target rings) through our renderer."""

    resolution: int = 256  # >= the checkpoint's image size; views are downsampled to it
    targets_per_ring: int = 16  # 16 = the protocol
    samples: int | None = None  # Cycles/EEVEE samples; None: the engine's default, as `zeroverse render` uses
    engine: str = "auto"  # auto (EEVEE with CUDA, else Cycles) | cycles | eevee | workbench

    def rig(self):
        from zeroverse.scene.cameras import RigConfig

        return RigConfig(kind="eval", eval_targets_per_ring=self.targets_per_ring)

    def settings(self):
        import torch

        from pipelines.render import resolve_engine
        from zeroverse.scene.render_settings import RenderSettings, default_samples

        engine = resolve_engine(self.engine, 1.0 if torch.cuda.is_available() else 0.0)
        samples = default_samples(engine) if self.samples is None else self.samples
        return RenderSettings(engine=engine, resolution=self.resolution, samples=samples)


def _load_checked(checkpoint, render: EvalRender, device: str) -> LoadedCheckpoint:
    """The checkpoint, loaded before any rendering, refusing renders below its image size."""
    loaded = load_for_eval(checkpoint, device)
    cfg = loaded.cfg
    if render.resolution < cfg.image_size:
        raise ValueError(
            f"render resolution {render.resolution} is below the image size {cfg.image_size} that {loaded.path} was "
            f"trained at; render at {cfg.image_size} or more (--resolution {cfg.image_size})"
        )
    return loaded


@contextlib.contextmanager
def _cache(cache: Path):
    """A render into an existing cache with other settings says how to fix it."""
    try:
        yield
    except ValueError as err:
        if "another config" in str(err) or "--seed" in str(err):
            raise ValueError(
                f"{cache} already holds views rendered with other settings ({err}). Pass another cache_root, or "
                f"delete {cache} to render afresh."
            ) from err
        raise


def evaluate_real(
    checkpoint: str | os.PathLike,
    real_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    render: EvalRender = EvalRender(),
    cache_root: str | os.PathLike | None = None,
    limit: int | None = None,
    device: str = "auto",
    progress: bool = True,
    **score: Any,
) -> EvalResult:
    """Renders the real meshes of `real_dir` (e.g. ../shared/evaldata/gso25; the first `limit`)
    with the eval rig into `cache_root` (default out_dir/real_views; resumed and reused across
    runs), then scores them at the checkpoint's image size. The GSO attribution goes into
    out_dir/ATTRIBUTION.txt and metrics.md.
    """
    from pipelines.real_objects import render_real_objects

    loaded = _load_checked(checkpoint, render, device)
    out = Path(out_dir)
    cache = Path(cache_root) if cache_root is not None else out / "real_views"
    with _cache(cache):
        render_real_objects(real_dir, cache, render.rig(), render.settings(), limit=limit, progress=progress)
    return score_views(loaded, cache, out, progress=progress, **score)


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
    render: EvalRender = EvalRender(),
    cache_root: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    device: str = "auto",
    progress: bool = True,
    **score: Any,
) -> EvalResult:
    """Renders the first `limit` shapes of `shapes_root` (a root with shapes/, e.g. generated with
    a seed the model never saw; None: all its shapes) with the eval rig on the Ray farm into
    `cache_root` (default out_dir/procedural_views, which links ROOT/shapes and ROOT/textures and
    gets its own views/), then scores them. Warns when the shapes are the training ones.
    """
    from pipelines.render import RenderConfig, run_render

    src = Path(shapes_root)
    if src.name == "shapes" and (src / "manifest.json").is_file():
        src = src.parent  # ROOT/shapes given: its root
    if not (src / "shapes" / "manifest.json").is_file():
        raise ValueError(f"{src} has no shapes/manifest.json; pass a root written by `zeroverse generate`")
    loaded = _load_checked(checkpoint, render, device)
    _warn_if_training_shapes(src, loaded.info)
    out = Path(out_dir)
    cache = Path(cache_root) if cache_root is not None else out / "procedural_views"
    cache.mkdir(parents=True, exist_ok=True)
    _link_or_copy(src / "shapes", cache / "shapes")
    if (src / "textures").is_dir():  # the texture cache: reuse instead of regenerating
        _link_or_copy(src / "textures", cache / "textures")
    cfg = RenderConfig(root=cache, rig=render.rig(), settings=render.settings(), limit=limit)
    with _cache(cache / "views"):
        rendered = run_render(cfg, address=address, workers=workers, gpus_per_worker=0.0, progress=progress)
    if rendered.failures:
        warnings.warn(f"{len(rendered.failures)} shapes failed to render and are left out; first: {rendered.failures[0]}",
                      stacklevel=2)
    return score_views(loaded, cache, out, limit=limit, progress=progress, **score)
