"""The registered step signals, in rationale order (one line each, before the decision).

A new signal: its module (implementing :class:`labelers.signals.base.PathSignal`), its entry
here, its columns in data_schemas. The pipeline, the rationale, the stored signals of eval runs
and the eval runner's signal lists read it (through :func:`registered`, when they run); fusion
reads the results by name.
"""

from __future__ import annotations

from labelers.signals.base import PathSignal, StepSignal
from labelers.signals.judge import JUDGE
from labelers.signals.lean import LEAN
from labelers.signals.mc import MC
from labelers.signals.tool import TOOL

STEP_SIGNALS: tuple[StepSignal, ...] = (TOOL, LEAN, MC, JUDGE)


def registered() -> tuple[StepSignal, ...]:
    """The registered signals. Readers call this when they run, never bind the tuple at import, so
    a test can register a signal of its own (monkeypatch ``STEP_SIGNALS``) and see it everywhere."""
    return STEP_SIGNALS


def path_signals() -> tuple[PathSignal, ...]:
    """The signals the labeling core runs on chosen paths, in order: all but the tool (it ran in
    the search) and the value signal (MC, the search stage's rollouts)."""
    return tuple(s for s in registered() if s.name not in (TOOL.name, MC.name))  # type: ignore[misc]


def signal_named(name: str) -> StepSignal:
    signals = registered()
    for signal in signals:
        if signal.name == name:
            return signal
    raise KeyError(f"no step signal named {name!r}; registered: {', '.join(s.name for s in signals)}")
