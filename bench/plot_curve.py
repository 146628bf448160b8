"""Draws a training curve (PSNR and loss against step) from a run's metrics.jsonl with PIL only
(no plotting library is needed on a GPU node).  python bench/plot_curve.py RUN/metrics.jsonl OUT.png"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def plot(metrics: Path, out: Path, key: str = "psnr", title: str | None = None, width: int = 720, height: int = 360) -> None:
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    points = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
    if not points:
        raise SystemExit(f"{metrics}: no '{key}' values")
    steps, values = zip(*points)
    left, right, top, bottom = 60, 20, 30, 40
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (width - left - right)
        y = top + (hi - value) / (hi - lo) * (height - top - bottom)
        return x, y

    for k in range(6):  # grid and labels
        v = lo + (hi - lo) * k / 5
        _, y = xy(x0, v)
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((5, y - 6), f"{v:.2f}", fill="black")
        s = x0 + (x1 - x0) * k / 5
        x, _ = xy(s, lo)
        draw.text((x - 15, height - bottom + 8), f"{int(s)}", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.line([xy(s, v) for s, v in points], fill=(30, 90, 200), width=2)
    draw.text((left, 8), title or f"{key} vs step ({Path(metrics).parent.name})", fill="black")
    draw.text((width // 2 - 15, height - 16), "step", fill="black")
    img.save(out)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]), *(sys.argv[3:4] or []))
