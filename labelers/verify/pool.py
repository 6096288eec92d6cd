"""A pool of worker processes that check claims with sympy under per-claim time limits.

Claims that the exact fast path in :mod:`labelers.verify.tool` cannot settle (radicals, ``pi``,
symbols, results too large to compute safely in the build process) are sent here in chunks. Each
worker is a separate interpreter running :func:`labelers.verify.symbolic.serve` with an
address-space limit (``RLIMIT_AS``); tasks and results travel as JSON lines over its stdin and
stdout (no pickle: the parent never deserializes objects from a worker). The parent gives every
claim ``claim_timeout_s`` of wall time and, when a claim overruns, kills that worker, records the
claim as ``timeout``, starts a replacement and hands the rest of the chunk to the next free
worker. A worker that dies (memory, crash) is handled the same way. Workers start on first use
and live until :meth:`ClaimPool.close`.

Workers receive parsed expression trees (tuples built by :mod:`labelers.verify.claims` from a
token whitelist), never source text, so nothing is ``eval``-ed. As defence in depth, with
``isolation="bubblewrap"`` (or ``"auto"`` where bwrap starts) each worker runs in the same kernel
sandbox as model-written code (:mod:`labelers.verify.sandbox`): no host files but the
interpreter, the ``labelers`` package and site-packages (read-only), no network, no environment,
no process creation. ``isolation="process"`` runs plain worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from labelers.verify import sandbox

# A worker has this long to import sympy and report ready before it counts as failed.
WORKER_START_TIMEOUT_S = 120.0
# A result line longer than this ends the worker (results are a few hundred bytes).
MAX_LINE_BYTES = 1 << 20
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from labelers.verify.symbolic import serve; serve(int(sys.argv[2]))"
)
POOL_ISOLATION = ("auto", "bubblewrap", "process")


@dataclass(eq=False)  # compared and hashed by identity
class _Worker:
    process: subprocess.Popen
    started: float
    ready: bool = False
    chunk: deque = field(default_factory=deque)  # task ids still to finish, in order
    deadline: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False

    @property
    def fd(self) -> int:
        assert self.process.stdout is not None
        return self.process.stdout.fileno()


class ClaimPool:
    """Process pool for sympy claim checks (see the module doc)."""

    def __init__(
        self, workers: int, claim_timeout_s: float, memory_mb: int, chunk_size: int = 16, isolation: str = "auto"
    ) -> None:
        if isolation not in POOL_ISOLATION:
            raise ValueError(f"isolation must be one of {', '.join(POOL_ISOLATION)}, not {isolation!r}")
        self.max_workers = max(1, workers)
        self.claim_timeout_s = claim_timeout_s
        self.memory_mb = memory_mb
        self.chunk_size = max(1, chunk_size)
        self.isolation = isolation  # "auto" becomes "bubblewrap" or "process" at the first start
        self.isolation_reason = ""
        self._bwrap: str | None = None
        self._workers: list[_Worker] = []
        self.workers_replaced = 0
        # One batch at a time: callers on several threads share the workers, not the bookkeeping.
        self._lock = threading.Lock()

    # -- starting and stopping workers ------------------------------------------------------

    def _resolve_isolation(self) -> None:
        if self.isolation == "process":
            return
        support = sandbox.probe_isolation()
        if support.available:
            self.isolation, self._bwrap = "bubblewrap", support.bwrap
        elif self.isolation == "bubblewrap":
            raise RuntimeError(f"claim workers cannot start in the sandbox: {support.reason}")
        else:
            # The claim path evaluates parsed trees only (module doc); it runs unsandboxed here.
            self.isolation, self.isolation_reason = "process", support.reason
            logging.getLogger("prmforge.tool").warning(
                "sympy claim workers run without the sandbox (they evaluate parsed trees only): %s", support.reason
            )

    def _command(self) -> tuple[list[str], tuple[int, ...], int | None]:
        """Worker argv, descriptors to keep open in it, and the seccomp pipe to close after start."""
        import labelers

        code_dir = os.path.realpath(os.path.dirname(labelers.__file__))
        site_dirs = list(dict.fromkeys(
            os.path.realpath(p) for p in (sysconfig.get_paths().get(k) for k in ("purelib", "platlib")) if p
        ))
        args = [str(self.memory_mb)]
        if self.isolation != "bubblewrap":
            paths = [os.path.dirname(code_dir)] + site_dirs
            return [sys.executable, "-I", "-S", "-c", _BOOT, json.dumps(paths)] + args, (), None
        assert self._bwrap is not None
        program = sandbox.seccomp_filter()
        assert program is not None
        filter_read, filter_write = os.pipe()
        os.write(filter_write, program)
        os.close(filter_write)
        binds = [(code_dir, "/opt/prmforge-code/labelers")]
        binds += [(path, f"/opt/prmforge-site/{i}") for i, path in enumerate(site_dirs)]
        prefix, python = sandbox.bwrap_command(self._bwrap, filter_read, tuple(binds))
        paths = ["/opt/prmforge-code"] + [f"/opt/prmforge-site/{i}" for i in range(len(site_dirs))]
        return prefix + [python, "-I", "-S", "-c", _BOOT, json.dumps(paths)] + args, (filter_read,), filter_read

    def _start_worker(self) -> _Worker:
        if self.isolation == "auto" or (self.isolation == "bubblewrap" and self._bwrap is None):
            self._resolve_isolation()
        argv, keep, to_close = self._command()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={} if self.isolation == "bubblewrap" else {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                pass_fds=keep,
            )
        finally:
            if to_close is not None:
                os.close(to_close)
        worker = _Worker(process=process, started=time.monotonic())
        self._workers.append(worker)
        return worker

    def _kill(self, worker: _Worker) -> None:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)  # bwrap: the whole PID namespace goes with it
        except (ProcessLookupError, PermissionError):
            pass
        worker.process.wait()
        for stream in (worker.process.stdin, worker.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._workers.remove(worker)

    @staticmethod
    def _send(worker: _Worker, payload: Any) -> None:
        assert worker.process.stdin is not None
        worker.process.stdin.write(json.dumps(payload).encode() + b"\n")
        worker.process.stdin.flush()

    @staticmethod
    def _lines(worker: _Worker) -> list[Any]:
        """Complete messages read from a readable worker; marks the worker closed at EOF."""
        data = os.read(worker.fd, 65536)
        if not data:
            worker.closed = True
            return []
        worker.buffer += data
        messages = []
        while b"\n" in worker.buffer:
            line, _, rest = bytes(worker.buffer).partition(b"\n")
            worker.buffer = bytearray(rest)
            try:
                messages.append(json.loads(line))
            except ValueError:
                worker.closed = True  # not our protocol: treat as a dead worker
                return messages
        if len(worker.buffer) > MAX_LINE_BYTES:
            worker.closed = True
        return messages

    # -- running tasks ------------------------------------------------------------------------

    def run(self, tasks: list[tuple]) -> list[dict]:
        """Results aligned with ``tasks``; each task is ``check_claim_sympy``'s arguments."""
        if not tasks:
            return []
        with self._lock:
            return self._run(tasks)

    def _run(self, tasks: list[tuple]) -> list[dict]:
        results: list[dict | None] = [None] * len(tasks)
        queue: deque[list[int]] = deque(
            list(range(i, min(i + self.chunk_size, len(tasks)))) for i in range(0, len(tasks), self.chunk_size)
        )
        wanted = min(self.max_workers, len(queue))
        while len(self._workers) < wanted:
            self._start_worker()
        remaining = len(tasks)
        while remaining:
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.ready and not worker.chunk and queue:
                    ids = queue.popleft()
                    worker.chunk = deque(ids)
                    worker.deadline = now + self.claim_timeout_s
                    try:
                        self._send(worker, [[i, tasks[i]] for i in ids])
                    except (BrokenPipeError, OSError):
                        worker.closed = True
            waiting = [w for w in self._workers if not w.ready or w.chunk]
            if not waiting:
                # Every worker idle yet work remains: start one (all were killed and not replaced).
                self._start_worker()
                continue
            deadlines = [w.deadline if w.ready else w.started + WORKER_START_TIMEOUT_S for w in waiting]
            timeout = max(0.0, min(deadlines) - time.monotonic())
            readable = self._readable(waiting, timeout)
            for worker in waiting:
                if worker in readable and not worker.closed:
                    for message in self._lines(worker):
                        if message == "ready":
                            worker.ready = True
                            continue
                        task_id, result = message
                        if worker.chunk and worker.chunk[0] == task_id and isinstance(result, dict):
                            worker.chunk.popleft()
                            results[task_id] = result
                            remaining -= 1
                            worker.deadline = time.monotonic() + self.claim_timeout_s
                if worker.closed:
                    if not worker.ready:
                        self._kill(worker)
                        raise RuntimeError("a claim-checking worker exited before it was ready")
                    remaining -= self._worker_lost(worker, queue, results, "worker process died")
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.ready and worker.chunk and now > worker.deadline:
                    reason = f"timed out after {self.claim_timeout_s:g} s (worker killed and replaced)"
                    remaining -= self._worker_lost(worker, queue, results, reason, timeout=True)
                elif not worker.ready and now > worker.started + WORKER_START_TIMEOUT_S:
                    self._kill(worker)
                    raise RuntimeError("a claim-checking worker did not start")
        return [r if r is not None else {"holds": None, "reason": "not checked"} for r in results]

    @staticmethod
    def _readable(workers: list[_Worker], timeout: float) -> set:
        with selectors.DefaultSelector() as selector:
            for worker in workers:
                selector.register(worker.fd, selectors.EVENT_READ, worker)
            return {key.data for key, _ in selector.select(timeout=timeout)}

    def _worker_lost(
        self, worker: _Worker, queue: deque, results: list, reason: str, timeout: bool = False
    ) -> int:
        """Record the running claim as failed, requeue the rest of its chunk, replace the worker."""
        done = 0
        if worker.chunk:
            current = worker.chunk.popleft()
            results[current] = {"holds": None, "reason": reason, "timeout": timeout}
            done = 1
            if worker.chunk:
                queue.appendleft(list(worker.chunk))
        self._kill(worker)
        self.workers_replaced += 1
        if queue:
            self._start_worker()
        return done

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for worker in list(self._workers):
            try:
                assert worker.process.stdin is not None
                worker.process.stdin.write(b"\n")
                worker.process.stdin.close()
            except (OSError, ValueError):
                pass
        for worker in list(self._workers):
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self._kill(worker)
        self._workers.clear()

    @property
    def live_workers(self) -> int:
        return len(self._workers)
