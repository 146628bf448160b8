"""The executor's Ray backend: each worker a Ray actor (one long-lived Blender), on a local Ray
or the cluster at --address; progress and heartbeats through one ProgressCounter actor."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import Any, Callable

import ray

from pipelines.executor import StepRunner
from pipelines import ray_runtime
from pipelines.ray_runtime import new_progress_counter, worker_options
from pipelines.tasks import StepResult, Task


class FarmWorker:
    """A Ray actor around the job's step: the step (Blender) starts once in __init__, work per call."""

    def __init__(self, stage: str, make_step: Callable, counter: Any):
        from zeroverse.scene.gpu_devices import ray_worker_device

        # Ray names the GPUs it gave this actor as the node does (several actors share one with a
        # fractional --gpus-per-worker); none with --gpus-per-worker 0.
        self.runner = StepRunner(stage, make_step, ray_worker_device(ray.get_gpu_ids()))
        self.counter = counter

    def run(self, task: Task) -> StepResult:
        self.counter.begin.remote(task.key)
        try:
            return self.runner.run(task, lambda n: self.counter.add.remote(n, task.key))
        finally:
            self.counter.end.remote(task.key)

    def ready(self) -> bool:
        """Answers once __init__ (Blender, the texture bank) is done."""
        return True

    def close(self) -> None:
        """Lets the step clean up (scratch); the driver calls it before ray.kill of an idle worker."""
        self.runner.close()

    def pid(self) -> int:
        return os.getpid()


class RayBackend:
    def __init__(self, stage: str, make_step: Callable, address: str | None = None, workers: int | None = None,
                 cpus_per_worker: int = 1, gpus_per_worker: float = 0.0):  # fmt: skip
        # A local Ray needs `cpus_per_worker` CPUs per worker: with only `workers` CPUs, workers
        # beyond workers // cpus_per_worker would wait for CPUs that never free up.
        ray_runtime.init_ray(address, workers * max(1, cpus_per_worker) if workers else None)
        self.stage, self.make_step, self.workers = stage, make_step, workers
        self.cpus, self.gpus = max(1, cpus_per_worker), gpus_per_worker
        self.counter = new_progress_counter()
        self.actor_cls = ray.remote(FarmWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0, max_concurrency=1, **worker_options()
        )
        self.actors: dict[int, Any] = {}
        self.refs: dict[Any, tuple[str, int]] = {}  # ref -> ("ready" | "run", worker)
        self.killed_refs: list = []
        self.ids = itertools.count()

    def capacity(self) -> int:
        return max(1, self.workers or int(ray.cluster_resources().get("CPU", 1)) // self.cpus)

    def spawn(self) -> int:
        worker = next(self.ids)
        actor = self.actor_cls.remote(self.stage, self.make_step, self.counter)
        self.actors[worker] = actor
        self.refs[actor.ready.remote()] = ("ready", worker)
        return worker

    def dispatch(self, worker: int, task: Task) -> None:
        self.refs[self.actors[worker].run.remote(task)] = ("run", worker)

    def poll(self, timeout: float) -> list[tuple]:
        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        events = []
        for ref in ready:
            kind, worker = self.refs.pop(ref)
            if worker not in self.actors:
                continue  # killed by the driver: nothing to report
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                events.append(("start_failed" if kind == "ready" else "died", worker, err))
            except Exception as err:  # noqa: BLE001 - the step (or Blender's start) raised
                events.append(("start_failed" if kind == "ready" else "error", worker, err))
            else:
                events.append(("ready", worker) if kind == "ready" else ("done", worker, value))
        return events

    def progress(self) -> tuple[int, dict] | None:
        """The counter's count and beats; None if it does not answer in 5 s (nothing is known)."""
        with contextlib.suppress(Exception):
            return ray.get(self.counter.state.remote(), timeout=5)
        return None

    def kill(self, worker: int) -> None:
        actor = self.actors.pop(worker, None)
        self.killed_refs += [ref for ref, (_, w) in self.refs.items() if w == worker]
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    def wait_killed(self, timeout: float) -> None:
        if self.killed_refs:
            ray.wait(self.killed_refs, num_returns=len(self.killed_refs), timeout=timeout)

    def release(self, idle: list[int], others: list[int], timeout: float) -> None:
        with contextlib.suppress(Exception):  # idle workers remove their scratch before they are killed
            closing = [self.actors[w].close.remote() for w in idle if w in self.actors]
            if closing:
                ray.wait(closing, num_returns=len(closing), timeout=timeout)
        for worker in idle + others:
            self.kill(worker)

    def shortage(self) -> str:
        resources = ray.cluster_resources()
        return (
            f"each needs {self.cpus} CPU(s) and {self.gpus:g} GPU(s), the cluster has {resources.get('CPU', 0):g} CPU(s) and "
            f"{resources.get('GPU', 0):g} GPU(s). Lower --threads / --gpus-per-worker or add nodes"
        )

    def handle(self, worker: int) -> Any:
        return self.actors.get(worker)
