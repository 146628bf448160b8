"""Shapes per second per core for `zeroverse generate` (default recipe config).

Builds N shapes in this one process (recipe -> numpy primitives -> Blender booleans/wireframes ->
arrays -> Parquet row), the work one Ray worker does per shape, and reports medians over shapes.
CPU time is quoted beside wall time because a busy machine inflates wall time but not CPU time.
Usage: python bench/generate.py [--n 200] [--seed 0] [--shard-shapes 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, not an installed copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-shapes", type=int, default=64, help="shapes of the timed whole-shard build (incl. the write)")
    args = parser.parse_args()

    from pipelines.generate import GenerateConfig, make_shape_shard, shape_row
    from zeroverse.scene.recipe import RecipeConfig

    cfg = RecipeConfig()
    shape_row(args.seed, 0, cfg)  # warm-up: imports bpy and primes Blender
    wall, cpu, verts, faces, augs = [], [], [], [], {"height_field": 0, "boolean": 0, "wireframe": 0}
    for shape_id in range(args.n):
        w0, c0 = time.perf_counter(), time.process_time()
        row = shape_row(args.seed, shape_id, cfg)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        verts.append(row["num_vertices"])
        faces.append(row["num_faces"])
        for a in __import__("json").loads(row["recipe"])["augmentations"]:
            augs[a] += 1
    with tempfile.TemporaryDirectory() as tmp:
        m = args.shard_shapes
        gen = GenerateConfig(root=Path(tmp), n=m, seed=args.seed, shard_size=m)
        w0 = time.perf_counter()
        record = make_shape_shard(gen, 0, m - 1).record
        shard_s = time.perf_counter() - w0
    med_wall, med_cpu = statistics.median(wall), statistics.median(cpu)
    print(f"zeroverse generate benchmark: N={args.n} shapes, default recipe config, seed {args.seed}")
    print(f"{'metric':<38}{'value':>12}")
    print(f"{'median wall s / shape':<38}{med_wall:>12.4f}")
    print(f"{'median CPU s / shape':<38}{med_cpu:>12.4f}")
    print(f"{'shapes/s per core (CPU time)':<38}{1 / med_cpu:>12.1f}")
    print(f"{'shapes/s per core (wall time)':<38}{1 / med_wall:>12.1f}")
    print(f"{'p90 wall s / shape':<38}{np.percentile(wall, 90):>12.4f}")
    print(f"{'mean vertices':<38}{np.mean(verts):>12.0f}")
    print(f"{'mean faces':<38}{np.mean(faces):>12.0f}")
    print(f"{f'{m}-shape shard incl. write (shapes/s)':<38}{m / shard_s:>12.1f}")
    print(f"{'shard MB per shape':<38}{record.bytes / m / 1e6:>12.3f}")
    print("augmentation rates: " + ", ".join(f"{k} {v / args.n:.2f}" for k, v in augs.items()))


if __name__ == "__main__":
    main()
