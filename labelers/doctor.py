"""``prmforge doctor``: which optional parts of prmforge work on this machine.

Each part declares its check (labelers/diagnostics.py: name, required distributions, install
hint, a cheap function for the rest): the policy backends and the Lean verifier in their own
modules, the parts without a module of their own (dependencies, answer checking, training, task
runners) here. :data:`REGISTERED_CHECKS` lists them all, explicitly: adding a backend = declaring
its ``DOCTOR_CHECK`` and adding it to this tuple. The checks read package metadata, ``PATH`` and
``nvidia-smi``; they import no optional package (no torch, no vllm, no llama_cpp, no model part
package) and load no model.
"""

from __future__ import annotations

from collections.abc import Callable

from labelers.diagnostics import DoctorCheck, DoctorItem, installed_version
from labelers.policy import embedded, vllm_backend
from labelers.verify import lean, sandbox

CORE_PACKAGES = (
    "prefect",
    "sympy",
    "pyarrow",
    "duckdb",
    "math-verify",
    "pydantic",
    "typer",
    "rich",
    "httpx",
    "fsspec",
    "matplotlib",
)
# Optional parts and the distributions each needs (importlib.metadata names).
SCALE_OUT_PACKAGES = {
    "Dask task runner": ("dask", "distributed", "prefect-dask"),
    "Ray task runner": ("ray", "prefect-ray"),
}
TRAIN_PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets")
ANSWER_HINT = "pip install 'math-verify[antlr4_11_0]'"
TRAIN_HINT = "pip install 'prmforge[train]' (trl==1.13.0: later releases have no PRMTrainer)"


def _version(distribution: str) -> str | None:
    return installed_version(distribution)


def check_core_packages() -> DoctorItem:
    versions = {name: _version(name) for name in CORE_PACKAGES}
    missing = [name for name, version in versions.items() if version is None]
    found = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    if missing:
        detail = f"missing: {', '.join(missing)}; found: {found}"
        return DoctorItem("Python dependencies", False, detail, "pip install prmforge")
    return DoctorItem("Python dependencies", True, found)


def check_answer_checking() -> DoctorItem:
    """Runs one symbolic comparison through the math-verify worker process."""
    from labelers.answers import answers_equal

    started = answers_equal("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", timeout_s=30.0)
    rejected = not answers_equal("\\sqrt{3}", "\\sqrt{2}", timeout_s=30.0)
    if started and rejected:
        return DoctorItem("answer checking", True, f"math-verify {_version('math-verify')} in a worker process")
    return DoctorItem("answer checking", False, "math-verify gave a wrong verdict on a known pair", ANSWER_HINT)


def check_scale_out(name: str, distributions: tuple[str, ...]) -> DoctorItem:
    versions = {dist: _version(dist) for dist in distributions}
    missing = [dist for dist, version in versions.items() if version is None]
    detail = ", ".join(f"{dist} {version or 'missing'}" for dist, version in versions.items())
    extra = "dask" if "dask" in distributions else "ray"
    return DoctorItem(name, not missing, detail, f"pip install 'prmforge[{extra}]'" if missing else None)


def check_training() -> DoctorItem:
    """``prmforge train`` needs the [train] extra and exactly trl 1.13.0 (PRMTrainer)."""
    versions = {dist: _version(dist) for dist in TRAIN_PACKAGES}
    missing = [dist for dist, version in versions.items() if version is None]
    detail = ", ".join(f"{dist} {version or 'missing'}" for dist, version in versions.items())
    wrong_trl = versions["trl"] is not None and versions["trl"] != "1.13.0"
    hint = TRAIN_HINT if (missing or wrong_trl) else None
    return DoctorItem("PRM training", not missing and not wrong_trl, detail, hint)


def _scale_out(name: str, distributions: tuple[str, ...]) -> DoctorCheck:
    run: Callable[[], DoctorItem] = lambda: check_scale_out(name, distributions)  # noqa: E731
    return DoctorCheck(name, run)


# Every part doctor reports, in the order shown. The task runners and training report their
# missing distributions themselves (with versions of the rest), so they declare no requirement.
REGISTERED_CHECKS: tuple[DoctorCheck, ...] = (
    DoctorCheck("Python dependencies", check_core_packages),
    DoctorCheck("answer checking", check_answer_checking, requires=("math-verify",), install_hint=ANSWER_HINT),
    embedded.DOCTOR_CHECK,
    vllm_backend.DOCTOR_CHECK,
    lean.DOCTOR_CHECK,
    sandbox.DOCTOR_CHECK,
    DoctorCheck("PRM training", check_training),
    *(_scale_out(name, dists) for name, dists in SCALE_OUT_PACKAGES.items()),
)


def run_checks(checks: tuple[DoctorCheck, ...] = REGISTERED_CHECKS) -> list[DoctorItem]:
    """One item per registered part; a check that fails unexpectedly is reported, not raised."""
    return [check.check() for check in checks]


__all__ = ["REGISTERED_CHECKS", "DoctorCheck", "DoctorItem", "run_checks"]  # DoctorItem: read by the CLI
