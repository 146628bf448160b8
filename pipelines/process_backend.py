"""The executor's process backend: each worker a process of this machine (one long-lived Blender),
for machines without Ray (e.g. a GPU node whose only Python with bpy is Blender's own). Same
steps, shard names, manifests and bytes as on Ray; the executor supervises both alike."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import signal
import sys
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

from pipelines.executor import StepRunner, WorkerDied
from pipelines.tasks import Task


def _worker_main(conn, stage: str, make_step: Callable, device: int | None) -> None:
    """One worker process: build the step, then run the tasks the driver sends until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops us
    try:
        runner = StepRunner(stage, make_step, device)
    except BaseException as err:  # noqa: BLE001 - reported to the driver, which starts another
        _send(conn, ("start_failed", err))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            break
        if task is None:
            break
        try:
            result = runner.run(task, lambda n: conn.send(("units", n)))
        except Exception as err:  # noqa: BLE001 - the step raised: the driver decides
            _send(conn, ("error", err))
            continue
        conn.send(("done", result))
    runner.close()


def _send(conn, message: tuple) -> None:
    """Sends an error, or its text where the error itself does not pickle."""
    try:
        conn.send(message)
    except Exception:  # noqa: BLE001
        err = message[1]
        conn.send((message[0], RuntimeError(f"{type(err).__name__}: {err}")))


@contextlib.contextmanager
def _without_blender_paths():
    """A spawned process starts with this one's sys.path. Where bpy was imported here, that holds
    Blender's script folders, whose `bpy` package (not the module) the worker would then import
    ('No module named _bpy'): they are left out while a worker starts."""
    if "bpy" not in sys.modules:
        yield
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if not ("scripts" in p and ("bpy" in p or "blender" in p))]
    try:
        yield
    finally:
        sys.path[:] = saved


def _exit_reason(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        with_name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"process {process.pid} was killed by {with_name}"
    return f"process {process.pid} exited with code {code}"


class ProcessBackend:
    def __init__(self, stage: str, make_step: Callable, workers: int | None = None, gpus: list[int] | None = None):
        self.stage, self.make_step = stage, make_step
        self.workers = workers or os.cpu_count() or 1
        self.gpus = gpus
        self.ctx = mp.get_context("spawn")
        self.procs: dict[int, tuple[Any, Any]] = {}  # worker -> (process, connection)
        self.tasks: dict[int, tuple] = {}  # worker -> key of the task it runs
        self.count, self.beats = 0, {}
        self.ranks = itertools.count()
        self.killed: list = []

    def capacity(self) -> int:
        return self.workers

    def spawn(self) -> int:
        """The k-th process started renders on gpus[k % len(gpus)] (a replacement takes the next
        k: still round-robin)."""
        from zeroverse.scene.gpu_devices import pool_worker_device

        rank = next(self.ranks)
        device = pool_worker_device(rank, self.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child, self.stage, self.make_step, device), daemon=True)
        with _without_blender_paths():
            process.start()
        child.close()
        self.procs[rank] = (process, parent)
        return rank

    def dispatch(self, worker: int, task: Task) -> None:
        self.procs[worker][1].send(task)
        self.tasks[worker] = task.key
        self.beats[task.key] = 1

    def poll(self, timeout: float) -> list[tuple]:
        waitables = {}
        for worker, (process, conn) in self.procs.items():
            waitables[conn] = worker
            waitables[process.sentinel] = worker
        events: list[tuple] = []
        for ready in wait_any(list(waitables), timeout):
            worker = waitables[ready]
            if worker not in self.procs:
                continue  # reported already (its connection and sentinel were both ready)
            process, conn = self.procs[worker]
            try:
                while conn.poll():
                    events += self._message(worker, conn.recv())
            except (EOFError, OSError):
                pass
            if not process.is_alive() and worker in self.procs:
                process.join()
                self._forget(worker)
                events.append(("died", worker, WorkerDied(_exit_reason(process))))
        return events

    def _message(self, worker: int, message: tuple) -> list[tuple]:
        kind = message[0]
        if kind == "units":
            self.count += message[1]
            key = self.tasks.get(worker)
            if key in self.beats:
                self.beats[key] += 1
            return []
        if kind in ("done", "error"):
            self.beats.pop(self.tasks.pop(worker, None), None)
        return [(kind, worker, *message[1:])]

    def _forget(self, worker: int) -> None:
        self.procs.pop(worker, None)
        self.beats.pop(self.tasks.pop(worker, None), None)

    def progress(self) -> tuple[int, dict]:
        return self.count, dict(self.beats)

    def kill(self, worker: int) -> None:
        entry = self.procs.get(worker)
        self._forget(worker)
        if entry is not None:
            process, conn = entry
            process.kill()
            conn.close()
            self.killed.append(process)

    def wait_killed(self, timeout: float) -> None:
        for process in self.killed:
            process.join(timeout)

    def release(self, idle: list[int], others: list[int], timeout: float) -> None:
        for worker in idle:
            if worker in self.procs:
                with contextlib.suppress(OSError):
                    self.procs[worker][1].send(None)  # the worker closes its step (scratch) and exits
        for worker in idle:
            if worker in self.procs:
                self.procs[worker][0].join(timeout)
        for worker in idle + others:
            self.kill(worker)
        self.wait_killed(timeout)

    def shortage(self) -> str:
        return "the worker processes keep failing to start; see the messages above"

    def handle(self, worker: int) -> Any:
        entry = self.procs.get(worker)
        return None if entry is None else entry[0]
