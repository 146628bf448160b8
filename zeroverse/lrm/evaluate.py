"""Evaluate a GS-LRM checkpoint on eval-rig views, and export its Gaussians as .ply.

The GSO protocol (GS-LRM, LRM-Zero): 4 input views at elevation 20°, azimuths 45/135/225/315°,
and target views on rings at elevations 0/20/40/60° (zeroverse.scene.cameras, rig kind "eval"). The
model predicts Gaussians from the inputs; every target is rendered on white (the background
ViewDataset composites the ground truth on) and scored with PSNR, SSIM and, only when the user
gives pretrained VGG16/LPIPS weights, LPIPS. Without weights LPIPS is reported as skipped, with
the reason; random weights are never used.

    evaluate(checkpoint, views_root, out_dir)          # a views root rendered with the eval rig
    evaluate_real(checkpoint, real_dir, out_dir)       # real meshes (GSO): render, then evaluate
    evaluate_procedural(checkpoint, shapes_root, out_dir, limit=100)  # held-out procedural shapes
    export_ply_from_checkpoint(checkpoint, views_root, 0, "shape0.ply")

Outputs of an evaluation in `out_dir`: metrics.json (per object and overall, settings,
checkpoint step), metrics.md (a table), grid.png (per object: the inputs, then a few targets
with the ground truth over the prediction) and, for real objects, ATTRIBUTION.txt.

Scores: per image, then per object (mean over its targets); the headline ("overall") is the mean
over objects, so every object weighs the same; "overall_per_image" is the mean over all images
(the two agree when every object has the same number of targets).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from . import losses, metrics
from .checkpoint import load_model_with_info
from .gslrm import GSLRM, Gaussians, GSLRMConfig
from .ply import export_ply
from .rasterizer import gsplat_available

# Target cameras rendered per rasterizer call: bounds the [B, C, N, ...] intermediates.
RENDER_CHUNK = 8
GRID_TARGETS = 4  # targets shown per object in grid.png
GRID_MAX_OBJECTS = 32  # rows in grid.png (the first objects); metrics cover all of them
GRID_MAX_CELL = 128  # grid cells are downscaled to at most this many pixels a side
GRID_MIN_CELL = 64  # and small images are enlarged (nearest) to at least this many
MIN_RESOLUTION = 16  # SSIM's 11-pixel window needs room
LPIPS_SKIPPED = (
    "no LPIPS weights given (lpips_weights / --lpips-weights): pretrained VGG16 weights cannot "
    "be downloaded here and random weights are never used"
)
ATTRIBUTION_FILE = "ATTRIBUTION.txt"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectMetrics:
    """Scores of one object: means over its targets, and the per-target values."""

    shape_id: int
    name: str
    psnr: float
    ssim: float
    lpips: float | None
    num_targets: int
    view_ids: list[int] = field(default_factory=list)  # the `view` column of each target
    target_psnr: list[float] = field(default_factory=list)
    target_ssim: list[float] = field(default_factory=list)
    target_lpips: list[float] | None = None


@dataclass
class EvalResult:
    objects: list[ObjectMetrics]
    psnr: float  # mean over objects
    ssim: float
    lpips: float | None  # None when skipped
    lpips_skipped: str | None  # why LPIPS is missing, else None
    step: int | None  # the checkpoint's training step
    out_dir: Path
    metrics_json: Path
    metrics_md: Path
    grid: Path
    settings: dict[str, Any]
    attribution: str | None = None

    @property
    def num_targets(self) -> int:
        return sum(o.num_targets for o in self.objects)


@dataclass
class PlyExport:
    path: Path
    shape_id: int
    name: str
    num_gaussians: int
    view_sampling: str  # "eval" (the 4 eval-rig inputs) or "random" (seeded random views)
    view_ids: list[int]


# --------------------------------------------------------------------------------------------
# Checkpoints and views roots
# --------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
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


def _load(checkpoint: str | os.PathLike, device: torch.device) -> _Loaded:
    path = checkpoint_path(checkpoint)
    try:
        model, cfg, info = load_model_with_info(path, map_location="cpu")
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a GS-LRM training checkpoint (missing or bad {err}); pass a file from `zeroverse train-lrm`") from err
    except ValueError:
        raise
    except Exception as err:  # torch.load raises UnpicklingError/RuntimeError on foreign files
        raise ValueError(f"{path} cannot be read as a weights-only GS-LRM checkpoint ({type(err).__name__}: {err})") from err
    return _Loaded(path, model.to(device), cfg, info)


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available; use 'cpu' or 'auto'")
    return dev


@dataclass
class _ViewsScan:
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


def _scan_views(views_root: str | os.PathLike) -> _ViewsScan:
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
    return _ViewsScan(views_dir, manifest, inputs, targets, perspective, sizes, roles)


def _eval_rig_error(scan: _ViewsScan) -> ValueError:
    return ValueError(
        f"{scan.views_dir} holds no eval-rig views (no view has role 'input'; roles found: {sorted(scan.roles)}). "
        "Evaluation needs the GSO rig (4 inputs at elevation 20°, azimuths 45/135/225/315°, target rings): render "
        "the shapes with `zeroverse render --rig eval` into a new root, or use evaluate_procedural / evaluate_real, "
        "which render it for you."
    )


def _check_resolution(resolution: int, cfg: GSLRMConfig, sizes: set[tuple[int, int]], where: Path) -> None:
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


def _names(manifest: Any, shape_ids: Sequence[int]) -> dict[int, str]:
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
    dev = _resolve_device(device)
    loaded = _load(checkpoint, dev)
    return _evaluate_loaded(loaded, views_root, out_dir, num_input_views, max_targets, resolution, dev,
                            lpips_weights, limit, batch_size, progress)


def _evaluate_loaded(
    loaded: _Loaded,
    views_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_input_views: int,
    max_targets: int | None,
    resolution: int | None,
    dev: torch.device,
    lpips_weights: str | os.PathLike | None,
    limit: int | None,
    batch_size: int,
    progress: bool,
) -> EvalResult:
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from zeroverse.data import ViewDataset, collate

    started = time.perf_counter()
    for name, value, low in (("num_input_views", num_input_views, 1), ("batch_size", batch_size, 1),
                             ("max_targets", max_targets, 1), ("limit", limit, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise ValueError(f"{name}={value!r}: use an integer >= {low}")
    cfg = loaded.cfg
    res = cfg.image_size if resolution is None else resolution
    scan = _scan_views(views_root)
    if not scan.has_eval_rig:
        raise _eval_rig_error(scan)
    _check_resolution(res, cfg, scan.sizes, scan.views_dir)
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
    names = _names(scan.manifest, shape_ids)
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
    show = _grid_targets(num_targets)
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
                objects.append(_object_metrics(sid, names[sid], batch["view_ids"][b, n_in:].tolist(), per, b))
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

    overall = _overall(objects)
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
        objects=objects, psnr=overall["psnr"], ssim=overall["ssim"], lpips=overall["lpips"],
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
        "overall": {**{k: _finite(v) for k, v in overall.items()}, "num_objects": len(objects),
                    "num_targets": result.num_targets},
        "overall_per_image": {k: _finite(v) for k, v in _overall_per_image(objects).items()},
        "lpips_skipped": lpips_skipped,
        "objects": [_object_json(o) for o in objects],
        "render_failures": list(getattr(scan.manifest, "failures", []) or []),
        "attribution": attribution,
        "zeroverse_version": _version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_text(result.metrics_json, json.dumps(report, indent=2) + "\n")
    _write_text(result.metrics_md, _markdown(result, report))
    _write_grid(result.grid, grid_rows)
    return result


def _object_metrics(sid: int, name: str, view_ids: list[int], per: dict[str, Tensor], b: int) -> ObjectMetrics:
    p, s = per["psnr"][b].tolist(), per["ssim"][b].tolist()
    lp = per["lpips"][b].tolist() if "lpips" in per else None
    return ObjectMetrics(
        shape_id=sid, name=name, psnr=float(np.mean(p)), ssim=float(np.mean(s)),
        lpips=None if lp is None else float(np.mean(lp)), num_targets=len(p),
        view_ids=[int(v) for v in view_ids], target_psnr=p, target_ssim=s, target_lpips=lp,
    )


def _overall(objects: list[ObjectMetrics]) -> dict[str, float | None]:
    lp = [o.lpips for o in objects]
    return {
        "psnr": float(np.mean([o.psnr for o in objects])),
        "ssim": float(np.mean([o.ssim for o in objects])),
        "lpips": None if any(v is None for v in lp) else float(np.mean(lp)),
    }


def _overall_per_image(objects: list[ObjectMetrics]) -> dict[str, float | None]:
    lp = [v for o in objects for v in (o.target_lpips or [])]
    return {
        "psnr": float(np.mean([v for o in objects for v in o.target_psnr])),
        "ssim": float(np.mean([v for o in objects for v in o.target_ssim])),
        "lpips": float(np.mean(lp)) if lp and all(o.target_lpips is not None for o in objects) else None,
    }


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _object_json(o: ObjectMetrics) -> dict[str, Any]:
    return {
        "shape_id": o.shape_id,
        "name": o.name,
        "psnr": _finite(o.psnr),
        "ssim": _finite(o.ssim),
        "lpips": _finite(o.lpips),
        "num_targets": o.num_targets,
        "targets": {
            "view_ids": o.view_ids,
            "psnr": [_finite(v) for v in o.target_psnr],
            "ssim": [_finite(v) for v in o.target_ssim],
            "lpips": None if o.target_lpips is None else [_finite(v) for v in o.target_lpips],
        },
    }


def _markdown(result: EvalResult, report: dict[str, Any]) -> str:
    s = result.settings

    def cell(x: float | None, digits: int) -> str:
        return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

    lines = [
        "# GS-LRM evaluation",
        "",
        f"- checkpoint: `{report['checkpoint']}` (step {result.step if result.step is not None else 'unknown'})",
        f"- views: `{report['views_root']}`: {len(result.objects)} objects, {s['num_input_views']} input views "
        f"(elevation 20°, azimuths 45/135/225/315°), {s['num_target_views']} target views each",
        f"- resolution {s['resolution']}×{s['resolution']}, white background, device {s['device']}"
        f"{' (bf16 autocast)' if s['bf16'] else ''}, rasterizer {s['rasterizer']}",
        f"- LPIPS: skipped ({result.lpips_skipped})" if result.lpips_skipped else f"- LPIPS: {s['lpips_kind']}",
        "",
        "| # | object | PSNR ↑ | SSIM ↑ | LPIPS ↓ | targets |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for o in result.objects:
        name = o.name.replace("|", "\\|")
        lines.append(f"| {o.shape_id} | {name} | {cell(o.psnr, 2)} | {cell(o.ssim, 4)} | {cell(o.lpips, 4)} | {o.num_targets} |")
    lines.append(f"| | **mean** | **{cell(result.psnr, 2)}** | **{cell(result.ssim, 4)}** | **{cell(result.lpips, 4)}** | "
                 f"{result.num_targets} |")
    lines.append("")
    if report["render_failures"]:
        failed = ", ".join(str(f.get("shape_id")) for f in report["render_failures"][:20])
        lines += [f"Not evaluated (failed to render, see metrics.json): {failed}", ""]
    if result.attribution:
        lines += [f"Attribution: {result.attribution} (see {ATTRIBUTION_FILE})", ""]
    return "\n".join(lines)


def _grid_targets(num_targets: int, k: int = GRID_TARGETS) -> list[int]:
    """Up to k target indices spread evenly over the targets (which walk the rings in order)."""
    if num_targets <= k:
        return list(range(num_targets))
    return sorted({int(round(x)) for x in np.linspace(0, num_targets - 1, k)})


def _write_grid(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One row per object: a label, then the inputs on the top line and a few targets with the
    ground truth on the top line and the prediction below it."""
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        Image.new("RGB", (64, 16), "white").save(path)
        return path
    H, W = rows[0]["inputs"].shape[-2:]
    scale = min(max(1.0, GRID_MIN_CELL / max(H, W)), GRID_MAX_CELL / max(H, W))
    ch, cw = max(1, round(H * scale)), max(1, round(W * scale))
    n_in = max(r["inputs"].shape[0] for r in rows)
    n_t = max(r["truth"].shape[0] for r in rows)
    gap, label_h, header_h = 6, 14, 16
    width = max(n_in * cw + gap + n_t * cw, 320)
    row_h = label_h + 2 * ch + gap
    canvas = Image.new("RGB", (width, header_h + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((2, 2), "inputs  |  targets, ground truth (top) over prediction (bottom)", fill=(0, 0, 0), font=font)

    def paste(t: Tensor, x: int, y: int) -> None:
        a = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        img = Image.fromarray(a)
        if img.size != (cw, ch):
            up = cw > img.size[0]
            img = img.resize((cw, ch), Image.Resampling.NEAREST if up else Image.Resampling.BILINEAR)
        canvas.paste(img, (x, y))

    for r, row in enumerate(rows):
        y = header_h + r * row_h
        draw.text((2, y), row["label"], fill=(0, 0, 0), font=font)
        y += label_h
        for v in range(row["inputs"].shape[0]):
            paste(row["inputs"][v], v * cw, y)
        x0 = n_in * cw + gap
        for t in range(row["truth"].shape[0]):
            paste(row["truth"][t], x0 + t * cw, y)
            if t < row["pred"].shape[0]:
                paste(row["pred"][t], x0 + t * cw, y + ch)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _write_text(path: Path, text: str) -> None:
    from zeroverse.store.fs import atomic_write_text

    atomic_write_text(path, text)


def _version() -> str:
    try:
        from zeroverse import code_version

        return code_version()
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# Real objects and held-out procedural shapes: render with the eval rig, then evaluate
# --------------------------------------------------------------------------------------------


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
    and reused across runs), then evaluate()s them at the checkpoint's image size.

    resolution: the render resolution (>= the checkpoint's image size; views are downsampled to
    it). samples: Cycles/EEVEE samples (None: RenderSettings' default). engine: auto (EEVEE with
    CUDA, else Cycles) | cycles | eevee | workbench. The GSO attribution goes into
    out_dir/ATTRIBUTION.txt and metrics.md.
    """
    from pipelines.real_objects import render_real_objects
    from zeroverse.scene.cameras import RigConfig

    dev = _resolve_device(device)
    loaded = _load(checkpoint, dev)  # fail before rendering
    _check_render_resolution(resolution, loaded.cfg, loaded.path)
    out = Path(out_dir)
    cache = Path(cache_root) if cache_root is not None else out / "real_views"
    settings = _render_settings(resolution, samples, engine)
    try:
        render_real_objects(real_dir, cache, RigConfig(kind="eval", eval_targets_per_ring=targets_per_ring), settings,
                            limit=limit, progress=progress)
    except ValueError as err:
        raise _cache_mismatch(err, cache) from err
    return _evaluate_loaded(loaded, cache, out, 4, max_targets, None, dev, lpips_weights, None, batch_size, progress)


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
    gets its own views/), then evaluate()s them. Warns when the shapes are the training ones.
    """
    from pipelines.render import RenderConfig, run_render
    from zeroverse.scene.cameras import RigConfig

    src = Path(shapes_root)
    if src.name == "shapes" and (src / "manifest.json").is_file():
        src = src.parent  # ROOT/shapes given: its root
    if not (src / "shapes" / "manifest.json").is_file():
        raise ValueError(f"{src} has no shapes/manifest.json; pass a root written by `zeroverse generate`")
    dev = _resolve_device(device)
    loaded = _load(checkpoint, dev)  # fail before rendering
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
    return _evaluate_loaded(loaded, cache, out, 4, max_targets, None, dev, lpips_weights, limit, batch_size, progress)


# --------------------------------------------------------------------------------------------
# .ply export
# --------------------------------------------------------------------------------------------


def predict_gaussians(
    model: GSLRM,
    images: Tensor,  # [B, V, 3, H, W] in [0, 1]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
) -> Gaussians:
    """The model's Gaussians [B, V*H*W] in float32 (bf16 autocast on CUDA only)."""
    dev = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    with torch.no_grad(), amp:
        g = model(images.to(dev), c2w.to(dev), K.to(dev))
    return g.to(dtype=torch.float32)


def export_ply_from_checkpoint(
    checkpoint: str | os.PathLike,
    views_root: str | os.PathLike,
    shape_index: int,
    out_path: str | os.PathLike,
    num_input_views: int = 4,
    view_sampling: str = "auto",
    resolution: int | None = None,
    device: str = "auto",
) -> PlyExport:
    """Predicts the Gaussians of item `shape_index` (position in the root's sorted shape ids) and
    writes them as a standard 3DGS .ply: num_input_views x H x W Gaussians (no pruning).

    view_sampling: "eval" (the eval rig's input views), "random" (seeded random views, seed 0;
    any rig) or "auto" (eval when the root was rendered with the eval rig).
    """
    from zeroverse.data import ViewDataset

    if view_sampling not in ("auto", "eval", "random"):
        raise ValueError(f"view_sampling={view_sampling!r}: use 'auto', 'eval' or 'random'")
    if isinstance(num_input_views, bool) or not isinstance(num_input_views, (int, np.integer)) or num_input_views < 1:
        raise ValueError(f"num_input_views={num_input_views!r}: use an integer >= 1")
    dev = _resolve_device(device)
    loaded = _load(checkpoint, dev)
    scan = _scan_views(views_root)
    if view_sampling == "auto":
        view_sampling = "eval" if scan.has_eval_rig else "random"
    if view_sampling == "eval" and not scan.has_eval_rig:
        raise _eval_rig_error(scan)
    res = loaded.cfg.image_size if resolution is None else resolution
    _check_resolution(res, loaded.cfg, scan.sizes, scan.views_dir)
    dataset = ViewDataset(scan.views_dir, num_input_views=num_input_views, num_target_views=0, resolution=res,
                          channels=("rgb",), background="white", view_sampling=view_sampling)
    if isinstance(shape_index, bool) or not isinstance(shape_index, (int, np.integer)) or not 0 <= shape_index < len(dataset):
        raise ValueError(
            f"shape_index={shape_index!r}: {scan.views_dir} holds {len(dataset)} shapes; use 0..{len(dataset) - 1} "
            f"(shape ids {dataset.shape_ids[0]}..{dataset.shape_ids[-1]})"
        )
    item = dataset[int(shape_index)]
    g = predict_gaussians(loaded.model, item["images"][None], item["c2w"][None], item["K"][None])
    sid = int(item["shape_id"])
    path = export_ply(g[0], out_path)
    return PlyExport(path=Path(path), shape_id=sid, name=_names(scan.manifest, [sid])[sid], num_gaussians=g.num,
                     view_sampling=view_sampling, view_ids=item["view_ids"].tolist())


__all__ = [
    "EvalResult",
    "ObjectMetrics",
    "PlyExport",
    "checkpoint_path",
    "evaluate",
    "evaluate_procedural",
    "evaluate_real",
    "export_ply_from_checkpoint",
    "predict_gaussians",
]
