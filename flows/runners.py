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
