"""The farm's one executor: queueing, heartbeats and timeouts, retries, commit, the failure ledger
and progress, whatever runs the workers.

A Job names the tasks (shards to make), the manifest they are committed to and how to build a
worker (`make_step(device)`: a Step, e.g. one Blender). A backend runs those workers:
`RayBackend` (pipelines.ray_backend: actors on a local Ray or a cluster) or `ProcessBackend`
(pipelines.process_backend: one process per worker on this machine, for Pythons without Ray).
The executor hands each started worker one task at a time and watches it: a task whose worker
dies, or that finishes no shape for `shape_timeout_s` (a hung Blender), is retried in a fresh
worker; after `max_attempts` its shapes go to the manifest's failure ledger with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from pipelines.tasks import StepResult, Task
from zeroverse.store.fs import Location, remove_temporaries
from zeroverse.store.manifest import Failure, Manifest


@dataclass
class Job:
    stage: str  # "generate" | "render": the progress bar's name and the fault plan's stage
    directory: Location  # the shard folder; its manifest is `manifest`
    manifest: Manifest
    tasks: list[Task]
    make_step: Callable[..., Any]  # make_step(device=...) -> Step; picklable: it runs in the worker process
    max_attempts: int
    shape_timeout_s: float
    startup_timeout_s: float = 900.0
    units_per_shape: int = 1  # progress units (shapes, or views of a rendered shape)
    unit: str = "shape"
    # A step that raised is retried in a fresh worker (render), or its shard is ledgered at once
    # (generate: shapes are already retried inside the step; what is left, e.g. a full disk,
    # fails again in the same place).
    retry_errors: bool = True
    label: str = ""  # what the ledger reasons start with: "" or e.g. "shard 2-3 "
    # Errors that are the input's fault, not the worker's: (task, error) -> (ledgered failures,
    # the task to queue instead or None); may raise to stop the run.
    input_error: tuple[type[BaseException], ...] = ()
    on_input_error: Callable[[Task, BaseException], tuple[list[Failure], Task | None]] | None = None
    cleanup: Callable[[], None] | None = None  # after the run, whatever happened (e.g. scratch sweep)

    def reason_prefix(self, task: Task) -> str:
        return self.label.format(first=task.first, last=task.last)


@dataclass
class Outcome:
    """What one executor run did."""

    written: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    retries: int = 0
    workers_started: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)  # per shard: render_timing.StageClock.record()
    steady_units_per_s: float | None = None  # once every worker finished a task (start-up left out)


class WorkerDied(Exception):
    """A worker process ended while it held a task (killed, crashed)."""


class Backend(Protocol):
    """Runs the job's workers. Events from `poll`: ("ready", w), ("start_failed", w, error),
    ("done", w, StepResult), ("error", w, error: the step raised), ("died", w, error)."""

    def capacity(self) -> int: ...
    def spawn(self) -> Any: ...
    def dispatch(self, worker: Any, task: Task) -> None: ...
    def poll(self, timeout: float) -> list[tuple]: ...
    def progress(self) -> tuple[int, dict] | None: ...
    def kill(self, worker: Any) -> None: ...
    def release(self, idle: list[Any], others: list[Any], timeout: float) -> None: ...
    def wait_killed(self, timeout: float) -> None: ...
    def shortage(self) -> str: ...
    def handle(self, worker: Any) -> Any: ...


class Heartbeats:
    """When each running task last showed a sign of life (a finished shape)."""

    def __init__(self) -> None:
        self.seen: dict = {}  # key -> (beats, driver time they changed)
        self.polled: float | None = None  # when the backend last answered

    def update(self, beats: dict, now: float) -> None:
        for key, n in beats.items():
            if self.seen.get(key, (None,))[0] != n:
                self.seen[key] = (n, now)
        self.polled = now

    def start(self, key, now: float) -> None:
        """Starts the clock of a task the driver knows has begun (dispatched to a ready worker)."""
        self.seen[key] = (0, now)

    def silent_for(self, key, now: float) -> float:
        """Seconds since the task's last beat, as of the backend's last answer (while it does not
        answer nothing is known, so nothing times out); 0 until the task has begun."""
        if key not in self.seen:
            return 0.0
        return max(0.0, (self.polled if self.polled is not None else now) - self.seen[key][1])

    def forget(self, key) -> None:
        self.seen.pop(key, None)


def throttled(report: Callable[[int], None], every_s: float = 0.25) -> Callable[[int], None]:
    """Batches progress reports so a fast worker sends a few messages per second, not thousands."""
    pending = 0
    last = time.monotonic()

    def add(n: int) -> None:
        nonlocal pending, last
        pending += n
        now = time.monotonic()
        if now - last >= every_s:
            report(pending)
            pending, last = 0, now

    def flush() -> None:
        nonlocal pending
        if pending:
            report(pending)
            pending = 0

    add.flush = flush  # type: ignore[attr-defined]
    return add


def first_line(err: BaseException) -> str:
    """A one-line reason; a RayTaskError's own text is a banner, its cause is the real error."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = f"{type(err).__name__}: {str(err).strip()}"
    return text.splitlines()[0] if text else type(err).__name__


def _progress_bar(total: int, unit: str, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # Blender's own Python may lack tqdm: then no bar
        enabled = False
        tqdm = None
    if not enabled or tqdm is None:
        return _NoBar(total)
    return tqdm(total=total, unit=unit, desc=desc, smoothing=0.1)


class _NoBar:
    def __init__(self, total: int) -> None:
        self.n, self.total = 0, total

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def execute(job: Job, backend: Backend, progress: bool = True, desc: str | None = None,
            on_dispatch: Callable[[Any, int], None] | None = None) -> Outcome:  # fmt: skip
    """Runs every task of `job` on `backend`'s workers and commits each finished shard to the
    manifest as it lands. `on_dispatch(handle, k)` is a test hook called right after the k-th
    dispatch (e.g. to kill that worker)."""
    out = Outcome()
    if not job.tasks:
        return out
    n_workers = max(1, min(backend.capacity(), len(job.tasks)))
    starting: set = set()
    idle: deque = deque()
    running: dict[Any, Task] = {}
    queue: deque[Task] = deque(job.tasks)
    beats = Heartbeats()
    total = sum(len(t.shape_ids) for t in job.tasks) * job.units_per_shape
    bar = _progress_bar(total, job.unit, desc or job.stage, progress)
    arrivals: list[tuple[float, int]] = []  # (time, rows) per committed shard
    dispatched, start_failures, no_worker_since = 0, 0, time.monotonic()

    def spawn() -> None:
        out.workers_started += 1
        starting.add(backend.spawn())

    def replace(worker) -> None:
        backend.kill(worker)
        spawn()

    def retry_or_ledger(task: Task, reason: str) -> None:
        if task.attempt < job.max_attempts:
            out.retries += 1
            queue.append(task.retry())
        else:
            ledger(task, f"{reason} (after {task.attempt} attempts)")

    def ledger(task: Task, reason: str) -> None:
        out.failures.extend(job.manifest.ledger(job.directory, task.shape_ids, job.reason_prefix(task) + reason))

    def commit(task: Task, result: StepResult) -> None:
        if result.stages is not None:
            out.stages.append(result.stages)  # timings vary run to run: the manifest must not
        job.manifest.commit(job.directory, result.record, task.shape_ids, result.failures)
        out.written.append(result.record.file)
        out.failures.extend(result.failures)
        arrivals.append((time.perf_counter(), result.record.rows))

    def finished(worker, task: Task, event: tuple) -> None:
        kind = event[0]
        if kind == "done":
            result: StepResult = event[2]
            if result.recycle:
                replace(worker)
            else:
                idle.append(worker)
            commit(task, result)
            return
        err = event[2]
        if kind == "died":
            replace(worker)
            retry_or_ledger(task, f"worker died: {first_line(err)}")
        elif isinstance(getattr(err, "cause", None) or err, job.input_error) and job.on_input_error is not None:
            idle.append(worker)  # the input, not the worker: no retry
            failures, kept = job.on_input_error(task, getattr(err, "cause", None) or err)
            out.failures.extend(failures)
            if kept is not None:
                queue.append(kept)
        elif job.retry_errors:
            replace(worker)
            retry_or_ledger(task, first_line(err))
        else:
            idle.append(worker)
            ledger(task, f"failed: {first_line(err)}")

    for _ in range(n_workers):
        spawn()
    try:
        while queue or running:
            while queue and idle:
                worker, task = idle.popleft(), queue.popleft()
                backend.dispatch(worker, task)
                running[worker] = task
                beats.start(task.key, time.monotonic())
                if on_dispatch is not None:
                    on_dispatch(backend.handle(worker), dispatched)
                dispatched += 1
            events = backend.poll(0.5)
            state = backend.progress()
            if state is not None:
                count, live = state
                bar.n = min(total, count)
                bar.refresh()
                beats.update(live, time.monotonic())
            now = time.monotonic()
            for event in events:
                kind, worker = event[0], event[1]
                if kind == "ready":
                    starting.discard(worker)
                    start_failures = 0
                    idle.append(worker)
                elif kind == "start_failed" or (worker in starting and kind == "died"):
                    starting.discard(worker)
                    start_failures += 1
                    if start_failures > 2 * n_workers + 2:
                        raise ValueError(f"{job.stage} workers keep failing to start: {first_line(event[2])}") from event[2]
                    replace(worker)
                elif worker in running:
                    task = running.pop(worker)
                    beats.forget(task.key)
                    finished(worker, task, event)
                elif kind == "died" and worker in idle:  # ended between tasks
                    idle.remove(worker)
                    replace(worker)
            if idle or running:
                no_worker_since = now
            elif now - no_worker_since > job.startup_timeout_s:
                raise ValueError(f"no {job.stage} worker started in {job.startup_timeout_s:g} s: {backend.shortage()}")
            for worker, task in list(running.items()):
                if beats.silent_for(task.key, now) > job.shape_timeout_s:
                    del running[worker]
                    beats.forget(task.key)
                    replace(worker)  # a hung Blender cannot be interrupted from inside
                    retry_or_ledger(task, f"timed out: no shape finished in {job.shape_timeout_s:g} s")
        bar.n = bar.total
        bar.refresh()
    except BaseException:  # Ctrl-C, a refused input, a manifest that cannot be saved: stop the workers
        for worker in list(running):
            with contextlib.suppress(Exception):
                backend.kill(worker)
        with contextlib.suppress(Exception):  # then sweep what they were writing (best effort; reruns sweep too)
            backend.wait_killed(5)
            remove_temporaries(job.directory)
        raise
    finally:
        bar.close()
        with contextlib.suppress(Exception):  # idle workers clean up (scratch) before they go
            backend.release(list(idle), list(starting) + list(running), 10)
        if job.cleanup is not None:
            job.cleanup()
    if len(arrivals) > n_workers:
        # Throughput once every worker has finished a shard: Blender's start-up and EEVEE's
        # shader compile (16-20 s per process on an H200) left out, as a long run amortises them.
        t0 = arrivals[n_workers - 1][0]
        out.steady_units_per_s = sum(v for _, v in arrivals[n_workers:]) / max(1e-9, arrivals[-1][0] - t0)
    return out


def make_backend(kind: str, stage: str, make_step: Callable, workers: int | None = None, address: str | None = None,
                 cpus_per_worker: int = 1, gpus_per_worker: float = 0.0, gpus: list[int] | None = None) -> Backend:  # fmt: skip
    """'ray': `workers` actors (default: the cluster's CPUs / `cpus_per_worker`) on a local Ray or
    the cluster at `address`, `gpus_per_worker` each; 'processes': `workers` processes here
    (default: one per core), spread round-robin over the devices `gpus`."""
    if kind == "ray":
        from pipelines.ray_backend import RayBackend

        return RayBackend(stage, make_step, address, workers, cpus_per_worker, gpus_per_worker)
    if kind == "processes":
        from pipelines.process_backend import ProcessBackend

        return ProcessBackend(stage, make_step, workers, gpus)
    raise ValueError(f"--backend {kind!r}: choose ray or processes")


def task_ids(tasks: Iterable[Task]) -> list[int]:
    return [sid for t in tasks for sid in t.shape_ids]


class StepRunner:
    """The worker side of every backend: the job's step (built here, in the worker process, on
    `device`) and the fault plan's `before_shape` hook, read once from the environment."""

    def __init__(self, stage: str, make_step: Callable[[int | None], Any], device: int | None):
        from pipelines.faults import fault_hook

        self.before_shape = fault_hook(stage)
        self.step = make_step(device=device)

    def run(self, task: Task, report: Callable[[int], None]) -> StepResult:
        add = throttled(report)
        try:
            return self.step.run(task, on_units=add, before_shape=self.before_shape)
        finally:
            add.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.step.close()
