"""Command groups of the ``prmforge`` CLI (see flows/cli.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``timeout``, ``kill``) raised in the main thread.

    A KeyboardInterrupt, so everything that ends cleanly on Ctrl-C (the decoder's cache, the
    eval journal's message, the workers) ends the same way; its exit status is 128 + 15.
    """

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: a SIGTERM raises :class:`Terminated` in the main thread (the default handler kills
    the process before any cleanup). Not for builds: Prefect's flow engine installs its own SIGTERM
    bridge (it marks the run crashed, then re-sends the signal to the handler it replaced, which
    must stay the default for the process to end)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return interrupt.exit_code if isinstance(interrupt, Terminated) else 128 + signal.SIGINT
