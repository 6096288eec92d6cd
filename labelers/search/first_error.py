"""First-error search along a wrong solution (OmegaPRM binary search).

Steps s_0..s_{n-1}; prefix i = steps 0..i. Assuming MC values do not rise again once a prefix
is hopeless, the first error is the earliest i with MC(prefix i) = 0. Binary search::

    lo, hi = 0, n - 1            # assume_last_wrong: MC(prefix n-1) = 0 is known (wrong answer)
    lo, hi = 0, n                # otherwise: hi = n means "no error"
    while lo < hi:
        mid = (lo + hi) // 2     # estimate MC at the midpoint prefix
        if MC(mid) == 0: hi = mid        # the error is at or before mid: search left
        else:            lo = mid + 1    # search right
    first_error = lo             # (n, i.e. none, when not assume_last_wrong and no zero found)

Cost: at most ceil(log2(n)) prefix estimates with a known wrong final answer, at most
ceil(log2(n + 1)) <= ceil(log2(n)) + 1 without, instead of n for per-step MC.

Labels inferred from the search: steps before the first error are positive (their prefixes
lead to the gold answer somewhere later: MC > 0 at a later probe, or, left of every probe, by
the monotonicity assumption); the first error and everything after it are negative. Where a
step was not itself probed its label is *inferred* (``mc_inferred = true``).

:mod:`labelers.search.scheduler` runs many searches at once: each asks for its next probe as
soon as the last one is estimated, beside every other search's and estimate's requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labelers.search.montecarlo import MCEstimate


@dataclass
class FirstErrorSearch:
    """Binary-search state for one solution of ``num_steps`` steps."""

    num_steps: int
    assume_last_wrong: bool = True
    probes: dict[int, MCEstimate] = field(default_factory=dict)
    failed: str | None = None
    lo: int = 0
    hi: int = -1

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError("a first-error search needs at least one step")
        self.hi = self.num_steps - 1 if self.assume_last_wrong else self.num_steps

    @property
    def done(self) -> bool:
        return self.failed is not None or self.lo >= self.hi

    def next_probe(self) -> int | None:
        """The step index whose prefix to estimate next, or None when the search is over."""
        return None if self.done else (self.lo + self.hi) // 2

    def record(self, index: int, estimate: MCEstimate) -> None:
        if index != self.next_probe():
            raise ValueError(f"probe {index} was not asked for")
        self.probes[index] = estimate
        if estimate.correct == 0:
            self.hi = index
        else:
            self.lo = index + 1

    def expected_probes_left(self) -> float:
        """Probes this search still makes on average, the next one included, if the first error
        is equally likely at each of its ``hi - lo + 1`` remaining candidates (progress of a pass;
        no label reads it): :func:`expected_probes` of ``hi - lo``."""
        return 0.0 if self.done else expected_probes(self.hi - self.lo)

    @property
    def first_error(self) -> int:
        """Index of the first error, or -1 when none (only without ``assume_last_wrong``)."""
        if not self.done or self.failed is not None:
            raise ValueError("search not finished")
        return self.lo if self.lo < self.num_steps else -1

    def step_signal(self, index: int) -> tuple[MCEstimate | None, bool, bool]:
        """(sampled estimate or None, hard label, inferred) for step ``index`` after the search."""
        error = self.first_error
        positive = error < 0 or index < error
        estimate = self.probes.get(index)
        return estimate, positive, estimate is None


def expected_probes(span: int) -> float:
    """Mean probe count of the binary search on ``lo..hi`` with ``span = hi - lo``, over a first
    error uniform on its ``span + 1`` candidates. The probe ``mid = lo + span // 2`` reads 0 for
    the ``a + 1`` candidates ``lo..mid`` (``a = span // 2``, left span ``a``) and c > 0 for the
    other ``span - a`` (right span ``span - a - 1``)::

        E(0) = 0
        E(s) = 1 + ((a + 1) E(a) + (s - a) E(s - a - 1)) / (s + 1)

    Between ``floor(log2(span + 1))`` and ``ceil_log2(span + 1)``: E(1) = 1, E(2) = 5/3, E(3) = 2."""
    if span <= 0:
        return 0.0
    left = span // 2
    return 1 + ((left + 1) * expected_probes(left) + (span - left) * expected_probes(span - left - 1)) / (span + 1)


def ceil_log2(n: int) -> int:
    return max(0, (n - 1).bit_length())
