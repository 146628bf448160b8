"""Which physical GPU a render worker draws on (zeroverse.scene.gpu_devices), on CPU: Ray's GPU ids
(ints or strings, fractional packing), the local pool's round-robin over --gpus through
CUDA_VISIBLE_DEVICES, UUIDs, MIG slices, no GPU. And the binding hook runs before bpy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zeroverse.scene.gpu_devices import (
    EEVEE_WORKERS_PER_GPU,
    GpuAssignmentError,
    eevee_pool_workers,
    parse_gpu_list,
    parse_visible_devices,
    physical_index,
    pool_worker_device,
    ray_worker_device,
    workers_per_gpu,
)

REPO = Path(__file__).resolve().parents[1]
UUID0 = "GPU-1b2f5c3e-0000-4000-8000-000000000000"
UUID1 = "GPU-9d8c7b6a-1111-4111-8111-111111111111"


@pytest.mark.parametrize("ids, device", [([], None), (None, None), ([0], 0), ([3], 3), (["1"], 1), (["2", "3"], 2), ([" 7 "], 7)])
def test_ray_ids_are_physical_indices_as_ints_or_strings(ids, device):
    assert ray_worker_device(ids) == device


def test_fractional_workers_share_the_device_ray_named():
    # --gpus-per-worker 0.25: Ray hands the same id to four actors; each renders on that device.
    assert workers_per_gpu(0.25) == 4
    assert [ray_worker_device(["1"]) for _ in range(workers_per_gpu(0.25))] == [1, 1, 1, 1]
    assert workers_per_gpu(1.0) == 1 and workers_per_gpu(0.3) == 3 and workers_per_gpu(1 / 3) == 3 and workers_per_gpu(0.5) == 2
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(GpuAssignmentError, match="fraction of one GPU"):
            workers_per_gpu(bad)


def test_the_default_eevee_fraction_packs_exactly_the_workers_it_names():
    # render's default --gpus-per-worker is 1 / EEVEE_WORKERS_PER_GPU; Ray counts fractions in
    # 1/10000 units, so a count like 6 would pack only 5 (round(10000 / 6) = 1667 units).
    assert workers_per_gpu(1.0 / EEVEE_WORKERS_PER_GPU) == EEVEE_WORKERS_PER_GPU
    assert workers_per_gpu(1.0 / 6) == 5


def test_a_local_eevee_pool_defaults_to_eight_workers_per_gpu_within_the_cpus():
    assert eevee_pool_workers(gpu_count=1, cpus=16) == 8
    assert eevee_pool_workers(gpu_count=2, cpus=32) == 16
    assert eevee_pool_workers(gpu_count=0, cpus=16) == 8  # no --gpus: all on the default GPU
    assert eevee_pool_workers(gpu_count=8, cpus=48) == 48  # the CPUs are the limit
    assert eevee_pool_workers(gpu_count=2, cpus=16, threads=4) == 4
    assert eevee_pool_workers(gpu_count=1, cpus=1, threads=2) == 1


def test_uuid_names_are_mapped_with_a_table_or_refused_naming_the_fix():
    table = {UUID0: 0, UUID1: 1}
    assert ray_worker_device([UUID1], table) == 1
    assert physical_index(UUID1[4:], table) == 1  # nvidia-smi tables and CUDA accept either spelling
    with pytest.raises(GpuAssignmentError, match="UUID.*CUDA_VISIBLE_DEVICES.*indices.*nvidia-smi"):
        ray_worker_device([UUID0])


def test_mig_slices_are_refused():
    with pytest.raises(GpuAssignmentError, match="MIG.*no graphics"):
        ray_worker_device(["MIG-5d1c2b3a-0000-4000-8000-000000000000"])


@pytest.mark.parametrize("bad", [-1, True, "-2", "gpu0"])
def test_bad_ids_are_refused(bad):
    with pytest.raises(GpuAssignmentError):
        physical_index(bad)


def test_pool_workers_go_round_robin_over_the_listed_devices():
    assert [pool_worker_device(r, [0, 1]) for r in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [pool_worker_device(r, [1]) for r in range(3)] == [1, 1, 1]
    assert pool_worker_device(0, None) is None and pool_worker_device(5, []) is None


def test_pool_devices_are_positions_in_cuda_visible_devices():
    # The parent sees physical GPUs 2 and 3 as CUDA devices 0 and 1.
    assert [pool_worker_device(r, [0, 1], "2,3") for r in range(4)] == [2, 3, 2, 3]
    with pytest.raises(GpuAssignmentError, match="shows 1 device"):
        pool_worker_device(0, [1], "5")
    with pytest.raises(GpuAssignmentError, match="UUID"):
        pool_worker_device(0, [0], UUID0)
    assert pool_worker_device(1, [0, 1], f"{UUID0},{UUID1}", {UUID0: 4, UUID1: 6}) == 6


@pytest.mark.parametrize("value, entries", [(None, None), ("", []), ("0", ["0"]), ("2, 3", ["2", "3"]), ("1,-1,2", ["1"]), ("-1", [])])
def test_cuda_visible_devices_parsing_follows_cuda(value, entries):
    assert parse_visible_devices(value) == entries


def test_gpu_list_option():
    assert parse_gpu_list("0,1") == [0, 1] and parse_gpu_list(None) is None and parse_gpu_list(" ") is None
    for bad, why in (("a,b", "indices separated by commas"), ("0,0", "twice"), ("-1", ">= 0")):
        with pytest.raises(GpuAssignmentError, match=why):
            parse_gpu_list(bad)


def test_gpu_devices_imports_nothing_heavy():
    code = "import sys, zeroverse.scene.gpu_devices, blender_scripts.gpu_binding; print(sorted({'bpy', 'ray', 'torch', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stderr


def test_binding_hook_sets_the_environment_before_bpy_and_says_so():
    code = (
        "import os, sys\n"
        "from blender_scripts.gpu_binding import bind_render_device\n"
        "print(bind_render_device(None), os.environ.get('CUDA_VISIBLE_DEVICES'))\n"
        "print(bind_render_device(3), os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "sys.modules['bpy'] = object()\n"
        "print(bind_render_device(1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)})
    assert out.stdout.splitlines() == ["none None", "CUDA_VISIBLE_DEVICES=3 3", "CUDA_VISIBLE_DEVICES=1 (set after bpy was imported)"], out.stderr


@pytest.mark.blender
def test_process_backend_gpus_option_reaches_the_view_shards(tmp_path):
    """`zeroverse render --backend processes --gpus 0,1` binds each process to one of the devices and every view
    shard records the one that rendered it (on this CPU: Cycles, so the binding changes nothing
    else). Which process takes which shard is the pool's choice; the round-robin itself is
    test_pool_workers_go_round_robin_over_the_listed_devices."""
    import json

    import pyarrow.parquet as pq

    env = {**{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}, "PYTHONPATH": str(REPO)}
    root = tmp_path / "root"
    pool = [sys.executable, "-m", "zeroverse.cli"]
    for args in (["generate", "--backend", "processes", "--no-progress", "--root", str(root), "--n", "3", "--shard-size", "3", "--workers", "1"],
                 ["render", "--backend", "processes", "--no-progress", "--root", str(root), "--views", "1", "--resolution", "16",
                  "--samples", "1", "--engine", "cycles", "--workers", "2", "--gpus", "0,1", "--shapes-per-shard", "1"]):  # fmt: skip
        proc = subprocess.run(pool + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted((root / "views").glob("views-*.parquet"))
    assert len(shards) == 3
    for shard in shards:
        device = json.loads(pq.read_metadata(shard).metadata[b"zeroverse.render_device"])
        assert device["index"] in (0, 1) and device["binding"] == f"CUDA_VISIBLE_DEVICES={device['index']}", device
        assert device["engine"] == "cycles" and device["device"] == "CPU", device
