"""docs/config.md is generated from the config models (labelers/configdoc.py), so it cannot fall
behind them: every key has a description, and the committed file is the rendered one."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from labelers.config import POLICY_MODELS, BuildConfig
from labelers.configdoc import render

DOC = Path(__file__).parent.parent / "docs" / "config.md"


def _models() -> list[type[BaseModel]]:
    sections = [field.annotation for field in BuildConfig.model_fields.values()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)]
    return [BuildConfig, *sections, *POLICY_MODELS.values()]  # type: ignore[list-item]


def test_every_config_key_has_a_description():
    missing = [f"{model.__name__}.{name}" for model in _models() for name, field in model.model_fields.items()
               if not (field.description or "").strip() and not (isinstance(field.annotation, type)
                                                               and issubclass(field.annotation, BaseModel))]
    missing = [name for name in missing if name != "BuildConfig.policy"]  # documented per backend
    assert missing == []


def test_doc_is_the_generated_one():
    assert DOC.read_text() == render(), "regenerate: python -m labelers.configdoc > docs/config.md"


def test_doc_names_every_key_of_every_backend():
    text = DOC.read_text()
    for backend, model in POLICY_MODELS.items():
        assert f'### backend = "{backend}"' in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, (backend, name)
