"""Texture bank speed: median ms per texture, per generator kind and overall, on one core.

    python bench/textures.py                 # N=256 textures at 256 px
    python bench/textures.py --n 512 --resolution 512
    python bench/textures.py --write-sample textures/sample   # regenerate the committed sample

Also times a cache hit (TextureBank.get from .npy on disk, memory LRU off).
"""

from __future__ import annotations

import os

# One core, as in a render worker: keep any threaded numpy backend from spreading out.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from zeroverse.scene.textures import (
    KINDS,
    TextureBank,
    TextureBankConfig,
    contact_sheet,
    generate_texture,
    texture_kind,
)

SAMPLE_COUNT = 16
SAMPLE_RESOLUTION = 128
SHEET_TILE = 96


def _row(name: str, wall: list[float], cpu: list[float]) -> str:
    return (
        f"{name:<16} {len(wall):>5} {statistics.median(wall):>9.2f} "
        f"{float(np.percentile(wall, 90)):>8.2f} {max(wall):>8.2f} {statistics.median(cpu):>8.2f}"
    )


def bench(n: int, resolution: int, seed: int) -> None:
    generate_texture(seed, 0, resolution)  # warm up imports and the presets cache
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for texture_id in range(n):
        kind = texture_kind(seed, texture_id)
        start, start_cpu = time.perf_counter(), time.thread_time()
        generate_texture(seed, texture_id, resolution)
        cpu[kind].append((time.thread_time() - start_cpu) * 1e3)
        wall[kind].append((time.perf_counter() - start) * 1e3)

    print(
        f"texture bank: seed {seed}, N={n}, {resolution}x{resolution}, one thread, "
        f"numpy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    # CPU time is the steadier figure on a shared machine; wall time is what a worker waits.
    print(f"{'kind':<16} {'count':>5} {'median ms':>9} {'p90 ms':>8} {'max ms':>8} {'cpu ms':>8}")
    for kind in KINDS:
        if wall[kind]:
            print(_row(kind, wall[kind], cpu[kind]))
    every = [t for kind in KINDS for t in wall[kind]]
    every_cpu = [t for kind in KINDS for t in cpu[kind]]
    print(_row("overall", every, every_cpu))

    with tempfile.TemporaryDirectory() as cache:
        config = TextureBankConfig(seed=seed, size=n, resolution=resolution)
        TextureBank(config, cache_dir=cache, memory_items=0).get(0)
        bank = TextureBank(config, cache_dir=cache, memory_items=0)
        hits = []
        for _ in range(50):
            start = time.perf_counter()
            bank.get(0)
            hits.append((time.perf_counter() - start) * 1e3)
        print(f"cache hit (.npy load): median {statistics.median(hits):.3f} ms")


def write_sample(out: Path, seed: int) -> None:
    """The first id of every kind, then the lowest other ids, as PNGs plus a contact sheet."""
    from PIL import Image  # only this helper needs PIL; the texture module never does

    chosen: dict[str, int] = {}
    texture_id = 0
    while len(chosen) < len(KINDS):
        chosen.setdefault(texture_kind(seed, texture_id), texture_id)
        texture_id += 1
    ids = sorted(chosen.values())
    ids += [i for i in range(SAMPLE_COUNT * 4) if i not in ids][: SAMPLE_COUNT - len(ids)]
    ids.sort()

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    images = []
    for texture_id in ids:
        image = generate_texture(seed, texture_id, SAMPLE_RESOLUTION)
        images.append(image)
        name = f"{texture_id:04d}-{texture_kind(seed, texture_id)}.png"
        Image.fromarray(image).save(out / name, optimize=True)
    sheet = contact_sheet(images, columns=4, tile=SHEET_TILE, gap=4)
    Image.fromarray(sheet).save(out / "sheet.png", optimize=True)
    total = sum(p.stat().st_size for p in out.glob("*.png"))
    print(f"wrote {len(ids)} textures and sheet.png to {out} ({total / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=256, help="textures to time (>= 200 for stable medians)"
    )
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-sample", type=Path, metavar="DIR", help="write the sample instead of timing"
    )
    args = parser.parse_args()
    if args.write_sample:
        write_sample(args.write_sample, args.seed)
    else:
        bench(args.n, args.resolution, args.seed)


if __name__ == "__main__":
    main()
