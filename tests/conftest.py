"""Shared test setup: Prefect runs ephemeral in a private home, paths to the copied data sets."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set before any test module imports prefect: a throw-away home, no analytics, no server.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prmforge-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The temporary API server starts slowly on a busy 2-core CI machine (default wait: 20 s).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Prefect's INFO lines ("Stopping temporary server ...") are written at interpreter exit, after
# pytest closed its capture streams, and end as "Logging error" tracebacks.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: copies of the public data sets used by the tests."""
    return TEST_DATA


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    return TEST_DATA / "gsm8k_test.jsonl"


@pytest.fixture(scope="session")
def math500_path() -> Path:
    return TEST_DATA / "math500_test.jsonl"


@pytest.fixture(scope="session")
def kernel_sandbox() -> None:
    """Skips a test that runs model-written code where the bubblewrap sandbox cannot start
    (no user namespaces in a container, non-Linux): code checks are off there by design."""
    from labelers.verify.sandbox import probe_isolation

    support = probe_isolation()
    if not support.available:
        pytest.skip(f"the kernel sandbox cannot start here: {support.reason}")
