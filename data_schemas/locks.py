"""Locks with fencing tokens and heartbeats, judged by the storage's clock (docs/storage.md, "Commit protocol").

A holder creates the lock file with a unique token. Local roots: the content is written to a
temporary file, fsynced and hard-linked onto the lock name — ``link`` fails when the name
exists, so creation is atomic and the file is never seen half written (``O_CREAT | O_EXCL``
where the filesystem has no hard links). Other filesystems (object stores through pyarrow or
fsspec) have no exclusive create: the lock is written, then read back after a settle time, and
the holder with its own token in the file wins (best effort; docs/storage.md).

While it holds the lock a :class:`Heartbeat` thread touches the file every ``heartbeat_s``
(only while the file is still its own), so the lock's mtime — stamped by the storage — says
when the holder was last alive. A waiter decides that a lock is stale from that heartbeat age
measured on the storage's clock: it writes a probe file next to the lock and compares the
probe's mtime with the lock's, both stamped by the same storage; no machine's wall clock is
compared with another's. Breaking checks the token: the stale file is moved aside under a name
only this breaker uses and deleted only when it carries the token that was judged stale
(otherwise it is linked back). Planning, compaction: as long as the holder heartbeats, it may
take as long as it takes.

Fencing: before it publishes what the lock protects, a holder calls :meth:`FencedLock.check`,
which raises :class:`LockLost` when the lock file is no longer its own (it was broken while the
holder stalled past ``stale_s``). The moment between that check and the publish is not closed —
no filesystem here compares a token on write — and is stated in docs/storage.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from data_schemas.errors import PrmforgeError
from data_schemas.shards import DataRoot, fsync_directory, resolve_root, write_bytes_atomic, write_bytes_exclusive

LOG = logging.getLogger("prmforge.locks")


class LockLost(PrmforgeError):
    """The lock this run held was broken by another run (it stalled past the stale time)."""


def storage_now(root: DataRoot, directory: str) -> float | None:
    """The storage's current time (epoch s): the mtime of a probe file written now in ``directory``.

    ``directory`` is a path inside ``root.filesystem``. None when the filesystem keeps no mtimes.
    """
    fs = root.filesystem
    probe = f"{directory}/.clock-{uuid.uuid4().hex}"
    try:
        fs.create_dir(directory, recursive=True)
        with fs.open_output_stream(probe) as stream:
            stream.write(b"")
        info = fs.get_file_info(probe)
        return info.mtime.timestamp() if info.mtime is not None else None
    finally:
        try:
            fs.delete_file(probe)
        except (FileNotFoundError, OSError):
            pass


class Heartbeat:
    """Calls ``beat()`` every ``interval_s`` seconds from a daemon thread until :meth:`stop`.

    Whatever a beat raises — OSError, a ValueError from a library, a bug — is logged as a warning
    and counted (``failures``, ``last_error``) and the thread keeps beating: a heartbeat that
    died silently would let a lease or lock expire under a run that is still working. A beat
    that returns False ends the heartbeat (the lock was lost: nothing left to renew).
    """

    def __init__(self, name: str, beat: Callable[[], bool | None], interval_s: float) -> None:
        self.name, self.interval_s = name, interval_s
        self._beat = beat
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._beat() is False:
                    return
            except Exception as error:  # noqa: BLE001 - any failure of one beat; the next beat retries
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                LOG.warning(
                    "%s: heartbeat failed (%s); retrying in %.3g s", self.name, self.last_error, self.interval_s
                )

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


@dataclass(frozen=True)
class _Holder:
    token: str | None
    mtime: float | None


class FencedLock:
    """An exclusive lock at ``path`` (relative to the root) with a token, a heartbeat and fencing.

    ``stale_s``: a lock whose heartbeat is older than this on the storage's clock is broken.
    ``heartbeat_s``: how often the holder touches it (at most ``stale_s / 4``). ``timeout_s``:
    how long to wait for a live holder before a one-line error.
    """

    def __init__(
        self,
        root: str | DataRoot,
        path: str,
        timeout_s: float,
        stale_s: float,
        heartbeat_s: float,
        what: str = "lock",
    ) -> None:
        self.root = resolve_root(root)
        self.path = path
        self.full = self.root.join(path)
        self.directory = self.full.rsplit("/", 1)[0]
        self.timeout_s, self.stale_s = timeout_s, stale_s
        self.heartbeat_s = min(heartbeat_s, stale_s / 4)
        self.what = what
        self.token = uuid.uuid4().hex
        self._inode: int | None = None
        self._heartbeat: Heartbeat | None = None
        self._lost = False

    # -- reading -------------------------------------------------------------------------------

    def _payload(self) -> bytes:
        return json.dumps({"token": self.token, "pid": os.getpid(), "host": socket.gethostname()}).encode()

    def _read_token(self, full: str) -> str | None:
        try:
            with self.root.filesystem.open_input_stream(full) as stream:
                return json.loads(stream.read().decode()).get("token")
        except (FileNotFoundError, OSError, ValueError, AttributeError):
            return None

    def _holder(self) -> _Holder | None:
        info = self.root.filesystem.get_file_info(self.full)
        if info.type != pafs.FileType.File:
            return None
        mtime = info.mtime.timestamp() if info.mtime is not None else None
        return _Holder(self._read_token(self.full), mtime)

    # -- acquiring -----------------------------------------------------------------------------

    def _try_acquire(self) -> bool:
        if self.root.is_local:
            if not write_bytes_exclusive(self.root, self.path, self._payload()):
                return False
            self._inode = os.stat(self.full).st_ino
            return True
        if self.root.filesystem.get_file_info(self.full).type != pafs.FileType.NotFound:
            return False
        write_bytes_atomic(self.root, self.path, self._payload())
        time.sleep(0.2)  # a racing writer's object replaces ours within this settle time, or we win
        return self._read_token(self.full) == self.token

    def _break_if_stale(self) -> None:
        holder = self._holder()
        if holder is None or holder.mtime is None:
            return
        now = storage_now(self.root, self.directory)
        if now is None or now - holder.mtime <= self.stale_s:
            return
        age = now - holder.mtime
        if self.root.is_local:
            aside = f"{self.full}.broken-{self.token}"
            try:
                os.rename(self.full, aside)
            except FileNotFoundError:
                return
            if self._read_token(aside) != holder.token:  # a fresh lock was taken meanwhile: put it back
                try:
                    os.link(aside, self.full)
                except FileExistsError:
                    pass
                os.unlink(aside)
                return
            os.unlink(aside)
        else:
            if self._read_token(self.full) != holder.token:
                return
            try:
                self.root.filesystem.delete_file(self.full)
            except (FileNotFoundError, OSError):
                return
        LOG.warning(
            "broke stale %s %s: no heartbeat for %.1f s on the storage's clock (limit %g s)",
            self.what, self.full, age, self.stale_s,
        )

    def acquire(self) -> FencedLock:
        deadline = time.monotonic() + self.timeout_s
        check_every = max(0.05, min(1.0, self.stale_s / 4))
        next_check = 0.0
        while not self._try_acquire():
            now = time.monotonic()
            if now >= next_check:
                self._break_if_stale()
                next_check = now + check_every
                continue
            if now > deadline:
                raise PrmforgeError(
                    f"{self.what} {self.full} held for over {self.timeout_s:g} s by another run (its heartbeat is "
                    f"fresh); delete the file only if no prmforge run is using it"
                )
            time.sleep(0.05)
        self._lost = False
        self._heartbeat = Heartbeat(f"{self.what} {self.path}", self._beat, self.heartbeat_s).start()
        return self

    # -- holding -------------------------------------------------------------------------------

    def _still_mine(self) -> bool:
        if self.root.is_local:
            try:
                if os.stat(self.full).st_ino != self._inode:
                    return False
            except FileNotFoundError:
                return False
        return self._read_token(self.full) == self.token

    def _beat(self) -> bool:
        """Refresh the lock's mtime while it is ours; False (ends the heartbeat) when it was broken."""
        if self.root.is_local:
            try:
                descriptor = os.open(self.full, os.O_RDONLY)
            except FileNotFoundError:
                self._lost = True
                return False
            try:
                if os.fstat(descriptor).st_ino != self._inode:
                    self._lost = True
                    return False
                os.utime(descriptor)  # that inode only: never touches a lock another run took since
            finally:
                os.close(descriptor)
            return True
        if self._read_token(self.full) != self.token:
            self._lost = True
            return False
        write_bytes_atomic(self.root, self.path, self._payload())
        return True

    def check(self) -> None:
        """Raise :class:`LockLost` unless this run still holds the lock (call before publishing)."""
        if self._lost or not self._still_mine():
            self._lost = True
            raise LockLost(
                f"{self.what} {self.full} was taken over by another run while this one held it "
                f"(no heartbeat for over {self.stale_s:g} s); nothing was published"
            )

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._lost or not self._still_mine():
            return
        if self.root.is_local:
            os.unlink(self.full)
            fsync_directory(self.directory)
            return
        try:
            self.root.filesystem.delete_file(self.full)
        except (FileNotFoundError, OSError):
            pass

    def __enter__(self) -> FencedLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
