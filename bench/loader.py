"""Loader throughput: decoded views per second per core through the DataLoader, and per-cell decode cost.

Writes synthetic view shards with realistic content (tests/synthetic_views.py, texture="noise":
fine multi-scale texture, the object filling about half the frame, so PNGs are ~1/3 of raw RGBA
as in real renders), then measures:
  - decode ms per view: PNG (PIL), depth (float32), normal (float16), one core;
  - ViewDataset items through torch DataLoader with num_workers 0 and 1 (every process pinned to
    one torch thread), as decoded views per second. With num_workers=0 one core does everything;
    with 1 worker the worker decodes on one core while the main process only receives batches,
    so both rows are "per decoding core".

    python bench/loader.py                       # 256² and 512², 8 views per item
    python bench/loader.py --resolutions 512 --views 4 --items 64
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_views import write_view_shards  # noqa: E402

from zeroverse.data import ViewDataset, collate  # noqa: E402
from zeroverse.data.decode import decode_depth, decode_normal, decode_rgba  # noqa: E402
from zeroverse.store.manifest import Manifest


def make_root(base: Path, resolution: int, shapes: int, views: int) -> Path:
    root = base / f"r{resolution}"
    write_view_shards(root, num_shapes=shapes, views_per_shape=views, resolution=resolution, shard_size=max(1, shapes // 2),
                      texture="noise", texture_size=512, fov_deg=32.0)
    return root


def cell_costs(root: Path, repeats: int = 3) -> dict[str, float]:
    manifest = Manifest.load(root / "views")
    table = pq.read_table(root / "views" / manifest.shards[0]["file"], columns=["rgba", "depth", "normal", "height", "width"])
    rows = table.to_pylist()
    H, W = rows[0]["height"], rows[0]["width"]
    out = {"png_kb": float(np.mean([len(r["rgba"]) for r in rows])) / 1024}
    for name, fn in (
        ("png_ms", lambda r: decode_rgba(r["rgba"])),
        ("pil_only_ms", lambda r: Image.open(io.BytesIO(r["rgba"])).load()),
        ("depth_ms", lambda r: decode_depth(r["depth"], H, W)),
        ("normal_ms", lambda r: decode_normal(r["normal"], H, W)),
    ):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for r in rows:
                fn(r)
            best = min(best, (time.perf_counter() - t) / len(rows))
        out[name] = best * 1e3
    # Parquet row group read (zstd) of one shape, columns of the default channels: Parquet reads
    # whole column chunks, so this covers every stored view, not only the V decoded ones.
    ds = ViewDataset(root, num_input_views=1, num_target_views=1)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for entry in ds.entries:
            ds.reader.read_table(entry)
        best = min(best, (time.perf_counter() - t) / len(ds.entries))
    out["rowgroup_ms"] = best * 1e3
    return out


def loader_rate(root: Path, workers: int, views: int, items: int, batch: int, resolution: int | None) -> float:
    ds = ViewDataset(root, num_input_views=views // 2, num_target_views=views - views // 2, resolution=resolution)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    seen, epoch, start = 0, 0, None
    warmup = batch * 2
    while True:
        ds.set_epoch(epoch)
        for b in loader:
            seen += b["images"].shape[0]
            if start is None and seen >= warmup:
                start, seen = time.perf_counter(), 0
            elif start is not None and seen >= items:
                return seen * views / (time.perf_counter() - start)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--shapes", type=int, default=6)
    parser.add_argument("--views-per-shape", type=int, default=16)
    parser.add_argument("--views", type=int, default=8, help="views per item (inputs + targets)")
    parser.add_argument("--items", type=int, default=48, help="timed items per configuration")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures: no intra-op threads in the main process either

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            t = time.perf_counter()
            root = make_root(Path(tmp), res, args.shapes, args.views_per_shape)
            print(f"wrote {args.shapes} shapes x {args.views_per_shape} views at {res}² in {time.perf_counter() - t:.0f} s", flush=True)
            costs = cell_costs(root)
            configs = [(res, None)] + ([(res, res // 2)] if res >= 512 else [])
            for src, target in configs:
                for w in args.workers:
                    rate = loader_rate(root, w, args.views, args.items, args.batch, target)
                    rows.append((f"{src}²" + (f"->{target}²" if target else ""), w, rate, costs))
                    print(f"  {rows[-1][0]:>11}  workers={w}  {rate:7.1f} views/s", flush=True)

    print()
    print(f"DataLoader, {args.views} views/item, batch {args.batch}, channels rgb+alpha+depth, torch threads {torch.get_num_threads()}")
    print(f"(per-cell costs are per stored view; 'row group ms' is per shape of {args.views_per_shape} stored views)")
    print(f"{'resolution':>11} | {'workers':>7} | {'views/s/core':>12} | {'PNG KB':>6} | {'PNG ms':>6} | {'depth ms':>8} | {'normal ms':>9} | {'row group ms':>12}")
    print("-" * 95)
    for name, w, rate, c in rows:
        print(f"{name:>11} | {w:>7} | {rate:>12.1f} | {c['png_kb']:>6.0f} | {c['png_ms']:>6.2f} | {c['depth_ms']:>8.3f} | "
              f"{c['normal_ms']:>9.3f} | {c['rowgroup_ms']:>12.1f}")


if __name__ == "__main__":
    main()
