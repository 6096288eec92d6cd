"""From TOML file, preset and command-line overrides to one validated ``BuildConfig``.

Layering, later wins: defaults < preset < config file < common flags (``--problems``,
``--limit``, ...) < ``--set key=value`` overrides. Every mistake becomes one
:class:`ConfigError` line that names the file/line or the dotted config key at fault, never a
pydantic traceback.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_schemas.errors import ConfigError
from labelers.config import POLICY_MODELS, BuildConfig, fit_policy_keys

PRESET_PACKAGE = "flows.presets"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``flows/presets/*.toml``."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of a shipped preset; ConfigError naming the known presets otherwise."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return resources.files(PRESET_PACKAGE).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    """A TOML mapping; a syntax error names ``origin`` and the line (tomllib puts it in the message)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin}: invalid TOML: {error}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a TOML config file (ConfigError if missing or malformed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    return parse_toml(text, str(path))


def parse_override(assignment: str) -> tuple[str, Any]:
    """``"search.rounds=4"`` -> ``("search.rounds", 4)``.

    The value is read as a TOML value (numbers, booleans, quoted strings, arrays, inline tables);
    anything that is not valid TOML is taken as a plain string, so ``policy.model=better`` works
    without quotes.
    """
    key, sep, raw_value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. search.rounds=4)")
    raw_value = raw_value.strip()
    try:
        value = tomllib.loads(f"value = {raw_value}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return key, value


def merge_into(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    """Deep-merge ``update`` into ``base`` in place (tables merge, other values replace)."""
    for key, value in update.items():
        current = base.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merge_into(current, value, f"{prefix}{key}.")
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``"a.b.c"``; a non-table on the way is a named error."""
    *parents, leaf = dotted.split(".")
    node = data
    walked: list[str] = []
    for key in parents:
        walked.append(key)
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(walked)} is a value, not a section (in override {dotted})")
        node = child
    node[leaf] = value


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, led by the dotted key: ``config key search.rounds: Input should be ...``."""
    lines = []
    for item in error.errors():
        key = ".".join(_config_key(item["loc"])) or "(root)"
        if item["type"] == "policy_backend":  # the policy union's tag names no backend
            lines.append(f"config key {key}.backend: {item['msg']}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"config key {key}: unknown key")
        else:
            lines.append(f"config key {key}: {item['msg']}")
    return "; ".join(lines)


def _config_key(loc: tuple[Any, ...]) -> list[str]:
    """The dotted key of an error location, without the policy union's tag (``policy.embedded.n_ctx``
    is ``policy.n_ctx``)."""
    parts: list[str] = []
    for part in loc:
        if parts and parts[-1] == "policy" and part in POLICY_MODELS:
            continue
        parts.append(str(part))
    return parts


def fit_policy_sections(data: dict[str, Any], explicit: Mapping[str, Any]) -> None:
    """Drop, in place, the policy keys of other backends than the chosen one (a preset's ``n_ctx``
    under ``--backend openai``); one warning line names those ``explicit`` sets (config file,
    flags, ``--set``), the preset's go silently."""
    for path in (("policy",), ("judge", "policy")):
        section: Any = data
        given: Any = explicit
        for key in path:
            section = section.get(key) if isinstance(section, dict) else None
            given = given.get(key) if isinstance(given, Mapping) else None
        if isinstance(section, dict):
            parent = data if len(path) == 1 else data[path[0]]
            parent[path[-1]] = fit_policy_keys(section, set(given) if isinstance(given, Mapping) else set())


def validate_config(data: Mapping[str, Any]) -> BuildConfig:
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def config_from_parts(
    preset: str | None = None,
    mapping: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> BuildConfig:
    """Preset < mapping (e.g. a parsed TOML file or deployment parameter) < ``key=value`` overrides."""
    data: dict[str, Any] = {}
    explicit: dict[str, Any] = {}  # what the caller set, beside the preset
    if preset is not None:
        merge_into(data, parse_toml(preset_text(preset), f"preset {preset}"))
    merge_into(data, mapping or {})
    merge_into(explicit, mapping or {})
    for assignment in overrides:
        set_dotted(data, *parse_override(assignment))
        set_dotted(explicit, *parse_override(assignment))
    fit_policy_sections(data, explicit)
    return validate_config(data)


def load_build_config(
    config_file: Path | None = None,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    flag_values: Mapping[str, Any] | None = None,
) -> BuildConfig:
    """The build configuration from all sources (see module docstring for the order).

    ``flag_values`` maps dotted keys to values of common CLI flags; ``None`` values are ignored
    (the flag was not given). ``overrides`` are ``key=value`` strings from ``--set``.
    """
    data: dict[str, Any] = {}
    explicit: dict[str, Any] = {}  # what the user set, beside the preset
    if preset is not None:
        merge_into(data, parse_toml(preset_text(preset), f"preset {preset}"))
    if config_file is not None:
        from_file = read_config_file(config_file)
        merge_into(data, from_file)
        merge_into(explicit, from_file)
    for dotted, value in (flag_values or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
            set_dotted(explicit, dotted, value)
    for assignment in overrides:
        dotted, value = parse_override(assignment)
        set_dotted(data, dotted, value)
        set_dotted(explicit, dotted, value)
    fit_policy_sections(data, explicit)
    return validate_config(data)
