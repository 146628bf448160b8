"""What the farm's executor and its steps exchange: a task (a shard to make) and a step's result.

Steps (make a shape shard, render a view shard, render real objects) take a Task and return a
StepResult; they know nothing of the executor (pipelines.executor) that queues, supervises,
retries and commits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from zeroverse.store.manifest import Failure, ShardRecord


@dataclass(frozen=True)
class Task:
    """Make the shard of shapes `shape_ids` (all within [first, last]); `attempt` counts from 1."""

    first: int
    last: int
    shape_ids: tuple[int, ...]
    attempt: int = 1

    @property
    def key(self) -> tuple[int, int]:
        """Names one attempt at one shard (heartbeats, progress)."""
        return (self.first, self.attempt)

    def retry(self) -> "Task":
        return Task(self.first, self.last, self.shape_ids, self.attempt + 1)


@dataclass(frozen=True)
class StepResult:
    """A shard a step wrote: its manifest record, the shapes it was given but could not make
    (`failures`), the per-stage timings of the shard (render_timing.StageClock.record(); never
    in the manifest) and whether the worker asks to be replaced (`recycle`: memory, shape count)."""

    record: ShardRecord
    failures: tuple[Failure, ...] = ()
    stages: dict[str, Any] | None = None
    recycle: bool = False


def no_op(_: int) -> None:
    """The hook a step gets when nobody listens."""


class Step(Protocol):
    """One worker's step: built once in the worker process (Blender starts there), then run per task.
    `on_units(n)` reports progress (shapes or views done); `before_shape(shape_id)` is called
    before each attempt at a shape (the fault matrix injects its faults there)."""

    def run(self, task: Task, on_units: Callable[[int], None] = no_op, before_shape: Callable[[int], None] = no_op) -> StepResult: ...

    def close(self) -> None: ...
