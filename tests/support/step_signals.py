"""Signal results by name, as fusion and the rationale read them (labelers/fuse.py)."""

from __future__ import annotations

from typing import Any


def signals(tool: Any, lean: Any, mc: Any, judge: Any = None) -> dict[str, Any]:
    """One step's results (or, given sequences, one path's): tool, Lean, MC and, when given, the
    step judge's verdict."""
    return {"tool": tool, "lean": lean, "mc": mc, **({"judge": judge} if judge is not None else {})}
