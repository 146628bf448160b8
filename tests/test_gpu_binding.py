"""On a GPU node: a render worker asked for device k renders on device k, says so in its view
shards, and views rendered on different GPUs agree within the render tolerance.

Where the rendering happened is read from outside, with nvidia-smi (in these containers its
process table is empty, so per-GPU memory is the evidence): while a worker bound to device k
renders EEVEE views, device k's memory must grow and no other device's may. Skipped without
nvidia-smi or a GPU. Runs under pytest (marks gpu, blender) and also without it, e.g. with
Blender's Python on the GPU machine (bpy, numpy and pyarrow there, no pytest):

    python3.11 tests/test_gpu_binding.py [--devices 0,1]      # exit 1 if a worker drew elsewhere
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RES, VIEWS, SHAPES = 256, 8, 6  # ~6 s of EEVEE after its shader warm-up: long enough to be seen
GROWTH_MIB = 100  # an EEVEE context takes ~600 MiB; the other GPUs may move by a few MiB
RGBA_TOL, DEPTH_REL_TOL, NORMAL_TOL = 1, 1e-3, 1e-3  # as tests/test_render_fast_path.py


def gpu_memory() -> dict[int, int]:
    """{device index: MiB used} from nvidia-smi; {} when there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(i): int(m) for i, m in (line.split(",") for line in out.strip().splitlines() if line.strip())}


def make_root(root: Path) -> Path:
    """SHAPES generated shapes, in a process of its own (a pool spawned from a process that has
    imported bpy finds Blender's internal `bpy` package first)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = ["generate", "--backend", "processes", "--no-progress", "--root", str(root), "--n", str(SHAPES), "--shard-size", str(SHAPES), "--workers", "2"]
    subprocess.run([sys.executable, "-m", "zeroverse.cli", *args], cwd=REPO, env=env, check=True, capture_output=True)
    return root


def worker(root: str, out: str, device: str) -> None:
    """One render worker bound to `device`, as the farm makes it (child process)."""
    from pipelines.render import RenderConfig
    from pipelines.view_writer import ViewShardWriter
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings
    from zeroverse.store.manifest import Manifest

    shapes = Manifest.load(Path(root) / "shapes")
    cfg = RenderConfig(root=Path(out), rig=RigConfig(num_views=VIEWS), settings=RenderSettings(engine="eevee", resolution=RES, samples=16), shapes_per_shard=SHAPES)
    writer = ViewShardWriter(cfg, shapes, source_root=Path(root), device=int(device))
    record = writer.render_shard(0, SHAPES - 1, list(range(SHAPES))).record
    writer.close()
    print("RECORD " + json.dumps({"file": record.file, "rows": record.rows, "failed": list(record.failed)}))


def render_on(device: int, root: Path, out: Path) -> dict:
    """Runs a worker bound to `device`; returns the peak memory growth per GPU and the shard's
    recorded device."""
    before = gpu_memory()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the binding, not the parent, must choose the device
    proc = subprocess.Popen([sys.executable, __file__, "worker", str(root), str(out), str(device)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak = dict.fromkeys(before, 0)
    while proc.poll() is None:
        for k, used in gpu_memory().items():
            peak[k] = max(peak.get(k, 0), used - before.get(k, 0))
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RECORD ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker on device {device} failed ({proc.returncode}):\n{stderr[-3000:]}")
    record = json.loads(lines[-1].split(" ", 1)[1])
    import pyarrow.parquet as pq

    meta = pq.read_metadata(out / "views" / record["file"]).metadata
    return {"growth_mib": peak, "record": record, "recorded": json.loads(meta[b"zeroverse.render_device"])}


def decode_png_up(data: bytes) -> "np.ndarray":  # noqa: F821
    """RGBA8 of a PNG written by zeroverse.scene.imageio.encode_png ('Up' filter on every row):
    Blender's Python has no PIL."""
    import numpy as np

    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    idat, pos = b"", 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 4)
    assert (raw[:, 0] == 2).all(), "not an Up-filtered PNG"
    return np.cumsum(raw[:, 1:], axis=0, dtype=np.uint8).reshape(h, w, 4)  # uint8 sums wrap modulo 256, as PNG wants


def compare_shards(a: Path, b: Path) -> dict:
    """Largest differences between two view shards of the same shapes and cameras."""
    import numpy as np
    import pyarrow.parquet as pq

    ra, rb = pq.read_table(a).to_pylist(), pq.read_table(b).to_pylist()
    assert [(r["shape_id"], r["view"]) for r in ra] == [(r["shape_id"], r["view"]) for r in rb]
    out = {"rgba": 0, "depth_rel": 0.0, "normal": 0.0, "coverage_mismatch_px": 0}
    for x, y in zip(ra, rb):
        h, w = x["height"], x["width"]
        da, db = (np.frombuffer(r["depth"], "<f4").reshape(h, w) for r in (x, y))
        na, nb = (np.frombuffer(r["normal"], "<f2").reshape(h, w, 3).astype(np.float32) for r in (x, y))
        both = (da > 0) & (db > 0)
        out["coverage_mismatch_px"] += int(((da > 0) != (db > 0)).sum())
        out["rgba"] = max(out["rgba"], int(np.abs(decode_png_up(x["rgba"]).astype(np.int16) - decode_png_up(y["rgba"])).max()))
        if both.any():
            out["depth_rel"] = max(out["depth_rel"], float((np.abs(da[both] - db[both]) / da[both]).max()))
            out["normal"] = max(out["normal"], float(np.abs(na[both] - nb[both]).max()))
    return out


def check_devices(devices: list[int], work: Path) -> list[str]:
    """Problems found (empty: every worker drew on its device, and the devices agree)."""
    root = make_root(work / "root")
    problems, files = [], {}
    for k in devices:
        out = work / f"views-gpu{k}"
        got = render_on(k, root, out)
        growth = got["growth_mib"]
        print(f"device {k}: memory growth per GPU (MiB) {growth}; shard says {got['recorded']}")
        busiest = max(growth, key=growth.get)
        if busiest != k or growth[k] < GROWTH_MIB:
            problems.append(f"worker asked for GPU {k} drew on GPU {busiest} (growth MiB {growth})")
        others = {g: m for g, m in growth.items() if g != k and m >= GROWTH_MIB}
        if others:
            problems.append(f"worker asked for GPU {k} also grew GPU(s) {others}")
        if got["recorded"].get("index") != k:
            problems.append(f"shard rendered for GPU {k} records {got['recorded']}")
        if got["record"]["failed"]:
            problems.append(f"GPU {k}: shapes failed: {got['record']['failed']}")
        files[k] = out / "views" / got["record"]["file"]
    first = devices[0]
    for k in devices[1:]:
        d = compare_shards(files[first], files[k])
        print(f"GPU {first} vs GPU {k}: {d}")
        if d["rgba"] > RGBA_TOL or d["depth_rel"] > DEPTH_REL_TOL or d["normal"] > NORMAL_TOL or d["coverage_mismatch_px"]:
            problems.append(f"views of GPU {first} and GPU {k} differ beyond tolerance: {d}")
    return problems


try:
    import pytest
except ImportError:  # Blender's Python on the GPU machine
    pytest = None

if pytest is not None:

    @pytest.mark.gpu
    @pytest.mark.blender
    def test_worker_asked_for_device_k_renders_on_device_k(tmp_path):
        devices = sorted(gpu_memory())
        if not devices:
            pytest.skip("no NVIDIA GPU here (nvidia-smi lists none)")
        problems = check_devices(devices, tmp_path)
        assert not problems, "\n".join(problems)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(*sys.argv[2:5])
        sys.exit(0)
    wanted = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else None
    found = sorted(gpu_memory())
    if not found:
        print("no NVIDIA GPU here (nvidia-smi lists none): nothing to check")
        sys.exit(0)
    devices = [int(x) for x in wanted.split(",")] if wanted else found
    work = Path(tempfile.mkdtemp(prefix="zv-gpu-binding-"))
    try:
        problems = check_devices(devices, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(problems) if problems else f"ok: every worker rendered on its device ({devices})")
    sys.exit(1 if problems else 0)
