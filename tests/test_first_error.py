"""First-error binary search (OmegaPRM): exact index and the probe budget."""

from __future__ import annotations

import math

import pytest

from labelers.search.first_error import FirstErrorSearch, ceil_log2
from labelers.search.montecarlo import MCEstimate


def _oracle(first_error: int):
    """MC of prefix i: 3/8 before the first error, 0 from it on (monotone)."""
    return lambda index: MCEstimate(0 if first_error >= 0 and index >= first_error else 3, 8)


def _run(search: FirstErrorSearch, oracle) -> int:
    while (probe := search.next_probe()) is not None:
        search.record(probe, oracle(probe))
    return len(search.probes)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 8, 13, 16])
def test_finds_first_error_with_known_wrong_answer(num_steps: int) -> None:
    for error in range(num_steps):
        search = FirstErrorSearch(num_steps, assume_last_wrong=True)
        probes = _run(search, _oracle(error))
        assert search.first_error == error
        assert probes <= ceil_log2(num_steps)
        assert probes <= math.ceil(math.log2(num_steps)) + 1


@pytest.mark.parametrize("num_steps", [1, 2, 3, 6, 9, 16])
def test_without_known_answer_finds_error_or_none(num_steps: int) -> None:
    for error in [*range(num_steps), -1]:
        search = FirstErrorSearch(num_steps, assume_last_wrong=False)
        probes = _run(search, _oracle(error))
        assert search.first_error == error
        assert probes <= math.ceil(math.log2(num_steps)) + 1


def test_step_signals_mark_inferred_steps() -> None:
    search = FirstErrorSearch(8, assume_last_wrong=True)
    _run(search, _oracle(5))
    assert search.first_error == 5
    signals = [search.step_signal(i) for i in range(8)]
    assert [positive for _, positive, _ in signals] == [True] * 5 + [False] * 3
    for index, (estimate, _, inferred) in enumerate(signals):
        assert inferred == (index not in search.probes)
        assert (estimate is None) == inferred
    # probes 3 (positive), 5 (zero), 4 (positive): the classic path for n=8, error 5
    assert sorted(search.probes) == [3, 4, 5]


@pytest.mark.parametrize("assume_last_wrong", [True, False])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 12])
def test_following_probes_hold_the_probe_that_comes_next_whatever_the_answer(num_steps: int,
                                                                             assume_last_wrong: bool) -> None:
    """Spare probes (labelers.search.scheduler) sample ``following_probes()`` beside the next probe:
    whichever way that probe reads, the search's next one is among them."""
    for error in [*range(num_steps), -1][: num_steps + (0 if assume_last_wrong else 1)]:
        search = FirstErrorSearch(num_steps, assume_last_wrong=assume_last_wrong)
        oracle = _oracle(error)
        while (probe := search.next_probe()) is not None:
            following = search.following_probes()
            assert len(following) <= 2 and probe not in following
            search.record(probe, oracle(probe))
            after = search.next_probe()
            assert after is None or after in following


def test_following_probes_are_the_two_next_midpoints() -> None:
    search = FirstErrorSearch(7)  # lo, hi = 0, 6: probe 3; a zero leaves (0, 3), a positive (4, 6)
    assert search.next_probe() == 3 and search.following_probes() == (1, 5)
    search.record(3, MCEstimate(0, 4))
    assert search.next_probe() == 1 and search.following_probes() == (0, 2)
    search.record(1, MCEstimate(2, 4))
    assert search.next_probe() == 2 and search.following_probes() == ()  # either answer ends it
    search.record(2, MCEstimate(0, 4))
    assert search.first_error == 2 and search.following_probes() == ()
