"""ViewStream: seeded order, rank x worker split through real DataLoaders, resume without repeats or gaps."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from synthetic_views import write_view_shards
from zeroverse.data import ViewDataset, ViewStream, collate

NUM_SHAPES = 11  # odd, so ranks and workers get uneven shares
KW = dict(num_input_views=1, num_target_views=1, channels=("alpha",), shuffle_buffer=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    write_view_shards(root, num_shapes=NUM_SHAPES, views_per_shape=3, resolution=8, shard_size=3)
    return root


def ids_of(batches) -> list[int]:
    return [int(i) for b in batches for i in b["shape_id"].reshape(-1)]


def loader(stream, batch_size, workers, **kw):
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate, **kw)


def test_order_is_seeded_and_a_permutation(root):
    a, b = ViewStream(root, seed=0, **KW), ViewStream(root, seed=0, **KW)
    assert a.epoch_order(0).tolist() == b.epoch_order(0).tolist()
    orders = [sorted(a.epoch_order(e).tolist()) for e in range(3)]
    assert all(o == list(range(NUM_SHAPES)) for o in orders)
    assert a.epoch_order(0).tolist() != a.epoch_order(1).tolist()
    assert a.epoch_order(0).tolist() != ViewStream(root, seed=1, **KW).epoch_order(0).tolist()
    direct = [int(item["shape_id"]) for item in a]
    assert direct == [a.entries[i].shape_id for i in a.epoch_order(0)]


def test_items_equal_map_style_items(root):
    stream = ViewStream(root, num_input_views=2, num_target_views=1, channels=("rgb", "depth"))
    ds = ViewDataset(root, num_input_views=2, num_target_views=1, channels=("rgb", "depth"))
    for item in itertools.islice(stream, 3):
        ref = ds[ds.shape_ids.index(int(item["shape_id"]))]
        assert all(torch.equal(item[k], ref[k]) for k in ref)


def test_ranks_times_workers_cover_every_shape_once(root):
    seen, per_rank = [], []
    for rank in range(2):
        stream = ViewStream(root, batch_size=2, rank=rank, world_size=2, **KW)
        got = ids_of(loader(stream, 2, 2))
        # the consumer receives its rank stream in order, whatever the number of workers
        assert got == [stream.entries[i].shape_id for i in stream.rank_stream(0, 0, rank, 2)]
        assert len(stream) == len(got)
        per_rank.append(len(got))
        seen += got
    assert sorted(seen) == list(range(NUM_SHAPES))
    assert sorted(per_rank) == [5, 6]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("resume_workers,resume_batch", [(2, 2), (0, 3), (3, 1)])
def test_resume_continues_without_repeats_or_gaps(root, resume_workers, resume_batch):
    reference = ids_of(loader(ViewStream(root, batch_size=2, **KW), 2, 2))
    stream = ViewStream(root, batch_size=2, **KW)
    first = []
    for batch in stream.track(loader(stream, 2, 2)):
        first += ids_of([batch])
        if len(first) == 6:
            break
    state = stream.state_dict()
    assert state["epoch"] == 0 and state["position"] == 6 and state["consumed"] == 6
    resumed = ViewStream(root, batch_size=resume_batch, **KW)
    resumed.load_state_dict(state)
    rest = ids_of(resumed.track(loader(resumed, resume_batch, resume_workers)))
    assert first + rest == reference
    # a tracked iteration that runs to its end moves the stream to the next epoch's start
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["position"] == 0
    resumed.set_epoch(1)  # calling it again, as training loops do, changes nothing
    assert resumed.state_dict()["position"] == 0


def test_resume_onto_more_ranks(root):
    """A state saved by one rank resumes on two: the remaining shapes are re-split."""
    reference = ids_of(loader(ViewStream(root, batch_size=2, **KW), 2, 1))
    stream = ViewStream(root, batch_size=2, **KW)
    first = ids_of(itertools.islice(stream.track(loader(stream, 2, 1)), 2))
    state = stream.state_dict()
    rest = []
    for rank in range(2):
        resumed = ViewStream(root, batch_size=2, rank=rank, world_size=2, **KW)
        resumed.load_state_dict(state)
        rest += ids_of(resumed.track(loader(resumed, 2, 2)))
    assert sorted(first + rest) == list(range(NUM_SHAPES)) and set(first).isdisjoint(rest)
    assert set(rest) == set(reference[len(first):])


def test_persistent_workers_follow_epochs(root):
    stream = ViewStream(root, batch_size=2, **KW)
    dl = loader(stream, 2, 2, persistent_workers=True)
    for epoch in range(3):
        stream.set_epoch(epoch)
        got = ids_of(stream.track(dl))
        assert got == [stream.entries[i].shape_id for i in stream.epoch_order(epoch)]


def test_state_and_track_errors(root):
    stream = ViewStream(root, batch_size=2, **KW)
    with pytest.raises(ValueError, match="batch_size=3"):
        next(stream.track(loader(stream, 3, 2)))
    state = stream.state_dict()
    with pytest.raises(ValueError, match="seed"):
        ViewStream(root, batch_size=2, **{**KW, "shuffle_buffer": 4}, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        ViewStream(root, batch_size=2, **{**KW, "shuffle_buffer": 8}).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        ViewStream(root, rank=2, world_size=2, **KW)
    with pytest.raises(ValueError, match="both or neither"):
        ViewStream(root, rank=0, **KW)


@pytest.mark.slow
def test_spawned_persistent_workers(root):
    """Spawned workers get a pickled copy without open files and still follow set_epoch and the
    resume position through shared memory (fork is covered above; spawn costs ~5 s of startup)."""
    ds = ViewDataset(root, num_input_views=1, num_target_views=1, channels=("alpha",))
    ds[0]  # opens a file in this process: it must not travel
    dl = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, multiprocessing_context="spawn", persistent_workers=True)
    stream = ViewStream(root, batch_size=2, **KW)
    sdl = loader(stream, 2, 2, multiprocessing_context="spawn", persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert torch.cat([b["view_ids"] for b in dl]).tolist() == [ds[i]["view_ids"].tolist() for i in range(len(ds))]
        assert ids_of(stream.track(sdl)) == [stream.entries[i].shape_id for i in stream.epoch_order(epoch)]
