"""Checking Lean declarations: batch files, ``lake env lean --json``, message mapping, cache.

A batch is one ``.lean`` file (``import Mathlib`` once, then many independent theorems) written
into the user's Lake project and compiled with ``lake env lean --json FILE`` (cwd = project). Lean
prints one JSON object per message (``fileName``, ``pos {line, column}``, ``endPos``,
``severity``, ``data``); since this module writes the file, it knows each declaration's line range
and gives every message to the declaration that contains its position.

Each statement is checked through up to three declarations:

- ``<name>_chk : <signature> := by sorry``: accepted when Lean elaborates it with exactly one
  "declaration uses 'sorry'" warning and no error (the Safe acceptance test);
- ``<name> : <signature> := by first | (t1; done); trace "prmforge:t1" | ...``: proved by the
  tactic whose trace line Lean reports;
- ``<name>_neg : <binders> : ¬ (<proposition>)``, the same tactic list: refuted.

A declaration's outcome never depends on its neighbours: names are unique hashes, nothing refers
to another declaration, and when a batch dies (timeout, crash) the declarations Lean did not
report on are re-run in smaller batches, down to a single declaration with its own time limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from labelers.verify.lean_formalize import Formalization

log = logging.getLogger("prmforge.lean")

DeclKind = Literal["check", "prove", "refute"]
OutcomeStatus = Literal["ok", "failed", "timeout", "crashed", "unavailable"]

TRACE_PREFIX = "prmforge:closed-by:"
SORRY_WARNING = "declaration uses 'sorry'"
# Lean's heartbeat limit: a deterministic, per-declaration timeout.
_HEARTBEAT_MARKERS = ("maximum number of heartbeats", "(deterministic) timeout")


# ---------------------------------------------------------------------------------------------
# Declarations and the batch file


@dataclass(frozen=True)
class Declaration:
    """One top-level Lean declaration of a batch. ``key`` identifies it (and its cache entry)."""

    name: str
    kind: DeclKind
    text: str  # the full declaration, possibly several lines, no trailing newline

    @property
    def key(self) -> str:
        return hashlib.blake2b(self.text.encode(), digest_size=16).hexdigest()


def _lean_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def proof_script(tactics: Sequence[str], *, substitute: bool) -> str:
    """``by`` block trying each tactic alone; the one that closes the goal leaves a trace line.

    ``substitute``: start with ``try subst_vars`` so hypotheses ``h_x : x = 5`` are used.
    """
    lines = []
    if substitute:
        lines.append("  try subst_vars")
    lines.append("  first")
    for tactic in tactics:
        lines.append(f"  | ({tactic}; done); trace {_lean_string(TRACE_PREFIX + tactic)}")
    return "by\n" + "\n".join(lines)


def declarations_for(formalization: Formalization, tactics: Sequence[str]) -> list[Declaration]:
    """The check / prove / refute declarations of one statement (refute only when negatable)."""
    substitute = bool(formalization.binders)
    name = formalization.name
    decls = [
        Declaration(f"{name}_chk", "check", f"theorem {name}_chk {formalization.signature} := by\n  sorry"),
        Declaration(
            name, "prove", f"theorem {name} {formalization.signature} := {proof_script(tactics, substitute=substitute)}"
        ),
    ]
    if formalization.negatable:
        decls.append(
            Declaration(
                f"{name}_neg",
                "refute",
                f"theorem {name}_neg {formalization.negated_signature} := "
                f"{proof_script(tactics, substitute=substitute)}",
            )
        )
    return decls


@dataclass(frozen=True)
class BatchFile:
    """The text of a batch and the 1-based line range ``(first, last)`` of each declaration."""

    text: str
    ranges: dict[str, tuple[int, int]]
    header_lines: int


BATCH_HEADER = (
    "import Mathlib\n\n-- prmforge Lean batch (generated): every theorem below is independent of the others.\n"
)


def render_batch(declarations: Sequence[Declaration]) -> BatchFile:
    """One file: the header, then each declaration followed by a blank line."""
    parts = [BATCH_HEADER]
    line = BATCH_HEADER.count("\n") + 1  # the line the next declaration starts on
    header_lines = line - 1
    ranges: dict[str, tuple[int, int]] = {}
    for decl in declarations:
        height = decl.text.count("\n") + 1
        ranges[decl.name] = (line, line + height - 1)
        parts.append(decl.text + "\n\n")
        line += height + 1
    return BatchFile("".join(parts) if declarations else BATCH_HEADER, ranges, header_lines)


# ---------------------------------------------------------------------------------------------
# Lean's JSON messages


@dataclass(frozen=True)
class LeanMessage:
    severity: str  # "error", "warning" or "information"
    line: int  # 1-based
    column: int  # 0-based
    data: str
    end_line: int | None = None


def parse_lean_json(stdout: str) -> tuple[list[LeanMessage], list[str]]:
    """Messages from ``lean --json`` output (one JSON object per line), and the other lines.

    Lean 4 serializes a message as ``{"fileName", "pos": {"line", "column"}, "endPos",
    "keepFullRange", "severity", "caption", "data"}``; unknown extra fields are ignored.
    """
    messages: list[LeanMessage] = []
    other: list[str] = []
    for raw in stdout.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            other.append(raw)
            continue
        if not isinstance(obj, dict) or "severity" not in obj or not isinstance(obj.get("pos"), dict):
            other.append(raw)
            continue
        end = obj.get("endPos")
        data = obj.get("data", "")
        caption = obj.get("caption") or ""
        messages.append(
            LeanMessage(
                severity=str(obj["severity"]),
                line=int(obj["pos"].get("line", 0)),
                column=int(obj["pos"].get("column", 0)),
                data=data if isinstance(data, str) else json.dumps(data),
                end_line=int(end["line"]) if isinstance(end, dict) and "line" in end else None,
            )
            if not caption
            else LeanMessage(
                severity=str(obj["severity"]),
                line=int(obj["pos"].get("line", 0)),
                column=int(obj["pos"].get("column", 0)),
                data=f"{caption}: {data}",
                end_line=int(end["line"]) if isinstance(end, dict) and "line" in end else None,
            )
        )
    return messages, other


@dataclass(frozen=True)
class DeclOutcome:
    """What Lean said about one declaration.

    ``ok``: check accepted / goal closed (``tactic`` says by which tactic); ``failed``: Lean
    reported an error (``messages``); ``timeout``: heartbeat limit or the process time limit;
    ``crashed``: the process died before reporting on it; ``unavailable``: Lean or Mathlib could
    not be used at all.
    """

    status: OutcomeStatus
    tactic: str | None = None
    messages: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "tactic": self.tactic, "messages": list(self.messages)})

    @staticmethod
    def from_json(text: str) -> "DeclOutcome":
        obj = json.loads(text)
        return DeclOutcome(obj["status"], obj.get("tactic"), tuple(obj.get("messages", ())))


def _first_line(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outcome_from_messages(kind: DeclKind, messages: Sequence[LeanMessage]) -> DeclOutcome | None:
    """The outcome of one declaration from its messages; None when Lean said nothing about it
    (it was never reached: the process was killed or crashed before)."""
    errors = [m.data for m in messages if m.severity == "error"]
    if errors:
        if any(marker in e for e in errors for marker in _HEARTBEAT_MARKERS):
            return DeclOutcome("timeout", messages=tuple(_first_line(e) for e in errors))
        return DeclOutcome("failed", messages=tuple(_first_line(e) for e in errors))
    if kind == "check":
        sorries = [m for m in messages if m.severity == "warning" and SORRY_WARNING in m.data]
        if len(sorries) == 1:
            return DeclOutcome("ok")
        if sorries:
            return DeclOutcome("failed", messages=(f"{len(sorries)} 'sorry' warnings, expected exactly one",))
        return None
    traces = [m.data.strip()[len(TRACE_PREFIX) :] for m in messages if m.data.strip().startswith(TRACE_PREFIX)]
    if traces:
        return DeclOutcome("ok", tactic=traces[0])
    return None


def assign_messages(
    batch: BatchFile, messages: Iterable[LeanMessage]
) -> tuple[dict[str, list[LeanMessage]], list[LeanMessage]]:
    """Messages per declaration (by the line of their start position), and those outside every
    declaration (the ``import`` line: Mathlib missing, a broken project)."""
    per_decl: dict[str, list[LeanMessage]] = {name: [] for name in batch.ranges}
    outside: list[LeanMessage] = []
    ordered = sorted(batch.ranges.items(), key=lambda item: item[1][0])
    for message in messages:
        owner = next((name for name, (first, last) in ordered if first <= message.line <= last), None)
        if owner is None:
            outside.append(message)
        else:
            per_decl[owner].append(message)
    return per_decl, outside


# ---------------------------------------------------------------------------------------------
# Running lean


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


# Sets the memory limit in the child, then execs the command: a shim instead of preexec_fn,
# which is unsafe in a process with threads (Prefect task runners are threads).
_LIMIT_SHIM = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "for name in ('RLIMIT_DATA', 'RLIMIT_AS'):\n"
    "    which = getattr(resource, name, None)\n"
    "    if which is None or (name == 'RLIMIT_AS' and sys.argv[2] != 'as'):\n"
    "        continue\n"
    "    try:\n"
    "        resource.setrlimit(which, (limit, limit))\n"
    "    except (ValueError, OSError):\n"
    "        pass\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def run_limited(
    command: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    memory_mb: int,
    limit_address_space: bool = False,
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run ``command`` in its own process group with a wall-clock limit and a memory limit.

    The memory limit is RLIMIT_DATA (heap and private anonymous memory) of ``memory_mb``;
    RLIMIT_AS is set as well only when ``limit_address_space`` is true, because Lean maps the
    Mathlib ``.olean`` files (several GB of address space) into memory. On timeout the whole
    process group (``lake`` and the ``lean`` it started) is killed with SIGKILL.
    """
    limit = int(memory_mb) * 1024 * 1024
    argv = [sys.executable, "-c", _LIMIT_SHIM, str(limit), "as" if limit_address_space else "data", *command]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        timed_out = True
    # Children that outlived a normally exiting parent must not linger either.
    _kill_group(proc.pid)
    return ProcessResult(
        returncode=proc.returncode,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        seconds=time.monotonic() - started,
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# Cache


class LeanCache:
    """Outcomes by (Lean environment, declaration text): a rerun does not recompile them.

    ``path`` None keeps the cache in memory for the life of the object; otherwise an sqlite file
    (safe for several processes). Process timeouts and crashes are never stored: they say
    something about the machine, not the statement.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
            with self._db:
                try:  # several build processes may share the cache; not every filesystem has WAL
                    self._db.execute("PRAGMA journal_mode=WAL")
                except sqlite3.DatabaseError:
                    pass
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS lean_outcomes "
                    "(key TEXT PRIMARY KEY, outcome TEXT NOT NULL, created REAL NOT NULL)"
                )

    @staticmethod
    def entry_key(environment: str, decl: Declaration) -> str:
        return hashlib.blake2b(f"{environment}\x1f{decl.text}".encode(), digest_size=20).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, DeclOutcome]:
        with self._lock:
            if self._db is None:
                return {k: DeclOutcome.from_json(self._memory[k]) for k in keys if k in self._memory}
            found: dict[str, DeclOutcome] = {}
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, outcome in self._db.execute(
                    f"SELECT key, outcome FROM lean_outcomes WHERE key IN ({marks})", chunk
                ):
                    found[key] = DeclOutcome.from_json(outcome)
            return found

    def put_many(self, items: Mapping[str, DeclOutcome]) -> None:
        storable = {k: v for k, v in items.items() if v.status in ("ok", "failed", "timeout")}
        if not storable:
            return
        with self._lock:
            if self._db is None:
                self._memory.update({k: v.to_json() for k, v in storable.items()})
                return
            now = time.time()
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO lean_outcomes (key, outcome, created) VALUES (?, ?, ?)",
                    [(k, v.to_json(), now) for k, v in storable.items()],
                )

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return len(self._memory)
            return int(self._db.execute("SELECT COUNT(*) FROM lean_outcomes").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def environment_key(project: Path) -> str:
    """What makes an outcome valid: the Lean toolchain and the locked package versions."""
    hasher = hashlib.blake2b(digest_size=16)
    for name in ("lean-toolchain", "lake-manifest.json"):
        path = project / name
        hasher.update(name.encode())
        hasher.update(path.read_bytes() if path.is_file() else b"<missing>")
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------
# The batch checker

RunFile = Callable[[Path, float], ProcessResult]


@dataclass
class BatchStats:
    """What the checker did, for logs and benchmarks."""

    lean_runs: int = 0
    declarations_compiled: int = 0
    cache_hits: int = 0
    reruns: int = 0
    lean_seconds: float = 0.0
    timeouts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class BatchChecker:
    """Compiles declarations in batches inside a Lake project; see the module doc.

    ``run_file(path, timeout_s)`` runs Lean on one file; the default runs
    ``lake env lean --json PATH`` in the project with the memory limit.
    """

    def __init__(
        self,
        project: Path,
        *,
        lake: str = "lake",
        batch_size: int = 64,
        batch_timeout_s: float = 300.0,
        statement_timeout_s: float = 60.0,
        memory_mb: int = 8192,
        cache: LeanCache | None = None,
        run_file: RunFile | None = None,
    ) -> None:
        self.project = project
        self.lake = lake
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.memory_mb = memory_mb
        self.cache = cache if cache is not None else LeanCache(None)
        self.environment = environment_key(project)
        self._run_file = run_file or self._run_lake
        self.stats = BatchStats()
        # Set when Lean itself is unusable (Mathlib missing, lake failing): every later
        # declaration gets "unavailable" without another run.
        self.unavailable_reason: str | None = None

    def _run_lake(self, path: Path, timeout_s: float) -> ProcessResult:
        return run_limited(
            [self.lake, "env", "lean", "--json", str(path)],
            cwd=self.project,
            timeout_s=timeout_s,
            memory_mb=self.memory_mb,
        )

    def check(self, declarations: Sequence[Declaration]) -> dict[str, DeclOutcome]:
        """Outcome of every declaration, by name (duplicates by name are checked once)."""
        unique: dict[str, Declaration] = {}
        for decl in declarations:
            unique.setdefault(decl.name, decl)
        keys = {name: LeanCache.entry_key(self.environment, d) for name, d in unique.items()}
        cached = self.cache.get_many(list(keys.values()))
        results: dict[str, DeclOutcome] = {}
        pending: list[Declaration] = []
        for name, decl in unique.items():
            hit = cached.get(keys[name])
            if hit is not None:
                results[name] = hit
                self.stats.cache_hits += 1
            else:
                pending.append(decl)
        queue = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        while queue:
            group = queue.pop(0)
            if self.unavailable_reason is not None:
                for decl in group:
                    results[decl.name] = DeclOutcome("unavailable", messages=(self.unavailable_reason,))
                continue
            try:
                determined, undetermined, process = self._run_group(group)
            except OSError as exc:  # the project is not writable, lake cannot be started, ...
                self.unavailable_reason = f"cannot run lean in {self.project}: {exc}"
                log.warning("Lean verification unavailable: %s", self.unavailable_reason)
                queue.insert(0, group)
                continue
            results.update(determined)
            self.cache.put_many({keys[n]: o for n, o in determined.items() if n in keys})
            if not undetermined:
                continue
            if len(group) == 1:
                decl = group[0]
                if process is not None and process.timed_out:
                    results[decl.name] = DeclOutcome(
                        "timeout", messages=(f"lean ran past {self._timeout_for(group):g} s",)
                    )
                    self.stats.timeouts.append(decl.name)
                else:
                    results[decl.name] = DeclOutcome("crashed", messages=(_process_summary(process),))
                continue
            self.stats.reruns += 1
            timed_out = process is not None and process.timed_out
            if timed_out or len(undetermined) < len(group):
                # Lean reports declarations in file order as it finishes them: the first silent
                # one is the likely culprit; it runs alone, the rest together again.
                queue[0:0] = [undetermined[:1], undetermined[1:]] if len(undetermined) > 1 else [undetermined]
            else:
                half = len(undetermined) // 2
                queue[0:0] = [undetermined[:half], undetermined[half:]]
        return results

    def _timeout_for(self, group: Sequence[Declaration]) -> float:
        return self.statement_timeout_s if len(group) == 1 else self.batch_timeout_s

    def _run_group(
        self, group: Sequence[Declaration]
    ) -> tuple[dict[str, DeclOutcome], list[Declaration], ProcessResult | None]:
        batch = render_batch(group)
        workdir = self.project / ".lake" / "prmforge"
        workdir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="Batch", suffix=".lean", dir=workdir)
        path = Path(name)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(batch.text)
            process = self._run_file(path, self._timeout_for(group))
        finally:
            path.unlink(missing_ok=True)
        self.stats.lean_runs += 1
        self.stats.declarations_compiled += len(group)
        self.stats.lean_seconds += process.seconds
        messages, _ = parse_lean_json(process.stdout)
        per_decl, outside = assign_messages(batch, messages)
        header_errors = [m for m in outside if m.severity == "error"]
        if header_errors:
            # The import failed: Lean or Mathlib is unusable here, for every statement.
            self.unavailable_reason = "lean could not import Mathlib: " + _first_line(header_errors[0].data)
            log.warning("Lean verification unavailable: %s", self.unavailable_reason)
            return {d.name: DeclOutcome("unavailable", messages=(self.unavailable_reason,)) for d in group}, [], process
        if not messages and not process.timed_out and process.returncode not in (0, 1):
            if _looks_unavailable(process):
                self.unavailable_reason = _process_summary(process)
                log.warning("Lean verification unavailable: %s", self.unavailable_reason)
                return (
                    {d.name: DeclOutcome("unavailable", messages=(self.unavailable_reason,)) for d in group},
                    [],
                    process,
                )
        determined: dict[str, DeclOutcome] = {}
        undetermined: list[Declaration] = []
        for decl in group:
            outcome = outcome_from_messages(decl.kind, per_decl[decl.name])
            if outcome is None and len(group) == 1 and _finished_normally(process):
                # Lean finished a file holding only this declaration and said nothing about it.
                outcome = _silent_outcome(decl.kind)
            if outcome is None:
                # In a batch, silence after a normal finish can mean a neighbour's syntax error
                # swallowed the declaration: it is checked again without that neighbour.
                undetermined.append(decl)
            else:
                determined[decl.name] = outcome
        return determined, undetermined, process


def _finished_normally(process: ProcessResult) -> bool:
    return not process.timed_out and process.returncode in (0, 1)


def _silent_outcome(kind: DeclKind) -> DeclOutcome:
    if kind == "check":
        return DeclOutcome("failed", messages=("no 'sorry' warning: the statement was not elaborated as written",))
    return DeclOutcome("failed", messages=("no tactic reported closing the goal",))


def _looks_unavailable(process: ProcessResult) -> bool:
    text = (process.stderr + process.stdout).lower()
    return any(
        marker in text for marker in ("unknown package", "no such file", "not found", "lakefile", "unknown executable")
    )


def _process_summary(process: ProcessResult | None) -> str:
    if process is None:
        return "lean did not run"
    tail = (process.stderr.strip() or process.stdout.strip())[-300:]
    return f"lean exited with code {process.returncode}" + (f": {tail}" if tail else "")
