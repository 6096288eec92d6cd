"""``prmforge doctor``: which optional parts of prmforge work on this machine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DoctorItem:
    name: str  # e.g. "embedded model", "vLLM / GPU", "Lean 4"
    ok: bool
    detail: str  # what was found
    hint: str | None = None  # how to make it work, when it does not
