"""What ``prmforge doctor`` reports, and how a part of prmforge declares its check.

A backend or verifier module declares one :class:`DoctorCheck`: its name, the distributions it
requires (``importlib.metadata`` names, as datatrove's steps declare ``_requires_dependencies``),
how to install them, and a cheap function that checks the rest (a model file, a GPU, a
toolchain). labelers/doctor.py collects the declared checks by explicit registration, never by
loading modules by name. This module is low on purpose: it imports nothing of prmforge, so every
backend can import it without an arrow back up to doctor.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DoctorItem:
    name: str  # e.g. "embedded model", "vLLM / GPU", "Lean 4"
    ok: bool
    detail: str  # what was found
    hint: str | None = None  # how to make it work, when it does not


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None (reads metadata, imports nothing)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class DoctorCheck:
    """One part of prmforge as doctor sees it.

    ``requires``: distributions the part cannot work without; when one is missing, doctor reports
    them with ``install_hint`` and does not call ``run`` (which may need them). ``run``: the cheap
    check of everything else; it imports no optional package and loads no model.
    """

    name: str
    run: Callable[[], DoctorItem]
    requires: tuple[str, ...] = ()
    install_hint: str | None = None

    def missing(self) -> list[str]:
        return [name for name in self.requires if installed_version(name) is None]

    def check(self) -> DoctorItem:
        """The item for this part: missing requirements first, then ``run``; a check that fails
        unexpectedly is reported, not raised (one broken check must not hide the others)."""
        missing = self.missing()
        if missing:
            return DoctorItem(self.name, False, f"missing: {', '.join(missing)}", self.install_hint)
        try:
            return self.run()
        except Exception as error:  # noqa: BLE001 - doctor reports
            return DoctorItem(self.name, False, f"check failed: {type(error).__name__}: {error}")
