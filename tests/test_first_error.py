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
def test_expected_probes_left_is_the_mean_over_every_first_error(assume_last_wrong: bool) -> None:
    """The progress line's estimate of a search's remaining probes: before every probe of every
    run, the mean over the first errors that agree with what was probed so far of the probes they
    still take (exact, not log2 rounded, which is 1 off for some spans); 0 once done."""
    for num_steps in range(1, 17):
        errors = [*range(num_steps)] if assume_last_wrong else [*range(num_steps), -1]
        total = {error: _run(FirstErrorSearch(num_steps, assume_last_wrong), _oracle(error)) for error in errors}
        for error in errors:
            search, oracle = FirstErrorSearch(num_steps, assume_last_wrong), _oracle(error)
            while True:
                agreeing = [e for e in errors
                            if all((_oracle(e)(i).correct == 0) == (m.correct == 0) for i, m in search.probes.items())]
                mean_left = sum(total[e] - len(search.probes) for e in agreeing) / len(agreeing)
                assert search.expected_probes_left() == pytest.approx(mean_left)
                if (probe := search.next_probe()) is None:
                    break
                search.record(probe, oracle(probe))
            assert search.expected_probes_left() == 0.0
