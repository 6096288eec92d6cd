"""Where the batch tasks run (Prefect task runners) and how Prefect is set up for the CLI.

Prefect reads its settings when it is first imported, so :func:`configure_prefect_environment`
must run before any ``import prefect``; this module therefore imports Prefect only inside
functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_schemas.errors import ConfigError
from labelers.config import FlowConfig


def default_prefect_home(data_root: str) -> Path:
    """``<data root>/.prefect`` for a local data root, ``~/.prmforge/prefect`` for a remote one."""
    if "://" in data_root and not data_root.startswith("file://"):
        return Path.home() / ".prmforge" / "prefect"
    local = data_root.removeprefix("file://")
    return Path(local).expanduser().resolve() / ".prefect"


def configure_prefect_environment(data_root: str, verbose: bool = False) -> dict[str, str]:
    """Set Prefect's environment for a CLI run; values the user set already are kept.

    Without ``PREFECT_API_URL`` Prefect runs in ephemeral mode: a temporary local API over a
    SQLite database under ``PREFECT_HOME``, no server to start. Analytics are off. Prefect's own
    INFO logging (flow/task run created/finished lines) is hidden unless ``verbose``: the
    build's progress display says the same more briefly. Returns what was set.
    """
    wanted = {
        "PREFECT_HOME": str(default_prefect_home(data_root)),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The temporary API server may take longer than Prefect's 20 s on a small, busy machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "INFO" if verbose else "WARNING",
    }
    applied = {}
    for name, value in wanted.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    if verbose:
        # A user-level WARNING set before would hide what --verbose asked for.
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    # The temporary server cannot start (it times out) when its home directory does not exist.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    return applied


def make_task_runner(flow_config: FlowConfig) -> Any:
    """The Prefect task runner for ``flow.task_runner``.

    threads: one process, ``max_workers`` threads sharing one model (default);
    processes: ``max_workers`` processes, one model each;
    dask: ``flow.dask_address`` or a LocalCluster of ``max_workers`` workers (prmforge[dask]);
    ray: ``flow.ray_address`` or a local Ray (prmforge[ray]).
    """
    kind = flow_config.task_runner
    workers = flow_config.max_workers
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError(
                "flow.task_runner = 'dask' needs the dask extra: pip install 'prmforge[dask]'"
            ) from None
        if flow_config.dask_address:
            return DaskTaskRunner(address=flow_config.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": flow_config.dask_processes,
                "dashboard_address": None,
            }
        )
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError(
                "flow.task_runner = 'ray' needs the ray extra: pip install 'prmforge[ray]'"
            ) from None
        return RayTaskRunner(address=flow_config.ray_address) if flow_config.ray_address else RayTaskRunner()
    raise ConfigError(f"config key flow.task_runner: unknown task runner {kind!r}")


class ParentBoundApiServer:
    """Prefect's temporary API server, started by prmforge so that it dies with the CLI process.

    Without ``PREFECT_API_URL`` Prefect starts a uvicorn subprocess on first use and stops it at
    interpreter exit (``atexit``). A build killed by a signal (a native crash, the OOM killer,
    SIGKILL) never reaches ``atexit``, and that server (about 250 MB) stayed behind with parent 1.
    This starts the same application the same way Prefect does (its ``create_app`` factory, the
    ephemeral settings, no UI) but asks the kernel (``PR_SET_PDEATHSIG``) to send the server
    SIGTERM when the thread that started it ends. Start it from the main thread, which lives as
    long as the process. The CLI then points ``PREFECT_API_URL`` at it before Prefect is imported.
    """

    STARTUP_TIMEOUT_S = 120.0  # the app runs its database migrations first; slow on a busy 2-core machine

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:  # a free port; a lost race shows as exit code 3 and a retry
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._process: Any = None

    def start(self) -> None:
        """Start the server process (returns at once; :meth:`wait_ready` waits for it)."""
        if self._process is None:
            self._process = self._spawn()

    def _spawn(self) -> Any:
        import subprocess
        import sys

        # The variables Prefect's own temporary server is started with (prefect.server.api.server).
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env = {**os.environ, **server_env}
        env.pop("PREFECT_API_URL", None)
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()),
        )

    def wait_ready(self) -> None:
        """Block until the API answers its health check; raise ConfigError if it never does."""
        import time

        import httpx

        self.start()
        deadline = time.monotonic() + self.STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise ConfigError(f"Prefect's temporary API server exited with code {code} before it answered")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"Prefect's temporary API server did not answer within {self.STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        import subprocess

        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _die_with_parent(parent_pid: int) -> Any:
    """A ``preexec_fn``: in the child, ask for SIGTERM when the parent thread dies (Linux)."""

    def arrange() -> None:
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: Prefect's atexit stop still applies
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arrange


def parent_bound_api_server() -> ParentBoundApiServer | None:
    """A :class:`ParentBoundApiServer` (not started yet) with ``PREFECT_API_URL`` pointed at it,
    or None when the user set ``PREFECT_API_URL`` (a real server). Call before importing Prefect,
    which reads its settings once; ``start`` it once inputs are checked."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = ParentBoundApiServer()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server
