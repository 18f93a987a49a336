"""The resumable distributed sampler."""

from __future__ import annotations

import itertools

import pytest

from ovss.engine.sampler import ResumableSampler


def _take(sampler: ResumableSampler, batches: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), batches))


def test_epochs_are_seeded_permutations():
    s = ResumableSampler(10, batch_size=5, seed=3)
    first, second = _take(s, 2), _take(ResumableSampler(10, batch_size=5, seed=3), 2)
    assert first == second
    indices = [i for batch in first for i, _ in batch]
    assert sorted(indices) == list(range(10))  # epoch 0 covers the dataset once
    assert [p for batch in first for _, p in batch] == list(range(10))
    assert indices != list(range(10))
    epoch1 = [i for batch in _take(s, 4)[2:] for i, _ in batch]
    assert sorted(epoch1) == list(range(10)) and epoch1 != indices  # a new permutation per epoch
    other = [i for batch in _take(ResumableSampler(10, batch_size=5, seed=4), 2) for i, _ in batch]
    assert other != indices


def test_resume_continues_the_stream():
    full = [x for batch in _take(ResumableSampler(7, batch_size=3, seed=1), 6) for x in batch]
    resumed = [x for batch in _take(ResumableSampler(7, batch_size=3, seed=1, start=9), 3) for x in batch]
    assert resumed == full[9:]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_the_single_process_stream(world):
    single = _take(ResumableSampler(13, batch_size=2 * world, seed=0), 5)
    samplers = [ResumableSampler(13, batch_size=2, seed=0, rank=r, world_size=world) for r in range(world)]
    ranks = [_take(s, 5) for s in samplers]
    for step in range(5):
        union = sorted(x for r in range(world) for x in ranks[r][step])
        assert union == sorted(single[step])  # every step consumes the same global positions
    positions = [p for batch in ranks[1] for _, p in batch]
    assert positions == list(range(1, 10 * world, world))


def test_no_shuffle_and_validation():
    s = ResumableSampler(3, batch_size=2, shuffle=False)
    assert [i for batch in _take(s, 3) for i, _ in batch] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0, batch_size=1)
    with pytest.raises(ValueError, match="rank=2/2"):
        ResumableSampler(5, batch_size=1, rank=2, world_size=2)
