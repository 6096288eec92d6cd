"""Gold answers for ProcessBench records, joined where they can be known and never guessed.

ProcessBench ships no gold answers; Monte Carlo labels (rollouts are judged against gold) and
the answer-aware baselines need one. Sources, in this order (the first that knows a record's
problem wins; ``gold_source`` on the record says which):

1. ``file``: the record's own ``gold_answer`` field (prmforge's injected sets, a joined file);
2. ``gold_file``: the user's answer file (``--gold FILE``): JSON list or JSONL of objects with
   ``id`` or ``problem`` and ``gold_answer`` or ``answer`` (by id first, then by problem text);
3. ``gsm8k``: the GSM8K test split, bundled (data_schemas/data/gold_answers.jsonl), by
   normalized problem text; the answer after ``####``, thousands separators removed;
4. ``math500``: MATH-500, bundled likewise, by normalized problem text (its ``answer`` field);
5. ``sibling``: the final answer of ANOTHER solution of the same problem in the same file whose
   ``final_answer_correct`` is true, when every such sibling states the same answer (one stating
   none, or two that differ: no gold).

``final_answer_correct`` is metadata that no signal may read. Source 5 reads it as *gold
provenance* only: it picks which sibling's answer is the gold answer of the others. Never the
record's own: a record whose gold came from its own final answer would be known correct through
its metadata (every MC signal would infer it all-positive). What source 5 does cost is selection:
only problems that some generator solved get gold that way (easier problems), so coverage is
reported per source and a subset's figures say which sources they rest on.

Problem text is normalized by :func:`normalize_problem` (whitespace collapsed, case folded,
curly quotes straightened) -- never fuzzy matching: a near-miss stays without gold.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError
from labelers.evaluation.processbench import BenchRecord

SOURCES: tuple[str, ...] = ("file", "gold_file", "gsm8k", "math500", "sibling")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def normalize_problem(text: str) -> str:
    """Problem text as the join compares it: whitespace runs -> one space, stripped, case
    folded, curly quotes -> straight ones."""
    return re.sub(r"\s+", " ", text.translate(_QUOTES)).strip().casefold()


def gsm8k_final_answer(reference: str) -> str:
    """The final answer of a GSM8K reference solution: the text after ``####``, without
    thousands separators."""
    return reference.split("####")[-1].strip().replace(",", "")


def bundled_gold_path() -> Path:
    """data_schemas/data/gold_answers.jsonl: GSM8K test (1319) and MATH-500 (500) problems with
    their final answers (its README says how it was made; MIT, see LICENSE there)."""
    return Path(str(resources.files("data_schemas") / "data" / "gold_answers.jsonl"))


def gold_table_rows(
    gsm8k_rows: Iterable[dict[str, Any]], math500_rows: Iterable[dict[str, Any]]
) -> list[dict[str, str]]:
    """The rows of the bundled table from the published files' rows (GSM8K ``question`` /
    ``answer``; MATH-500 ``problem`` / ``answer`` / ``unique_id``), in file order."""
    table = [{"source": "gsm8k", "problem": r["question"], "answer": gsm8k_final_answer(r["answer"])}
             for r in gsm8k_rows]
    table += [{"source": "math500", "problem": r["problem"], "answer": str(r["answer"]), "unique_id": r["unique_id"]}
              for r in math500_rows]
    return table


def _read_rows(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{what} {path}: {error.strerror or error}") from None
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise InputError(f"{what} {path}: not JSON or JSONL ({error.msg})") from None
    if not all(isinstance(row, dict) for row in rows):
        raise InputError(f"{what} {path}: expected JSON objects, one per record")
    return rows


@dataclass(frozen=True)
class GoldTables:
    """Gold answers by normalized problem text, per source, and the user's by record id."""

    by_source: dict[str, dict[str, str]] = field(default_factory=dict)
    by_id: dict[str, str] = field(default_factory=dict)


def load_tables(gold_file: Path | None = None, bundled: Path | None = None) -> GoldTables:
    """The bundled table (``bundled`` overrides its path) and the user's ``gold_file``."""
    by_source: dict[str, dict[str, str]] = {"gold_file": {}, "gsm8k": {}, "math500": {}}
    by_id: dict[str, str] = {}
    for row in _read_rows(bundled or bundled_gold_path(), "bundled gold table"):
        by_source[row["source"]].setdefault(normalize_problem(row["problem"]), str(row["answer"]))
    if gold_file is not None:
        for index, row in enumerate(_read_rows(gold_file, "--gold")):
            answer = row.get("gold_answer", row.get("answer"))
            if answer is None or not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
                raise InputError(
                    f"--gold {gold_file}: record {index} has no 'gold_answer' (or 'answer') string or number")
            if "id" in row:
                by_id[str(row["id"])] = str(answer)
            elif isinstance(row.get("problem"), str):
                by_source["gold_file"][normalize_problem(row["problem"])] = str(answer)
            else:
                raise InputError(f"--gold {gold_file}: record {index} names neither 'id' nor 'problem'")
    return GoldTables(by_source, by_id)


@dataclass(frozen=True)
class GoldCoverage:
    """How many records got a gold answer, from which source (:data:`SOURCES`)."""

    total: int
    by_source: dict[str, int]

    @property
    def with_gold(self) -> int:
        return sum(self.by_source.values())

    @property
    def without_gold(self) -> int:
        return self.total - self.with_gold

    def line(self) -> str:
        parts = ", ".join(f"{name} {self.by_source[name]}" for name in SOURCES if self.by_source.get(name))
        text = f"gold answers: {self.with_gold} of {self.total} solutions"
        if parts:
            text += f" ({parts})"
        if self.without_gold:
            text += f"; {self.without_gold} without gold: scored by the gold-free signals only, in a table of their own"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "with_gold": self.with_gold, "without_gold": self.without_gold,
                "by_source": dict(self.by_source)}


def _sibling_answers(records: Sequence[BenchRecord]) -> dict[str, dict[str, str | None]]:
    """Per normalized problem: record id -> final answer stated by that record, for the records
    whose ``final_answer_correct`` is true (gold provenance only, module doc)."""
    from labelers.answers import extract_final_answer

    siblings: dict[str, dict[str, str | None]] = {}
    for record in records:
        if record.final_answer_correct is True:
            answer = extract_final_answer("\n".join(record.steps), allow_fallback=False)
            siblings.setdefault(normalize_problem(record.problem), {})[record.id] = answer
    return siblings


def _sibling_gold(record: BenchRecord, siblings: dict[str, dict[str, str | None]]) -> str | None:
    from labelers.answers import answers_equal

    others = [answer for rid, answer in siblings.get(normalize_problem(record.problem), {}).items() if rid != record.id]
    if not others or any(answer is None for answer in others):
        return None
    first = others[0]
    if all(answer == first or answers_equal(answer, first) for answer in others[1:]):  # type: ignore[arg-type]
        return first
    return None


def join_gold(records: Sequence[BenchRecord], tables: GoldTables) -> tuple[list[BenchRecord], GoldCoverage]:
    """``records`` with ``gold_answer`` / ``gold_source`` set where a source knows the gold
    answer (module doc); the others unchanged (no gold). Order kept."""
    siblings = _sibling_answers(records)
    joined: list[BenchRecord] = []
    counts: Counter[str] = Counter()
    for record in records:
        key = normalize_problem(record.problem)
        gold, source = None, None
        if record.gold_answer:
            gold, source = record.gold_answer, record.gold_source or "file"
        elif record.id in tables.by_id:
            gold, source = tables.by_id[record.id], "gold_file"
        else:
            for name in ("gold_file", "gsm8k", "math500"):
                if key in tables.by_source.get(name, {}):
                    gold, source = tables.by_source[name][key], name
                    break
            else:
                gold = _sibling_gold(record, siblings)
                source = "sibling" if gold is not None else None
        if gold is not None:
            counts[source if source in SOURCES else "file"] += 1
            joined.append(replace(record, gold_answer=gold, gold_source=source))
        else:
            joined.append(record)
    return joined, GoldCoverage(len(records), {name: counts[name] for name in SOURCES if counts[name]})


PROCESSBENCH_SUBSETS: tuple[str, ...] = ("gsm8k", "math", "olympiadbench", "omnimath")


def load_processbench(spec: str) -> list[BenchRecord]:
    """``processbench:SUBSET``: the published set (Qwen/ProcessBench, split SUBSET) through
    ``datasets``. Without ``datasets`` or a reachable hub: one InputError naming the local-file
    spelling."""
    from labelers.evaluation.processbench import record_from_json

    subset = spec.partition(":")[2]
    if subset not in PROCESSBENCH_SUBSETS:
        names = ", ".join("processbench:" + name for name in PROCESSBENCH_SUBSETS)
        raise InputError(f"--input {spec}: the subsets are {names}")
    local = f"download Qwen/ProcessBench and pass the file instead: --input path/to/{subset}.json (JSON list or JSONL)"
    try:
        import datasets
    except ImportError:
        raise InputError(f"--input {spec}: the 'datasets' package is not installed; {local}") from None
    unreachable = _hub_unreachable()
    if unreachable:
        # datasets would retry for half a minute and log each try; one line says it all.
        raise InputError(f"--input {spec}: the hub is not reachable ({unreachable}); {local}")
    try:
        rows = datasets.load_dataset("Qwen/ProcessBench", split=subset)
    except Exception as error:  # noqa: BLE001 - any hub/network failure means: use a local file
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise InputError(f"--input {spec}: the hub is not reachable ({reason}); {local}") from None
    return [record_from_json(dict(row), f"{spec}: record {index}") for index, row in enumerate(rows)]


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None when it can, or when
    ``HF_HUB_OFFLINE`` asks ``datasets`` to read its cache): a TCP connection to the endpoint
    (``HF_ENDPOINT``, default huggingface.co) on its port."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"{host}:{port}: {error.strerror or error}"
    return None
