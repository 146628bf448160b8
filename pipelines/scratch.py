"""Render workers' scratch folders (Blender's EXR output, on tmpfs), named by their owner so that
folders of dead workers can be found and removed.

A render worker writes each view as an EXR into a scratch folder in /dev/shm (memory) and removes
it when it is closed; but the farm ends workers with `ray.kill` (a hung or crashed Blender, a
recycled worker, the end of a run) and the local pool terminates its processes, so nothing in the
worker runs to clean up, and the folder would hold memory until the machine reboots. Each worker
therefore names its folder `zv-render-<pid namespace>-<pid>-<process start time>-<random>` and,
when it starts, removes the folders of owners that no longer run (a pid reused by a new process
has another start time). The driver sweeps its own node at the end of a run too.

$ZEROVERSE_SCRATCH chooses the base folder (default: /dev/shm where writable, else the temp dir);
the driver forwards it to every worker like every ZEROVERSE_* variable.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

PREFIX = "zv-render-"
_OWNED = re.compile(re.escape(PREFIX) + r"([0-9]+)-([0-9]+)-([0-9]+)-")  # namespace, pid, start time


def scratch_base() -> str:
    """$ZEROVERSE_SCRATCH, else /dev/shm (tmpfs: the EXR round trip stays in memory) where it is
    writable, else the system's temp dir."""
    chosen = os.environ.get("ZEROVERSE_SCRATCH")
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _pid_namespace() -> int:
    """The inode of this process's pid namespace (0 without /proc): pids mean something only
    within one namespace, and containers sharing a /dev/shm may have different ones."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if no
    such process runs (or it is a zombie: it has exited and holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(namespace: int, pid: int, start: int) -> bool:
    if namespace != _pid_namespace():
        return True  # another container's worker: its pid means nothing here, keep it
    if namespace == 0:  # no /proc (not Linux): whether the pid runs is all there is to know
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    return _start_time(pid) == start


def sweep(base: str | None = None) -> list[str]:
    """Removes the scratch folders in `base` whose owner process no longer runs; returns them.
    Folders of running workers, of other pid namespaces and of older zeroverse versions (no owner
    in the name: `rm -rf /dev/shm/zv-render-*` by hand while no render runs) are kept."""
    base = base or scratch_base()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _OWNED.match(name)
        if match is None:
            continue
        namespace, pid, start = (int(x) for x in match.groups())
        if not _alive(namespace, pid, start):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed.append(name)
    return removed


def owned_scratch(base: str | None = None) -> str:
    """A new scratch folder owned by this process (after sweeping dead owners' folders)."""
    base = base or scratch_base()
    os.makedirs(base, exist_ok=True)
    sweep(base)
    pid = os.getpid()
    start = _start_time(pid) or 0
    return tempfile.mkdtemp(prefix=f"{PREFIX}{_pid_namespace()}-{pid}-{start}-", dir=base)
