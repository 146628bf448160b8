"""Evaluate a GS-LRM checkpoint on eval-rig views, and export its Gaussians as .ply.

The GSO protocol (GS-LRM, LRM-Zero): 4 input views at elevation 20°, azimuths 45/135/225/315°,
and target views on rings at elevations 0/20/40/60° (zeroverse.scene.cameras, rig kind "eval"). The
model predicts Gaussians from the inputs; every target is rendered on white (the background
ViewDataset composites the ground truth on) and scored with PSNR, SSIM and, only when the user
gives pretrained VGG16/LPIPS weights, LPIPS. Without weights LPIPS is reported as skipped, with
the reason; random weights are never used.

    evaluate(checkpoint, views_root, out_dir)          # a views root rendered with the eval rig

(export.py predicts one shape's Gaussians from such a root and writes them as .ply.)

Evaluation only scores: making the views root (real meshes, held-out procedural shapes) is a
farm job (`zeroverse render --real DIR`, `zeroverse render --rig eval`); `zeroverse eval --real /
--root` composes the two (zeroverse.cli.eval_views).

Outputs of an evaluation in `out_dir`: metrics.json (per object and overall, settings,
checkpoint step), metrics.md (a table), grid.png (per object: the inputs, then a few targets
with the ground truth over the prediction) and, for real objects, ATTRIBUTION.txt.

Scores: per image, then per object (mean over its targets); the headline ("overall") is the mean
over objects, so every object weighs the same; "overall_per_image" is the mean over all images
(the two agree when every object has the same number of targets).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from . import losses, metrics
from .checkpoint import load_model_with_info
from .gslrm import GSLRM, GSLRMConfig
from .eval_report import (
    ATTRIBUTION_FILE,
    EvalResult,
    ObjectMetrics,
    finite,
    grid_targets,
    markdown,
    object_json,
    object_metrics,
    overall,
    overall_per_image,
    write_grid,
)
from .rasterizer import gsplat_available
from .run import resolve_device, version

# Target cameras rendered per rasterizer call: bounds the [B, C, N, ...] intermediates.
RENDER_CHUNK = 8
GRID_MAX_OBJECTS = 32  # rows in grid.png (the first objects); metrics cover all of them
MIN_RESOLUTION = 16  # SSIM's 11-pixel window needs room
LPIPS_SKIPPED = (
    "no LPIPS weights given (lpips_weights / --lpips-weights): pretrained VGG16 weights cannot "
    "be downloaded here and random weights are never used"
)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Checkpoints and views roots
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A GS-LRM checkpoint ready to score: the file, the model on its device, its config and
    plain values (step, train_config, zeroverse_version)."""

    path: Path
    model: GSLRM
    cfg: GSLRMConfig
    info: dict[str, Any]


def checkpoint_path(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding latest.pt -> the file; ValueError if absent."""
    path = Path(checkpoint)
    if path.is_dir():
        if (path / "latest.pt").is_file():
            return path / "latest.pt"
        found = sorted(path.glob("ckpt-*.pt"))
        raise ValueError(
            f"checkpoint {str(path)!r} is a folder without latest.pt"
            + (f"; pass one of its files, e.g. {found[-1]}" if found else "; pass a ckpt-<step>.pt or latest.pt file")
        )
    if not path.is_file():
        raise ValueError(
            f"checkpoint {str(path)!r} does not exist; pass a ckpt-<step>.pt or latest.pt written by "
            "`zeroverse train-lrm` (or its run folder)"
        )
    return path


def load_for_eval(checkpoint: str | os.PathLike, device: str | torch.device = "auto") -> LoadedCheckpoint:
    """The checkpoint (file or run folder) on `device`; ValueError naming the fix if it is not one."""
    device = resolve_device(device)
    path = checkpoint_path(checkpoint)
    try:
        model, cfg, info = load_model_with_info(path, map_location="cpu")
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a GS-LRM training checkpoint (missing or bad {err}); pass a file from `zeroverse train-lrm`") from err
    except ValueError:
        raise
    except Exception as err:  # torch.load raises UnpicklingError/RuntimeError on foreign files
        raise ValueError(f"{path} cannot be read as a weights-only GS-LRM checkpoint ({type(err).__name__}: {err})") from err
    return LoadedCheckpoint(path, model.to(device), cfg, info)


@dataclass
class ViewsScan:
    """Roles and sizes of every shape a views root lists (tiny columns only, no images)."""

    views_dir: Path
    manifest: Any  # zeroverse.store.manifest.Manifest
    inputs: dict[int, int]  # perspective 'input' views per shape
    targets: dict[int, int]  # perspective 'target' views per shape
    perspective: dict[int, int]  # all perspective views per shape
    sizes: set[tuple[int, int]]  # (H, W) of the perspective views
    roles: set[str]

    @property
    def has_eval_rig(self) -> bool:
        return any(self.inputs.values())


def scan_views(views_root: str | os.PathLike) -> ViewsScan:
    import pyarrow.parquet as pq

    from zeroverse.data.dataset import resolve_views_dir
    from zeroverse.store.shards import shard_path

    views_dir, manifest = resolve_views_dir(views_root)
    inputs: dict[int, int] = {}
    targets: dict[int, int] = {}
    perspective: dict[int, int] = {}
    sizes: set[tuple[int, int]] = set()
    roles: set[str] = set()
    for shard in manifest.shards:
        try:
            table = pq.read_table(shard_path(views_dir, shard), columns=["shape_id", "role", "projection", "width", "height"])
        except Exception:  # noqa: BLE001 - ViewDataset reports damaged shards with its own message
            continue
        cols = [table[c].to_pylist() for c in ("shape_id", "role", "projection", "width", "height")]
        for sid, role, proj, w, h in zip(*cols):
            roles.add(role)
            if proj != "perspective":
                continue
            perspective[sid] = perspective.get(sid, 0) + 1
            inputs[sid] = inputs.get(sid, 0) + (role == "input")
            targets[sid] = targets.get(sid, 0) + (role == "target")
            sizes.add((int(h), int(w)))
    return ViewsScan(views_dir, manifest, inputs, targets, perspective, sizes, roles)


def eval_rig_error(scan: ViewsScan) -> ValueError:
    return ValueError(
        f"{scan.views_dir} holds no eval-rig views (no view has role 'input'; roles found: {sorted(scan.roles)}). "
        "Evaluation needs the GSO rig (4 inputs at elevation 20°, azimuths 45/135/225/315°, target rings): render "
        "the shapes with `zeroverse render --rig eval` into a new root, or use `zeroverse eval --root / --real`, "
        "which render it for you."
    )


def check_resolution(resolution: int, cfg: GSLRMConfig, sizes: set[tuple[int, int]], where: Path) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution={resolution!r}: use an integer >= {MIN_RESOLUTION}")
    if resolution % cfg.patch_size:
        raise ValueError(f"resolution={resolution} must be a multiple of the model's patch_size {cfg.patch_size}")
    small = sorted((h, w) for h, w in sizes if h < resolution or w < resolution)
    if small:
        h, w = small[0]
        raise ValueError(
            f"views in {where} are {h}x{w} pixels but evaluation runs at {resolution}x{resolution} (the checkpoint's "
            f"image_size is {cfg.image_size}): upsampling the inputs and the ground truth would make the scores "
            f"meaningless. Render the views at {resolution} or more (--resolution {resolution}), or evaluate at "
            f"resolution={min(min(s) for s in sizes) // cfg.patch_size * cfg.patch_size}."
        )
    if resolution != cfg.image_size:
        warnings.warn(
            f"evaluating at {resolution}x{resolution}, but the checkpoint was trained at {cfg.image_size}x{cfg.image_size}",
            stacklevel=3,
        )


def object_names(manifest: Any, shape_ids: Sequence[int]) -> dict[int, str]:
    """Real-object roots list their objects (by shape id) in the manifest config."""
    objects = (manifest.config or {}).get("objects") if isinstance(manifest.config, dict) else None
    names = {}
    for sid in shape_ids:
        if isinstance(objects, list) and 0 <= sid < len(objects):
            names[sid] = str(objects[sid])
        else:
            names[sid] = f"shape {sid}"
    return names


def _attribution_file(views_dir: Path) -> Path | None:
    for folder in (views_dir.parent, views_dir):
        if (folder / ATTRIBUTION_FILE).is_file():
            return folder / ATTRIBUTION_FILE
    return None


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def evaluate(
    checkpoint: str | os.PathLike,
    views_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_input_views: int = 4,
    max_targets: int | None = None,
    resolution: int | None = None,
    device: str = "auto",
    lpips_weights: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Scores `checkpoint` on every object of an eval-rig views root (or the first `limit`).

    max_targets: targets per object (None: all; fewer: a subset seeded by the shape id, the
    same on every run). resolution: None = the checkpoint's image size; views are resized to
    it (never up). Writes metrics.json, metrics.md and grid.png into `out_dir`.
    """
    loaded = load_for_eval(checkpoint, device)
    return score_views(loaded, views_root, out_dir, num_input_views=num_input_views, max_targets=max_targets,
                       resolution=resolution, lpips_weights=lpips_weights, limit=limit, batch_size=batch_size,
                       progress=progress)


def score_views(
    loaded: LoadedCheckpoint,
    views_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_input_views: int = 4,
    max_targets: int | None = None,
    resolution: int | None = None,
    lpips_weights: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> EvalResult:
    """evaluate() with the checkpoint already loaded (on the device it scores on)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from zeroverse.data import ViewDataset, collate
    from zeroverse.store.fs import atomic_write_text

    started = time.perf_counter()
    dev = next(loaded.model.parameters()).device
    for name, value, low in (("num_input_views", num_input_views, 1), ("batch_size", batch_size, 1),
                             ("max_targets", max_targets, 1), ("limit", limit, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise ValueError(f"{name}={value!r}: use an integer >= {low}")
    cfg = loaded.cfg
    res = cfg.image_size if resolution is None else resolution
    scan = scan_views(views_root)
    if not scan.has_eval_rig:
        raise eval_rig_error(scan)
    check_resolution(res, cfg, scan.sizes, scan.views_dir)
    eval_shapes = {sid: n for sid, n in scan.inputs.items() if n}
    fewest_inputs = min(eval_shapes.values())
    if num_input_views > fewest_inputs:
        raise ValueError(f"num_input_views={num_input_views}, but shapes in {scan.views_dir} have only {fewest_inputs} 'input' views")
    fewest_targets = min(scan.targets.get(sid, 0) for sid in eval_shapes)
    if fewest_targets == 0:
        bare = [sid for sid in eval_shapes if not scan.targets.get(sid)]
        raise ValueError(f"shapes {bare[:5]} in {scan.views_dir} have no 'target' views; render them with the eval rig")
    num_targets = fewest_targets if max_targets is None else min(max_targets, fewest_targets)

    dataset = ViewDataset(
        scan.views_dir, num_input_views=num_input_views, num_target_views=num_targets, resolution=res,
        channels=("rgb",), background="white", view_sampling="eval",
    )
    shape_ids = dataset.shape_ids[:limit]
    names = object_names(scan.manifest, shape_ids)
    subset = Subset(dataset, range(len(shape_ids)))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)

    perceptual, lpips_kind, lpips_skipped = None, None, LPIPS_SKIPPED
    if lpips_weights is not None:
        perceptual = losses.PerceptualLoss(lpips_weights).to(dev)
        lpips_skipped = None
        lpips_kind = ("lpips (VGG16 with learned linear weights)" if perceptual.has_lin else
                      "vgg16 feature distance (the weights file has no LPIPS linear layers: not comparable to published LPIPS)")

    model = loaded.model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    background = torch.ones(3, device=dev)  # ViewDataset composites the ground truth on white
    objects: list[ObjectMetrics] = []
    grid_rows: list[dict[str, Any]] = []
    show = grid_targets(num_targets)
    bar = tqdm(total=len(shape_ids), unit="object", desc="evaluate", disable=not progress, dynamic_ncols=True)
    with torch.no_grad():
        for batch in loader:
            images = batch["images"].to(dev)
            c2w, K = batch["c2w"].to(dev), batch["K"].to(dev)
            n_in = num_input_views
            with amp:
                gaussians = model(images[:, :n_in], c2w[:, :n_in], K[:, :n_in])
            truth = images[:, n_in:]
            H, W = images.shape[-2:]
            scores: dict[str, list[Tensor]] = {"psnr": [], "ssim": [], "lpips": []}
            shown: list[Tensor] = []
            for s in range(0, num_targets, RENDER_CHUNK):
                e = min(s + RENDER_CHUNK, num_targets)
                out = GSLRM.render(gaussians, c2w[:, n_in + s:n_in + e], K[:, n_in + s:n_in + e], H, W, background)
                pred = out.rgb.permute(0, 1, 4, 2, 3).clamp(0, 1)  # [B, c, 3, H, W]
                gt = truth[:, s:e]
                scores["psnr"].append(metrics.psnr(pred, gt))
                scores["ssim"].append(metrics.ssim(pred, gt))
                if perceptual is not None:
                    scores["lpips"].append(metrics.lpips(pred, gt, perceptual))
                keep = [k - s for k in show if s <= k < e]
                if keep:
                    shown.append(pred[:, keep].float().cpu())
            per = {k: torch.cat(v, dim=1).float().cpu() for k, v in scores.items() if v}  # [B, T]
            for b in range(images.shape[0]):
                sid = int(batch["shape_id"][b])
                objects.append(object_metrics(sid, names[sid], batch["view_ids"][b, n_in:].tolist(), per, b))
                if len(grid_rows) < GRID_MAX_OBJECTS:
                    grid_rows.append({
                        "label": f"{names[sid]}  PSNR {objects[-1].psnr:.2f}  SSIM {objects[-1].ssim:.3f}",
                        "inputs": images[b, :n_in].float().cpu(),
                        "truth": truth[b, show].float().cpu(),
                        "pred": torch.cat(shown, dim=1)[b] if shown else truth[b, :0].cpu(),
                    })
            bar.update(images.shape[0])
    bar.close()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attribution_src = _attribution_file(scan.views_dir)
    attribution = None
    if attribution_src is not None:
        text = attribution_src.read_text()
        attribution = text.splitlines()[0] if text.strip() else None
        if attribution_src.resolve() != (out / ATTRIBUTION_FILE).resolve():
            shutil.copyfile(attribution_src, out / ATTRIBUTION_FILE)

    means = overall(objects)
    settings = {
        "num_input_views": num_input_views,
        "num_target_views": num_targets,
        "max_targets": max_targets,
        "resolution": res,
        "stored_resolutions": sorted([list(s) for s in scan.sizes]),
        "background": "white",
        "device": str(dev),
        "bf16": dev.type == "cuda",
        "rasterizer": "gsplat" if (dev.type == "cuda" and gsplat_available()) else "torch",
        "limit": limit,
        "batch_size": batch_size,
        "lpips_weights": None if lpips_weights is None else str(lpips_weights),
        "lpips_kind": lpips_kind,
        "target_sampling": "all" if num_targets == max(scan.targets.get(sid, 0) for sid in eval_shapes)
        else "subset seeded by shape id (ViewDataset view_sampling='eval', seed 0)",
    }
    result = EvalResult(
        objects=objects, psnr=means["psnr"], ssim=means["ssim"], lpips=means["lpips"],
        lpips_skipped=lpips_skipped, step=loaded.info.get("step"), out_dir=out,
        metrics_json=out / "metrics.json", metrics_md=out / "metrics.md", grid=out / "grid.png",
        settings=settings, attribution=attribution,
    )
    report = {
        "checkpoint": str(loaded.path),
        "step": result.step,
        "views_root": str(scan.views_dir.parent if scan.views_dir.name == "views" else scan.views_dir),
        "model_config": cfg.to_dict(),
        "settings": settings,
        "overall": {**{k: finite(v) for k, v in means.items()}, "num_objects": len(objects),
                    "num_targets": result.num_targets},
        "overall_per_image": {k: finite(v) for k, v in overall_per_image(objects).items()},
        "lpips_skipped": lpips_skipped,
        "objects": [object_json(o) for o in objects],
        "render_failures": list(getattr(scan.manifest, "failures", []) or []),
        "attribution": attribution,
        "zeroverse_version": version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_text(result.metrics_json, json.dumps(report, indent=2) + "\n")
    atomic_write_text(result.metrics_md, markdown(result, report))
    write_grid(result.grid, grid_rows)
    return result


__all__ = [
    "EvalResult",
    "LoadedCheckpoint",
    "ObjectMetrics",
    "checkpoint_path",
    "evaluate",
    "load_for_eval",
    "score_views",
]
