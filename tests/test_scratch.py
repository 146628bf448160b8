"""Render scratch folders (EXR round trips on /dev/shm) of killed workers are found and removed.

Workers are ended with ray.kill, so their own cleanup never runs: each names its folder after
itself (pid namespace, pid, start time) and the next worker to start removes the folders whose
owner no longer runs. Here the owners are real processes, SIGKILLed as ray.kill does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipelines.scratch import PREFIX, owned_scratch, sweep

REPO = Path(__file__).resolve().parents[1]


def _killed_owner(base: Path) -> Path:
    """The scratch folder of a worker killed with SIGKILL while it ran (its EXR left inside)."""
    code = ("import sys, os, time; from pipelines.scratch import owned_scratch; d = owned_scratch(sys.argv[1]); "
            "open(os.path.join(d, 'view.exr'), 'wb').write(b'x' * 4096); print(d, flush=True); time.sleep(60)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(base)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    folder = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return folder


def test_a_new_worker_removes_the_scratch_of_killed_ones_and_keeps_live_ones(tmp_path):
    base = tmp_path / "shm"
    first = _killed_owner(base)
    assert first.is_dir() and first.name.startswith(PREFIX) and (first / "view.exr").exists()
    second = _killed_owner(base)  # its start swept the first
    assert not first.exists() and (second / "view.exr").exists()
    mine = Path(owned_scratch(str(base)))  # what a worker does when it starts
    assert not second.exists()
    assert mine.is_dir() and f"-{os.getpid()}-" in mine.name
    assert sweep(str(base)) == [] and mine.is_dir()  # a running owner's folder is never touched


def test_only_provably_dead_owners_are_swept(tmp_path):
    base = tmp_path / "shm"
    base.mkdir()
    ns = os.stat("/proc/self/ns/pid").st_ino
    start = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    reused = base / f"{PREFIX}{ns}-{os.getpid()}-{start - 1}-abc"  # our pid, another start time: a reused pid
    other_ns = base / f"{PREFIX}{ns + 1}-1-1-abc"  # another container's worker: cannot tell, kept
    legacy = base / f"{PREFIX}k3x_9qzt"  # an older zeroverse's folder: no owner recorded, kept
    unrelated = base / "zv-bench-render-1-2-3-x"
    for folder in (reused, other_ns, legacy, unrelated):
        folder.mkdir()
    assert sweep(str(base)) == [reused.name]
    assert sorted(p.name for p in base.iterdir()) == sorted([other_ns.name, legacy.name, unrelated.name])


def test_the_base_follows_zeroverse_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROVERSE_SCRATCH", str(tmp_path / "mine"))
    assert Path(owned_scratch()).parent == tmp_path / "mine"
