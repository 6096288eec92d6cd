"""What an eval run has labeled so far, kept on disk so an interrupted run picks up where it stopped.

A labeling pass over a real set takes an hour or more on a CPU. ``eval run --out FILE`` appends
every labeled chunk (its step rows, outcomes, token usage, clock, and the requests it sampled
with their results) to ``FILE.partial`` as one JSON line, written and fsynced before the next
chunk starts; the same command run again reads it and labels only the chunks it does not hold.
The sampled requests go back into the run's replay memory, so a pass that follows (the hybrid's
own after MC's) replays them after a restart as it would have without one. The file goes once
FILE is written.

A chunk is found by its key (:func:`chunk_key`): the pass's signals, MC mode, config hash (seed,
model, k and every label-changing setting) and the chunk's records (id, problem, steps, gold). A
line whose key nothing asks for again -- another input, another config -- is ignored, so a
rerun with other arguments never takes labels it did not ask for. A line cut off by a crash
mid-write is skipped (that chunk is labeled again).

Resumed labels equal an uninterrupted run's where the backend is batch-invariant (the scripted
policy, vLLM with fixed seeds); llama.cpp's batched decode is not bit-for-bit, so a resumed
chunk's rollouts can differ in text from the ones a single run would have drawn, as chunking does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_schemas.errors import PrmforgeError
from data_schemas.records import ProblemOutcome, StepRow
from labelers.policy.base import ChatMessage, Completion, GenerationRequest, GenerationResult, TokenUsage

# Solutions per labeling call. The MC estimates and first-error searches of a call are streamed
# together (labelers/search/scheduler.py); a search's probes follow one another, so the decoder's
# batch is only as full as the number of searches in flight: 32 solutions keep up to 32 of them
# going (10 + 10 ProcessBench GSM8K, k = 4: 8.0 sequences per decode step with chunks of 8, 9.4
# with one chunk). Progress moves per chunk; a crash loses at most the chunk being labeled.
DEFAULT_CHUNK = 32


@dataclass(frozen=True)
class LabeledChunk:
    """One chunk of a labeling pass, as the pass needs it to score and cost its records.

    ``answers``: the requests the chunk sampled fresh, with their results (the eval run's
    :class:`~labelers.evaluation.replay.ReplayPolicy` memory). A resumed run puts them back, so
    the hybrid's own pass replays MC's rollouts instead of sampling them again after a restart.
    """

    rows: list[StepRow]
    outcomes: list[ProblemOutcome]
    usage: TokenUsage
    wall_seconds: float
    cpu_seconds: float
    answers: list[tuple[GenerationRequest, GenerationResult]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [dataclasses.asdict(row) for row in self.rows],
            "outcomes": [dataclasses.asdict(outcome) for outcome in self.outcomes],
            "usage": dataclasses.asdict(self.usage),
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "answers": [[_request_json(request), _result_json(result)] for request, result in self.answers],
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> LabeledChunk:
        return cls(
            [StepRow(**row) for row in entry["rows"]],
            [ProblemOutcome(**outcome) for outcome in entry["outcomes"]],
            TokenUsage(**entry["usage"]),
            float(entry["wall_seconds"]),
            float(entry["cpu_seconds"]),
            [_answer(request, result) for request, result in entry.get("answers", [])],  # absent: older journals
        )


def _request_json(request: GenerationRequest) -> dict[str, Any]:
    fields = dataclasses.asdict(request)
    fields["messages"] = [[m.role, m.content] for m in request.messages]
    return fields


def _result_json(result: GenerationResult) -> dict[str, Any]:
    return {"completions": [[c.text, c.finish_reason, c.completion_tokens] for c in result.completions],
            "prompt_tokens": result.prompt_tokens}


def _answer(request: dict[str, Any], result: dict[str, Any]) -> tuple[GenerationRequest, GenerationResult]:
    asked = GenerationRequest(**{**request, "messages": tuple(ChatMessage(role, content)
                                                            for role, content in request["messages"]),
                                 "stop": tuple(request["stop"])})
    completions = tuple(Completion(text, reason, int(tokens)) for text, reason, tokens in result["completions"])
    return asked, GenerationResult(asked, completions, int(result["prompt_tokens"]))


def chunk_key(signals: Sequence[str], mc_mode: str, config_hash: str, records: Sequence[Any]) -> str:
    """Identity of one chunk of one pass (module doc)."""
    payload = [list(signals), mc_mode, config_hash,
               [[r.id, r.problem, list(r.steps), r.gold_answer] for r in records]]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class ChunkJournal:
    """The labeled chunks of one eval run's output file (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self.resumed = 0  # chunks taken from the file instead of labeled again
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry["chunk"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # cut off by a crash mid-write: that chunk is labeled again

    @property
    def held(self) -> int:
        """Chunks the file held when it was opened (or written since)."""
        return len(self._entries)

    def get(self, key: str) -> LabeledChunk | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            chunk = LabeledChunk.from_json(entry)
        except (KeyError, TypeError, ValueError):
            return None  # written by another prmforge version: label it again
        self.resumed += 1
        return chunk

    def put(self, key: str, chunk: LabeledChunk) -> None:
        payload = chunk.to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "chunk": payload}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise PrmforgeError(f"cannot write {self.path}: {error.strerror}") from None
        self._entries[key] = payload

    def remove(self) -> None:
        """The run's output is written: the journal has served."""
        self.path.unlink(missing_ok=True)
