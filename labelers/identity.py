"""Stable identities and seeds: the same inputs give the same ids and random draws everywhere."""

from __future__ import annotations

from collections.abc import Sequence

# One implementation of the problem identity, shared with the loader (data_schemas may not
# import labelers).
from data_schemas.problems import normalize_text, problem_id, stable_digest

__all__ = ["derive_seed", "normalize_text", "prefix_hash", "problem_id"]


def _digest(*parts: str, length: int = 16) -> str:
    return stable_digest(*parts, length=length)


def prefix_hash(question: str, steps: Sequence[str]) -> str:
    """Hash of the question plus a step prefix (normalized), 16 hex characters."""
    return _digest(normalize_text(question), *(normalize_text(s) for s in steps))


def derive_seed(build_seed: int, problem_id: str, node_path: Sequence[int | str] = ()) -> int:
    """A 63-bit seed from (build seed, problem_id, node path): independent of batch order,
    worker count and what other problems are in the batch."""
    text = _digest(str(build_seed), problem_id, *(str(p) for p in node_path), length=16)
    return int(text, 16) & ((1 << 63) - 1)
