"""Render docs/config.md from the config models: ``python -m labelers.configdoc > docs/config.md``.

Every key's meaning is its ``Field(description=...)`` in labelers/config.py, its identity role its
hash mark (:func:`labelers.config.hash_role`); tests/test_config_doc.py fails when the committed
document is not the one this renders.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from labelers.config import POLICY_MODELS, BuildConfig, PolicySampling, hash_role

HEADER = """# Configuration reference

Generated from the models in `labelers/config.py` by
`python -m labelers.configdoc > docs/config.md`; `tests/test_config_doc.py` fails when this file
and the models disagree. A build's configuration is one TOML file (or a preset,
`flows/presets/*.toml`) plus command-line flags and `--set section.key=value` overrides, later
winning (flows/config_load.py). Unknown keys are errors.

The identity column says how a key counts towards the build's hashes (docs/operations.md):
**labels**: in `config_hash` and `labeling_hash` (a change relabels); **labels unless V**: as
labels, except at the value V that gives the rows built before the key existed (those builds keep
their identity); **build**: in `config_hash` only (where or how it runs, not what it labels);
**no**: in neither (where output goes, orchestration). The `[judge]` section and `fuse.judge`
count only when the judge runs.
"""

POLICY_INTRO = """The policy is one model per `backend`: the sampling settings below, which every backend
shares, plus the settings of the chosen backend (the tables after). `backend` defaults to
`"embedded"`. Keys of another backend than the chosen one are dropped (a warning names those
set in a config file, a flag or `--set`; a preset's go silently), so `--backend openai` works
over a preset written for the embedded backend. Keys of no backend are errors. The hashes see
every key of every backend, those of other backends at their defaults.
"""

ROLES = {"labels": "labels", "unless": "labels unless", "build": "build", "none": "no"}


def type_name(annotation: Any) -> str:
    """The annotation as written in the doc: ``int``, ``str | None``, ``"a" | "b"``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        members = [typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg for arg in args]
        if all(isinstance(arg, type) and issubclass(arg, BaseModel) for arg in members if arg is not type(None)):
            names = "policy section"
        else:
            names = " \\| ".join(type_name(arg) for arg in args if arg is not type(None))
        return f"{names} \\| None" if type(None) in args else names
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[0])} -> {type_name(args[1])}"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    return "`" + (json.dumps(value) if value is not None else "None") + "`"


def table(model: type[BaseModel], names: list[str] | None = None, section_role: str = "labels") -> str:
    """The key table of ``model``; a key's identity is its mark, at most its section's."""
    rows = ["| key | type | default | identity | meaning |\n|---|---|---|---|---|\n"]
    for name, field in model.model_fields.items():
        if names is not None and name not in names:
            continue
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        roles = ("labels", "unless", "build", "none")
        role = ROLES[max(hash_role(field), section_role, key=roles.index)]
        if role == ROLES["unless"]:
            role += f" `{json.dumps(field.json_schema_extra['unless'])}`"  # type: ignore[index]
        rows.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {role} | {meaning} |\n")
    return "".join(rows)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split()).replace("``", "`")


def render() -> str:
    """The whole of docs/config.md."""
    parts = [HEADER, "\n## Top level\n\n"]
    sections = {name: field for name, field in BuildConfig.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    parts.append(table(BuildConfig, [name for name in BuildConfig.model_fields if name not in sections and
                                     name != "policy"]))
    for name, field in BuildConfig.model_fields.items():
        if name == "policy":
            parts.append(f"\n## [policy]\n\n{POLICY_INTRO}\n### Sampling (every backend)\n\n{_doc(PolicySampling)}\n\n")
            parts.append(table(PolicySampling))
            for backend, model in POLICY_MODELS.items():
                own = [key for key in model.model_fields if key not in PolicySampling.model_fields]
                parts.append(f"\n### backend = \"{backend}\"\n\n{_doc(model)}\n\n{table(model, own)}")
        elif name in sections:
            model = field.annotation
            assert isinstance(model, type)
            role = hash_role(field)
            note = {"build": " The whole section counts in `config_hash` only.",
                    "none": " The whole section counts in neither hash."}.get(role, "")
            parts.append(f"\n## [{name}]\n\n{_doc(model)}{note}\n\n{table(model, section_role=role)}")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
