"""Program-of-thought code blocks: which ```` ```python ```` blocks of a step run, and their verdict.

Step 3 of the rules in :mod:`labelers.verify.tool`: ``_code_tasks`` finds a step's Python blocks
and the value the step claims after each (an ```` ```output ```` block's content, else the first
number after the block); the verifier runs them in :func:`labelers.verify.sandbox.run_python`;
``_compare_code`` compares the last printed line (or the trailing expression's value) with that
claim on the exact path, allowing float noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from labelers.verify.claims import Extraction, ParseError, parse_plain
from labelers.verify.exact import _NeedsSympy, _shown_decimals, _Undefined, compare, eval_exact, format_value
from labelers.verify.sandbox import SandboxResult

# ---------------------------------------------------------------------------------------------
# Program-of-thought code blocks


_CLAIMED_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


@dataclass(frozen=True)
class _CodeTask:
    step_index: int
    span: tuple[int, int]
    code: str
    claimed: str | None


def _code_tasks(step_index: int, text: str, extraction: Extraction) -> list[_CodeTask]:
    import re

    tasks = []
    for start, end in extraction.code_blocks:
        block = text[start:end]
        header, _, body = block[3:].partition("\n")
        language = header.strip().lower()
        if language not in ("python", "py", "python3", ""):
            continue
        if language == "" and not body:
            continue
        if language in ("output", "text"):
            continue
        code = body[: body.rfind("```")] if body.rstrip().endswith("```") else body
        after = text[end:]
        # The claimed value: an ```output block's content, else the first number after the block.
        claimed = None
        out = re.match(r"\s*```(?:output|text)?\s*\n(.*?)```", after, re.DOTALL)
        source = out.group(1) if out else after
        match = re.search(_CLAIMED_NUMBER, source)
        if match:
            claimed = match.group(0).replace(",", "")
        tasks.append(_CodeTask(step_index, (start, end), code, claimed))
    return tasks


def _printed_value(result: SandboxResult) -> str | None:
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if lines:
        return lines[-1][:200]
    return result.result


def _code_not_run(task: _CodeTask, reason: str) -> dict[str, Any]:
    return {"kind": "python", "span": list(task.span), "text": f"```python block ({len(task.code)} chars)",
            "status": "unavailable", "claimed": task.claimed, "holds": None, "reason": reason[:300]}


def _compare_code(task: _CodeTask, run: SandboxResult, tolerance: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "python",
        "span": list(task.span),
        "text": f"```python block ({len(task.code)} chars)",
        "status": run.status,
        "claimed": task.claimed,
    }
    if run.status != "ok":
        entry.update(holds=None, reason=f"code {run.status}: {run.error}"[:300])
        return entry
    printed = _printed_value(run)
    entry["printed"] = printed
    if printed is None or task.claimed is None:
        entry.update(holds=None, reason="no printed value" if printed is None else "no claimed value after the code")
        return entry
    try:
        printed_q = eval_exact(parse_plain(printed.replace(",", "").rstrip(".")))
        claimed_tree = parse_plain(task.claimed)
        claimed_q = eval_exact(claimed_tree)
    except (ParseError, _NeedsSympy, _Undefined, ValueError, ZeroDivisionError):
        entry.update(holds=None, reason="printed value is not a plain number")
        return entry
    # Floats printed by a program carry noise: equal within 1e-9 relative, or to the decimals shown.
    noise = Fraction(1, 10**9) * max(1, abs(printed_q))
    holds, method = compare(printed_q, claimed_q, "=", True, 0.0, None, _shown_decimals(claimed_tree))
    if not holds and abs(printed_q - claimed_q) <= noise:
        holds, method = True, "float noise (1e-9 relative)"
    entry.update(holds=holds, method=method, lhs_value=format_value(printed_q), rhs_value=format_value(claimed_q))
    return entry
