"""What an evaluation reports: per-object scores, the overall means, metrics.json's entries,
metrics.md's table and grid.png. Pure formatting of scores that evaluate.py computes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

GRID_TARGETS = 4  # targets shown per object in grid.png
GRID_MAX_CELL = 128  # grid cells are downscaled to at most this many pixels a side
GRID_MIN_CELL = 64  # and small images are enlarged (nearest) to at least this many
ATTRIBUTION_FILE = "ATTRIBUTION.txt"


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


def object_metrics(sid: int, name: str, view_ids: list[int], per: dict[str, Tensor], b: int) -> ObjectMetrics:
    p, s = per["psnr"][b].tolist(), per["ssim"][b].tolist()
    lp = per["lpips"][b].tolist() if "lpips" in per else None
    return ObjectMetrics(
        shape_id=sid, name=name, psnr=float(np.mean(p)), ssim=float(np.mean(s)),
        lpips=None if lp is None else float(np.mean(lp)), num_targets=len(p),
        view_ids=[int(v) for v in view_ids], target_psnr=p, target_ssim=s, target_lpips=lp,
    )


def overall(objects: list[ObjectMetrics]) -> dict[str, float | None]:
    lp = [o.lpips for o in objects]
    return {
        "psnr": float(np.mean([o.psnr for o in objects])),
        "ssim": float(np.mean([o.ssim for o in objects])),
        "lpips": None if any(v is None for v in lp) else float(np.mean(lp)),
    }


def overall_per_image(objects: list[ObjectMetrics]) -> dict[str, float | None]:
    lp = [v for o in objects for v in (o.target_lpips or [])]
    return {
        "psnr": float(np.mean([v for o in objects for v in o.target_psnr])),
        "ssim": float(np.mean([v for o in objects for v in o.target_ssim])),
        "lpips": float(np.mean(lp)) if lp and all(o.target_lpips is not None for o in objects) else None,
    }


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def object_json(o: ObjectMetrics) -> dict[str, Any]:
    return {
        "shape_id": o.shape_id,
        "name": o.name,
        "psnr": finite(o.psnr),
        "ssim": finite(o.ssim),
        "lpips": finite(o.lpips),
        "num_targets": o.num_targets,
        "targets": {
            "view_ids": o.view_ids,
            "psnr": [finite(v) for v in o.target_psnr],
            "ssim": [finite(v) for v in o.target_ssim],
            "lpips": None if o.target_lpips is None else [finite(v) for v in o.target_lpips],
        },
    }


def markdown(result: EvalResult, report: dict[str, Any]) -> str:
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


def grid_targets(num_targets: int, k: int = GRID_TARGETS) -> list[int]:
    """Up to k target indices spread evenly over the targets (which walk the rings in order)."""
    if num_targets <= k:
        return list(range(num_targets))
    return sorted({int(round(x)) for x in np.linspace(0, num_targets - 1, k)})


def write_grid(path: Path, rows: list[dict[str, Any]]) -> Path:
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
