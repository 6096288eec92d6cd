"""Stable identities and seeds: the same inputs give the same ids and random draws everywhere."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, collapsed whitespace, stripped: two copies of a question differing only in layout
    normalize equal."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _digest(*parts: str, length: int = 16) -> str:
    hasher = hashlib.blake2b(digest_size=32)
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") hash differently
    return hasher.hexdigest()[:length]


def problem_id(question: str, source: str) -> str:
    """``blake2b(normalize(question), source)``, 16 hex characters."""
    return _digest(normalize_text(question), source)


def prefix_hash(question: str, steps: Sequence[str]) -> str:
    """Hash of the question plus a step prefix (normalized), 16 hex characters."""
    return _digest(normalize_text(question), *(normalize_text(s) for s in steps))


def derive_seed(build_seed: int, problem_id: str, node_path: Sequence[int | str] = ()) -> int:
    """A 63-bit seed from (build seed, problem_id, node path): independent of batch order,
    worker count and what other problems are in the batch."""
    text = _digest(str(build_seed), problem_id, *(str(p) for p in node_path), length=16)
    return int(text, 16) & ((1 << 63) - 1)
