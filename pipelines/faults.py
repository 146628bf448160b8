"""Fault injection: real faults inside real workers, switched on by the environment.

The fault matrix (tests/test_faults.py, bench/chaos.py) needs a worker to die, crash or hang at a
known point of a real run. Steps know nothing of it: the executor's worker side
(pipelines.executor.StepRunner) reads ZEROVERSE_FAULTS once when the worker starts and hands the
step a `before_shape` hook (`fault_hook(stage)`) that fires the faults meant for each shape;
without the variable the hook does nothing. The backends forward every ZEROVERSE_* variable to
their workers (ray_runtime.worker_env), so setting it where the driver runs is enough, on one
machine or a cluster.

    ZEROVERSE_FAULTS="render:kill@3"            # the worker rendering shape 3 kills itself, once
    ZEROVERSE_FAULTS="render:segv@3x*,generate:raise@1x2"
    ZEROVERSE_FAULTS_DIR=/some/shared/dir       # where firings are counted (required)

STAGE:ACTION@SHAPE[xTIMES], comma separated. STAGE is `generate` or `render`. ACTION:
- kill   SIGKILL to itself: `kill -9` of the worker process.
- segv   SIGSEGV to itself: what a Blender crash looks like from outside.
- hang   SIGSTOP to itself: frozen, as a hung Blender; only the supervisor's kill ends it.
- raise  a RuntimeError in this shape only (a shape that fails to build or render).
- hold   sleep until the file ZEROVERSE_FAULTS_DIR/release exists (at most an hour): keeps a run
         mid-way so a driver or a node can be killed at a known point.
- mark   nothing: only the marker is written (with the pid), to see which process did a shape.
TIMES is how often the fault fires over all processes and attempts (default 1, `*` always). Each
firing first creates ZEROVERSE_FAULTS_DIR/<stage>-<action>-<shape>-<k> with O_EXCL, so a count
holds across retries in fresh processes and across nodes when the directory is shared; the
marker holds the pid of the process that fired.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ENV, DIR_ENV = "ZEROVERSE_FAULTS", "ZEROVERSE_FAULTS_DIR"
STAGES = ("generate", "render")
ACTIONS = ("kill", "segv", "hang", "raise", "hold", "mark")


@dataclass(frozen=True)
class Fault:
    stage: str
    action: str
    shape_id: int
    times: int | None  # None: every time


def parse_faults(spec: str) -> list[Fault]:
    """ZEROVERSE_FAULTS -> faults; a malformed entry raises ValueError naming it and the grammar."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            where, rest = item.split(":", 1)
            action, at = rest.split("@", 1)
            shape, _, times = at.partition("x")
            fault = Fault(where, action, int(shape), None if times == "*" else int(times or 1))
        except ValueError as err:
            raise ValueError(f"{ENV} entry {item!r}: expected STAGE:ACTION@SHAPE[xTIMES], e.g. render:kill@3x1") from err
        if fault.stage not in STAGES or fault.action not in ACTIONS:
            raise ValueError(f"{ENV} entry {item!r}: stage one of {STAGES}, action one of {ACTIONS}")
        faults.append(fault)
    return faults


def fault_hook(stage: str) -> Callable[[int], None]:
    """The `before_shape` hook of a worker of `stage`: fires the faults of ZEROVERSE_FAULTS meant
    for that stage and shape (read now, once; in production there are none and it does nothing)."""
    faults = [f for f in parse_faults(os.environ.get(ENV, "")) if f.stage == stage]
    if not faults:
        return _nothing

    def before_shape(shape_id: int) -> None:
        for fault in faults:
            if fault.shape_id == shape_id and _claim(fault):
                _fire(fault)

    return before_shape


def _nothing(_: int) -> None:
    pass


def _claim(fault: Fault) -> bool:
    """True for one of the first `times` callers over all processes (marker files, O_EXCL)."""
    directory = os.environ.get(DIR_ENV)
    if not directory:
        raise ValueError(f"{ENV} is set but {DIR_ENV} is not: set it to a directory every worker can write")
    if fault.times is None:
        return True
    for k in range(fault.times):
        marker = Path(directory) / f"{fault.stage}-{fault.action}-{fault.shape_id}-{k}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())  # which process fired (the node-kill case looks it up)
        os.close(fd)
        return True
    return False


def _fire(fault: Fault) -> None:
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.action == "segv":
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # no Python handler: die as a C crash does
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault.action == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.action == "raise":
        raise RuntimeError(f"injected fault: {fault.stage} of shape {fault.shape_id} failed")
    elif fault.action == "hold":
        release = Path(os.environ[DIR_ENV]) / "release"
        deadline = time.monotonic() + 3600
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
