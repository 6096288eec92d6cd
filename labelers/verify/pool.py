"""A pool of worker processes that check claims with sympy under per-claim time limits.

Claims that the exact fast path in :mod:`labelers.verify.tool` cannot settle (radicals, ``pi``,
symbols, results too large to compute safely in the build process) are sent here in chunks. Each
worker is a separate ``spawn``-ed process with an address-space limit (``RLIMIT_AS``); the parent
gives every claim ``claim_timeout_s`` of wall time and, when a claim overruns, kills that worker,
records the claim as ``timeout``, starts a replacement and hands the rest of the chunk to the
next free worker. A worker that dies (memory, crash) is handled the same way. Workers start on
first use and live until :meth:`ClaimPool.close`.

Workers receive parsed expression trees (tuples built by :mod:`labelers.verify.claims` from a
token whitelist), never source text, so nothing is ``eval``-ed.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

# A worker has this long to import sympy and report ready before it counts as failed.
WORKER_START_TIMEOUT_S = 120.0


def _worker_main(conn: Connection, memory_mb: int) -> None:
    """Worker loop: receive chunks of (task_id, task), send (task_id, result) per claim."""
    import resource

    from labelers.verify.tool import check_claim_sympy  # imports sympy once per worker

    check_claim_sympy(("num", "1"), ("num", "1"), "=", False, 0.0, ())  # warm up caches
    try:
        with open("/proc/self/status") as handle:
            vm_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        vm_kb = 0
    # The limit is headroom on top of what the interpreter and sympy already map.
    limit = (vm_kb * 1024) + memory_mb * 1024 * 1024
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    conn.send(("ready", None))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for task_id, task in chunk:
            try:
                result = check_claim_sympy(*task)
            except MemoryError:
                result = {"holds": None, "reason": "memory limit reached while evaluating"}
            except RecursionError:
                result = {"holds": None, "reason": "expression too deep to evaluate"}
            except Exception as exc:  # sympy raises many types on odd input; each is a reason
                result = {"holds": None, "reason": f"sympy failed: {type(exc).__name__}: {exc}"[:300]}
            conn.send((task_id, result))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    started: float
    ready: bool = False
    chunk: deque = field(default_factory=deque)  # task ids still to finish, in order
    deadline: float = 0.0


class ClaimPool:
    """Process pool for sympy claim checks (see the module doc)."""

    def __init__(self, workers: int, claim_timeout_s: float, memory_mb: int, chunk_size: int = 16) -> None:
        self.max_workers = max(1, workers)
        self.claim_timeout_s = claim_timeout_s
        self.memory_mb = memory_mb
        self.chunk_size = max(1, chunk_size)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self.workers_replaced = 0
        # One batch at a time: callers on several threads share the workers, not the bookkeeping.
        self._lock = threading.Lock()

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child_conn, self.memory_mb), daemon=True, name="prmforge-claim-worker"
        )
        process.start()
        child_conn.close()
        worker = _Worker(process=process, conn=parent_conn, started=time.monotonic())
        self._workers.append(worker)
        return worker

    def _kill(self, worker: _Worker) -> None:
        try:
            worker.process.kill()
            worker.process.join(timeout=5)
        except (OSError, ValueError):
            pass
        worker.conn.close()
        self._workers.remove(worker)

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
                    worker.conn.send([(i, tasks[i]) for i in ids])
            waiting = [w for w in self._workers if not w.ready or w.chunk]
            if not waiting:
                # Every worker idle yet work remains: start one (all were killed and not replaced).
                self._start_worker()
                continue
            deadlines = [w.deadline if w.ready else w.started + WORKER_START_TIMEOUT_S for w in waiting]
            timeout = max(0.0, min(deadlines) - time.monotonic())
            ready_conns = wait([w.conn for w in waiting], timeout=timeout)
            for worker in [w for w in waiting if w.conn in ready_conns]:
                try:
                    kind, payload = worker.conn.recv()
                except (EOFError, OSError):
                    remaining -= self._worker_lost(worker, queue, results, "worker process died")
                    continue
                if kind == "ready":
                    worker.ready = True
                    continue
                task_id, result = kind, payload
                if worker.chunk and worker.chunk[0] == task_id:
                    worker.chunk.popleft()
                    results[task_id] = result
                    remaining -= 1
                    worker.deadline = time.monotonic() + self.claim_timeout_s
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.ready and worker.chunk and now > worker.deadline:
                    reason = f"timed out after {self.claim_timeout_s:g} s (worker killed and replaced)"
                    remaining -= self._worker_lost(worker, queue, results, reason, timeout=True)
                elif not worker.ready and now > worker.started + WORKER_START_TIMEOUT_S:
                    self._kill(worker)
                    raise RuntimeError("a claim-checking worker did not start")
        return [r if r is not None else {"holds": None, "reason": "not checked"} for r in results]

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
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in list(self._workers):
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self._workers.clear()

    @property
    def live_workers(self) -> int:
        return len(self._workers)
