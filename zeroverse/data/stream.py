"""`ViewStream`: view shards as a resumable, rank- and worker-sharded PyTorch IterableDataset.

Order. Each epoch has one global order G of all usable shapes, a pure function of (seed,
epoch, manifest): the shards are shuffled, the row groups (shapes) inside each shard are
shuffled, and the concatenation goes through a shuffle buffer of `shuffle_buffer` shapes (the
buffer holds shape ids, not decoded data, so it costs no memory; as with any shuffle buffer a
shape leaves it at most a few buffer lengths from where its shard put it, which keeps the open
files few). Every rank and worker computes the same G, so nothing is communicated.

Split. Rank r of R takes G[base:][r::R] (its "rank stream"; ranks differ by at most one item,
and each shape is read exactly once per epoch across all ranks and workers). Inside a rank,
DataLoader worker w of N takes the blocks k = w, w + N, w + 2N, ... of `batch_size` consecutive
items of the rank stream. A DataLoader hands batches out round-robin over its workers (and
restarts at worker 0 on every new iterator), so batch k the consumer receives is block k:
whatever the number of workers, the consumer has seen exactly a prefix of the rank stream.
This needs `batch_size` equal to the DataLoader's batch_size when num_workers > 0 (`track`
checks it).

State. `track(loader)` counts the items the consumer receives. `state_dict()` holds:
    epoch        the epoch being consumed
    position     shapes of G consumed by all ranks together: base + consumed * world_size, exact
                 because DDP ranks step in lockstep (every rank holds the same value; save any)
    consumed     items this rank's consumer received since the split began at `base`; per
                 (rank r, worker w) it means worker w's share of those blocks, i.e. the items of
                 blocks k < ceil(consumed / batch_size) with k % num_workers == w
    world_size, rank, batch_size   informational (resuming with other values is allowed: the
                 remainder G[position:] is re-split over the new ranks and workers)
    seed, num_shapes, shuffle_buffer   must match on load, or G would differ
`load_state_dict` restarts the split at `position`; the next iteration continues without
repeats or gaps. When a tracked iteration runs to its end the stream moves to the next epoch by
itself (`set_epoch` with the epoch it already has changes nothing, so loops that call it still
work).

Example:
    >>> stream = ViewStream("runs/zv", resolution=256, batch_size=8, seed=0)
    >>> loader = DataLoader(stream, batch_size=8, num_workers=8, collate_fn=collate,
    ...                     persistent_workers=True, pin_memory=True)
    >>> for epoch in range(start_epoch, epochs):
    ...     stream.set_epoch(epoch)
    ...     for batch in stream.track(loader):
    ...         step(batch)
    ...         if time_to_save: save({"model": ..., "data": stream.state_dict()})
    >>> stream.load_state_dict(saved["data"])   # on restart, before iterating again
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import ViewConfig
from .dataset import ShardReadError, ViewSource

STATE_VERSION = 1


def _count(batch: Any) -> int:
    """Items in what a loader yielded: an item dict (shape_id []), a batch dict (shape_id [B]),
    or a list of items."""
    if isinstance(batch, dict) and "shape_id" in batch:
        sid = batch["shape_id"]
        return 1 if getattr(sid, "ndim", 0) == 0 else len(sid)
    if isinstance(batch, (list, tuple)):
        return len(batch)
    raise ValueError(f"track() cannot count items in a {type(batch).__name__}; collate with zeroverse.data.collate")


def buffer_shuffle(sequence: Sequence[int], buffer: int, rng: np.random.Generator) -> list[int]:
    """Classic streaming shuffle buffer, run on ids: fill `buffer` slots, then each incoming id
    replaces a uniformly chosen slot, which is emitted; the rest is emitted shuffled."""
    buffer = max(1, int(buffer))
    slots = list(sequence[:buffer])
    picks = rng.integers(0, len(slots), size=max(0, len(sequence) - buffer)) if slots else []
    out = []
    for incoming, j in zip(sequence[buffer:], picks):
        out.append(slots[j])
        slots[j] = incoming
    rng.shuffle(slots)
    return out + slots


class ViewStream(ViewSource, IterableDataset):
    """Iterable view dataset for large-scale training (see the module docstring). Items are the
    same dicts as ViewDataset's; arguments before `shuffle_buffer` mean the same."""

    def __init__(
        self,
        root: str | os.PathLike,
        num_input_views: int = 4,
        num_target_views: int = 4,
        resolution: int | tuple[int, int] | None = None,
        channels: Sequence[str] = ("rgb", "alpha", "depth"),
        background: str | float | Sequence[float] = "white",
        view_sampling: str = "random",
        seed: int = 0,
        skip_bad: bool = False,
        shuffle_buffer: int = 64,
        batch_size: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        config = ViewConfig.make(num_input_views, num_target_views, resolution, channels, background, view_sampling, seed, skip_bad)
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, (int, np.integer)) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer!r}: use a non-negative integer (0 or 1: no buffer)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: use the DataLoader's batch size (a positive integer)")
        if (rank is None) != (world_size is None):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r}: pass both or neither (neither: torch.distributed decides)")
        if world_size is not None and not (isinstance(world_size, (int, np.integer)) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r}: need world_size >= 1 and 0 <= rank < world_size")
        super().__init__(root, config)
        self.shuffle_buffer = int(shuffle_buffer)
        self.batch_size = int(batch_size)
        self._explicit = None if rank is None else (int(rank), int(world_size))
        # [epoch, base, rank, world_size] in shared memory: DataLoader workers (persistent ones
        # included) hold copies of this object, and read these when an iteration starts.
        self._shared = torch.zeros(4, dtype=torch.int64).share_memory_()
        self._consumed = 0  # main process only: items the consumer received since `base`
        self._order: tuple[int, np.ndarray] | None = None  # per-process cache (epoch, G)
        self._refresh_rank()

    # --- order -------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """G for `epoch`: indices into self.entries, identical on every rank and worker."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        rng = np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(epoch,)))
        by_shard: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            by_shard.setdefault(entry.path, []).append(i)
        shards = list(by_shard.values())
        sequence: list[int] = []
        for k in rng.permutation(len(shards)):
            sequence.extend(shards[k][j] for j in rng.permutation(len(shards[k])))
        order = np.asarray(buffer_shuffle(sequence, self.shuffle_buffer, rng), dtype=np.int64)
        self._order = (epoch, order)
        return order

    def _rank_world(self) -> tuple[int, int]:
        if self._explicit is not None:
            return self._explicit
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _refresh_rank(self) -> None:
        """Main process only: workers cannot ask torch.distributed (a spawned worker has no
        process group), so the rank travels to them through the shared tensor."""
        rank, world = self._rank_world()
        self._shared[2], self._shared[3] = rank, world

    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    @property
    def rank(self) -> int:
        return int(self._shared[2])

    @property
    def world_size(self) -> int:
        return int(self._shared[3])

    @property
    def position(self) -> int:
        return min(len(self.entries), int(self._shared[1]) + self._consumed * self.world_size)

    def rank_stream(self, epoch: int, base: int, rank: int, world_size: int) -> np.ndarray:
        return self.epoch_order(epoch)[base:][rank::world_size]

    # --- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        info = get_worker_info()
        if info is None:
            self._refresh_rank()
        epoch, base, rank, world = (int(v) for v in self._shared.tolist())
        stream = self.rank_stream(epoch, base, rank, world)
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        b = self.batch_size
        for k in range(worker, math.ceil(len(stream) / b), workers):
            for index in stream[k * b : (k + 1) * b]:
                entry = self.entries[int(index)]
                try:
                    yield self.reader.read(entry, epoch)
                except ShardReadError as err:
                    if not self.config.skip_bad:
                        raise
                    # Found only now (the footer was fine): skipping shifts this worker's
                    # batches by one item, so a resume around this point may repeat one shape.
                    warnings.warn(f"ViewStream: skipped shape {entry.shape_id}: {err}", stacklevel=2)

    def __len__(self) -> int:
        """Items this rank yields in the current iteration (from where the split began)."""
        return len(range(int(self._shared[1]) + self.rank, len(self.entries), self.world_size))

    def track(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yields from `batches` (a DataLoader over this stream, or the stream itself) and counts
        the items the consumer receives, which is what state_dict() records. When `batches`
        runs to its end, the stream moves on to the next epoch."""
        if isinstance(batches, DataLoader):
            if batches.dataset is not self:
                raise ValueError("track() was given a DataLoader over another dataset; wrap the loader of this stream")
            if batches.num_workers > 0 and not getattr(batches, "in_order", True):
                raise ValueError("track() needs DataLoader(in_order=True) (the default): out-of-order batches break resuming")
            loader_batch = batches.batch_size or 1
            if batches.num_workers > 0 and loader_batch != self.batch_size:
                raise ValueError(
                    f"the DataLoader has batch_size={loader_batch} and num_workers={batches.num_workers}, but this ViewStream "
                    f"was made with batch_size={self.batch_size}; pass ViewStream(..., batch_size={loader_batch}) so that "
                    "resuming from state_dict() neither repeats nor skips shapes"
                )
        self._refresh_rank()
        self._shared[1] = self.position  # the split restarts where the consumer is
        self._consumed = 0
        for batch in batches:
            self._consumed += _count(batch)
            yield batch
        self._next_epoch(self.epoch + 1)

    def _next_epoch(self, epoch: int) -> None:
        self._shared[0] = epoch
        self._shared[1] = 0
        self._consumed = 0

    def set_epoch(self, epoch: int) -> None:
        """Starts `epoch` from its beginning; no-op if the stream is already in `epoch` (after a
        load_state_dict or an automatic advance), so calling it at the top of each epoch is safe."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: use a non-negative integer")
        if int(epoch) != self.epoch:
            self._next_epoch(int(epoch))

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """See the module docstring for what each field means."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "consumed": self._consumed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seed": self.config.seed,
            "num_shapes": len(self.entries),
            "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state` (any rank's; ranks and workers may differ from the saved run)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}; this ViewStream reads {STATE_VERSION}")
        for key, mine in (("seed", self.config.seed), ("num_shapes", len(self.entries)), ("shuffle_buffer", self.shuffle_buffer)):
            if state.get(key) != mine:
                raise ValueError(
                    f"state has {key}={state.get(key)!r} but this ViewStream has {mine!r}; the shape order would differ, so "
                    "resuming would repeat and skip shapes. Build the stream with the saved run's arguments and root."
                )
        position = int(state["position"])
        if not 0 <= position <= len(self.entries):
            raise ValueError(f"state position {position} is outside 0..{len(self.entries)}")
        self._shared[0] = int(state["epoch"])
        self._shared[1] = position
        self._consumed = 0
        self._refresh_rank()

    def __repr__(self) -> str:
        c = self.config
        return (f"ViewStream({str(self.views_dir)!r}, shapes={len(self.entries)}, views={c.num_input_views}+{c.num_target_views}, "
                f"epoch={self.epoch}, position={self.position}, rank={self.rank}/{self.world_size})")
