"""Command groups of the ``prmforge`` CLI (see flows/cli.py)."""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``timeout``, ``kill``) raised in the main thread.

    A KeyboardInterrupt, so everything that ends cleanly on Ctrl-C (the decoder's cache, the
    eval journal's message, the workers) ends the same way; its exit status is 128 + 15.
    """

    exit_code = 128 + signal.SIGTERM


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return interrupt.exit_code if isinstance(interrupt, Terminated) else 128 + signal.SIGINT
