"""Same seed, same bytes: generate + render with 1, 2 and 4 workers give identical shard files.

The runs need a local Ray with 4 CPUs (this box has 2: Ray takes the count it is given), so they
run in a driver process of their own (`python tests/test_determinism.py OUT`), which prints, per
worker count, the sha256 of every shard and manifest and how many distinct worker processes did
the work (ZEROVERSE_FAULTS `mark` markers hold the pid that built each shard). tests/test_cluster.py shows the same for 1 vs 2 nodes. What may differ between runs,
and does: each manifest's per-shard `seconds` (timings) and the order in which shards land.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER_COUNTS = (1, 2, 4)
N, SHARD, V, SPS = 8, 2, 2, 2  # 4 shape shards and 4 view shards: work for 4 workers


@pytest.mark.ray
@pytest.mark.blender
def test_one_two_and_four_workers_write_identical_shards(tmp_path):
    env = dict(os.environ, RAY_DEDUP_LOGS="1", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DETERMINISM ")]
    assert proc.returncode == 0 and lines, f"driver failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    runs = json.loads(lines[-1].split(" ", 1)[1])
    assert sorted(runs, key=int) == [str(w) for w in WORKER_COUNTS]
    for workers, run in runs.items():
        # The concurrency was real: W render workers (one Blender each); generate tasks spread over
        # several processes (how many exactly is Ray's choice: it may reuse an idle worker).
        assert run["render_workers"] == int(workers), run
        assert run["generate_processes"] >= 1, run
        assert run["shapes"] == N and run["views"] == N * V and run["failures"] == 0, run
    assert runs["4"]["generate_processes"] >= 2, runs["4"]
    one = runs["1"]
    assert len(one["files"]["shapes"]) == N // SHARD and len(one["files"]["views"]) == N // SPS
    for workers in ("2", "4"):
        for stage in ("shapes", "views"):
            assert runs[workers]["files"][stage] == one["files"][stage], f"{stage}: {workers} workers wrote other bytes than 1"
            assert runs[workers]["manifests"][stage] == one["manifests"][stage], f"{stage} manifest differs beyond timings"


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))}


def _manifest_digest(directory: Path) -> str:
    body = json.loads((directory / "manifest.json").read_text())
    for shard in body["shards"]:
        shard.pop("seconds")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _marked_pids(directory: Path) -> set[int]:
    """Pids in the ZEROVERSE_FAULTS `mark` markers: the processes that built each shard's first shape."""
    return {int(p.read_text()) for p in directory.glob("generate-mark-*")}


def _driver(out: Path) -> None:
    sys.path.insert(0, str(REPO))
    import ray

    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.render import RenderConfig, run_render
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    ray.init(num_cpus=max(WORKER_COUNTS), include_dashboard=False, configure_logging=False, log_to_driver=False)
    runs = {}
    for workers in WORKER_COUNTS:
        root = out / f"w{workers}"
        # Each shard's first shape leaves a marker with the pid of the process that built it.
        marks = out / f"marks{workers}"
        marks.mkdir()
        os.environ["ZEROVERSE_FAULTS"] = ",".join(f"generate:mark@{first}" for first in range(0, N, SHARD))
        os.environ["ZEROVERSE_FAULTS_DIR"] = str(marks)
        bank = prepare_bank(root, None, 1024)
        gen = run_generate(GenerateConfig(root=root, n=N, seed=11, shard_size=SHARD, textures=bank.describe()), workers=workers, progress=False)
        del os.environ["ZEROVERSE_FAULTS"]
        pids = _marked_pids(marks)
        ren = run_render(
            RenderConfig(root=root, rig=RigConfig(num_views=V), settings=RenderSettings(engine="cycles", resolution=32, samples=1), shapes_per_shard=SPS),
            workers=workers,
            progress=False,
        )
        runs[workers] = {
            "generate_processes": len(pids),
            "render_workers": ren.workers_started,
            "shapes": gen.shapes,
            "views": ren.views,
            "failures": len(gen.failures) + len(ren.failures),
            "files": {stage: _digests(root / stage) for stage in ("shapes", "views")},
            "manifests": {stage: _manifest_digest(root / stage) for stage in ("shapes", "views")},
        }
    ray.shutdown()
    print("DETERMINISM " + json.dumps(runs), flush=True)


if __name__ == "__main__":
    _driver(Path(sys.argv[1]))
