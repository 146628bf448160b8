"""Which physical GPU a render worker draws on, from what its executor gave it (pure Python: the
Ray farm, the local process pool and Blender's own Python import it; no bpy, ray or torch).

"Physical index" here is the device's index as CUDA numbers the node's GPUs with no
CUDA_VISIBLE_DEVICES set (nvidia-smi's order by default). What binds a Blender process to that
device is blender_scripts/gpu_binding.py; this module only decides which one it is.

- Ray: `ray.get_gpu_ids()` in an actor holds the node's own names of the GPUs it was given
  (indices, or whatever the raylet's CUDA_VISIBLE_DEVICES listed); fractional `--gpus-per-worker`
  gives several actors the same id, so 0.125 packs eight workers per device.
- The local pool: `--gpus 0,1` lists devices as CUDA numbers them in the parent process, i.e.
  positions in its CUDA_VISIBLE_DEVICES when that is set; workers take them round-robin.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


# EEVEE workers per GPU when `--gpus-per-worker` is not given. One H200, 512², 16 spp, end to end
# (bench/render.py, bench/results/render_gpu.json "processes_per_gpu_sweep"): 4 workers 28.8
# views/s, 6 34.0, 8 35.0, 12 34.4. The GPU is full from about 6; more only add CPU and memory.
EEVEE_WORKERS_PER_GPU = 8


class GpuAssignmentError(ValueError):
    """A GPU assignment that cannot be turned into one physical device index."""


def parse_visible_devices(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES -> its entries; None when unset (every device visible), [] when it
    hides every device ("" or starting with -1, as CUDA reads it)."""
    if value is None:
        return None
    entries = [e.strip() for e in value.split(",")]
    out = []
    for e in entries:
        if e == "" or e.startswith("-1"):
            break  # CUDA stops at the first invalid entry
        out.append(e)
    return out


def physical_index(name: str | int, uuids: Mapping[str, int] | None = None) -> int:
    """One GPU name (an index, as int or str, or a GPU UUID) -> its physical index. A UUID needs
    `uuids` (physical index by UUID, e.g. from `nvidia-smi --query-gpu=index,uuid --format=csv`)."""
    if isinstance(name, bool):
        raise GpuAssignmentError(f"GPU id {name!r} is not an index")
    if isinstance(name, int):
        if name < 0:
            raise GpuAssignmentError(f"GPU index {name} is negative")
        return name
    text = str(name).strip()
    if text.isdigit():
        return int(text)
    if text.startswith("MIG-"):
        raise GpuAssignmentError(
            f"GPU {text} is a MIG slice: MIG instances have no graphics engine, so EEVEE cannot render on them; "
            "give the render workers whole GPUs (or render with --engine cycles)"
        )
    if uuids is not None:
        for key in (text, text[4:] if text.startswith("GPU-") else f"GPU-{text}"):
            if key in uuids:
                return int(uuids[key])
    raise GpuAssignmentError(
        f"GPU {text!r} is named by UUID, and which physical index it has is unknown here. Set CUDA_VISIBLE_DEVICES "
        "to indices (e.g. 0,1) before starting Ray or the pool, or pass the index-by-UUID table "
        "(nvidia-smi --query-gpu=index,uuid --format=csv)"
    )


def ray_worker_device(gpu_ids: Sequence[str | int] | None, uuids: Mapping[str, int] | None = None) -> int | None:
    """The physical device of a Ray actor given `gpu_ids` (its `ray.get_gpu_ids()`); None when
    it was given no GPU. Ray names GPUs as the raylet saw them, so the ids are physical already
    (the actor's own CUDA_VISIBLE_DEVICES is just these ids again and must not be applied on
    top). An actor given several GPUs renders on the first: Blender draws on one device."""
    if not gpu_ids:
        return None
    return physical_index(gpu_ids[0], uuids)


def pool_worker_device(rank: int, gpus: Sequence[int] | None, visible: str | None = None, uuids: Mapping[str, int] | None = None) -> int | None:
    """The physical device of local-pool worker `rank` (0, 1, ... in start order) spread
    round-robin over `gpus` (indices as CUDA numbers them in the parent, i.e. positions in
    `visible`, its CUDA_VISIBLE_DEVICES, when that is set); None without GPUs."""
    if not gpus:
        return None
    if rank < 0:
        raise GpuAssignmentError(f"worker rank {rank} is negative")
    index = int(gpus[rank % len(gpus)])
    if index < 0:
        raise GpuAssignmentError(f"--gpus entry {index} is negative")
    entries = parse_visible_devices(visible)
    if entries is None:
        return index
    if index >= len(entries):
        raise GpuAssignmentError(
            f"--gpus lists device {index} but CUDA_VISIBLE_DEVICES={visible!r} shows {len(entries)} device(s) "
            f"(numbered 0..{len(entries) - 1}); list devices as CUDA numbers them in this process"
        )
    return physical_index(entries[index], uuids)


def parse_gpu_list(text: str | None) -> list[int] | None:
    """'0,1' (a --gpus option) -> [0, 1]; None or '' -> None (no GPU placement)."""
    if text is None or not text.strip():
        return None
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError as err:
        raise GpuAssignmentError(f"--gpus {text!r}: give device indices separated by commas, e.g. 0,1") from err
    if any(x < 0 for x in out):
        raise GpuAssignmentError(f"--gpus {text!r}: device indices are >= 0")
    if len(set(out)) != len(out):
        raise GpuAssignmentError(f"--gpus {text!r} lists a device twice")
    return out


def eevee_pool_workers(gpu_count: int, cpus: int, threads: int = 1) -> int:
    """Default number of EEVEE workers in a local process pool: EEVEE_WORKERS_PER_GPU on each of
    `gpu_count` devices (at least one: without --gpus they all draw on the default GPU), as many
    as the CPUs hold at `threads` each."""
    return max(1, min(cpus // max(1, threads), EEVEE_WORKERS_PER_GPU * max(1, gpu_count)))


def workers_per_gpu(gpus_per_worker: float) -> int:
    """How many workers Ray packs onto one device with this fraction (0.25 -> 4, 0.3 -> 3,
    1 -> 1). Ray counts GPU fractions in 1/10000 units, so 1/3 packs three."""
    if not 0 < gpus_per_worker <= 1:
        raise GpuAssignmentError(f"--gpus-per-worker {gpus_per_worker}: use a fraction of one GPU in (0, 1] (0.25: four workers per GPU)")
    units = round(gpus_per_worker * 10000)
    return max(1, math.floor(10000 / units))
