"""``make_policy``: the policy a PolicyConfig describes.

Backends are imported only when chosen, so a machine without vllm or llama-cpp-python can still
use the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from data_schemas.errors import ConfigError
from labelers.config import POLICY_MODELS, PolicyConfig
from labelers.policy.base import Policy

if TYPE_CHECKING:
    from labelers.policy.embedded import ModelPool


# Sampling settings (labelers.config.PolicySampling, shared by every backend) travel with each
# GenerationRequest (labelers/policy/base.py); the rest of a backend's model is what make_policy
# reads for it (all but keys marked NOT_READ): two configs that agree on those get the same
# engine (one loaded model, one KV cache, one HTTP client). So a holder of engines keys by the engine fields only
# (flows/resources.py) and never loads a model twice for a new temperature.
# tests/test_flow_resources.py checks the split.
SAMPLING_FIELDS: tuple[str, ...] = ("temperature", "top_p", "max_step_tokens", "max_solution_tokens", "stop_at_answer")
ENGINE_FIELDS: dict[str, tuple[str, ...]] = {
    backend: tuple(
        name for name, field in model.model_fields.items()
        if name != "backend" and name not in SAMPLING_FIELDS and (field.json_schema_extra or {}).get("engine", True)
    )
    for backend, model in POLICY_MODELS.items()
}


def engine_fields(config: PolicyConfig) -> dict[str, object]:
    """What makes ``make_policy(config)`` a different engine: the backend and its ENGINE_FIELDS."""
    fields = ENGINE_FIELDS.get(config.backend, ())
    return {"backend": config.backend, **{name: getattr(config, name) for name in fields}}


def make_policy(config: PolicyConfig, *, pool: "ModelPool | None" = None, cache_dir: Path | None = None) -> Policy:
    """A ready Policy for ``config``.

    ``pool`` (embedded only): a ModelPool the caller owns, so a worker process that makes several
    policies loads the model once. ``cache_dir``: where preset GGUF files are assembled
    (default ``$PRMFORGE_CACHE_DIR/models`` or ``~/.cache/prmforge/models``).
    """
    if config.backend == "embedded":
        from labelers.policy.embedded import EmbeddedPolicy

        return EmbeddedPolicy(
            config.model,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            pool=pool,
            cache_dir=cache_dir,
            decode=config.decode,
            max_sequences=config.max_sequences,
            kv_cells=config.kv_cells,
            prompt_cache=config.prompt_cache,
        )
    if config.backend == "vllm":
        from labelers.policy.vllm_backend import VllmPolicy

        return VllmPolicy(
            config.model,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enable_prefix_caching=config.enable_prefix_caching,
            max_model_len=config.n_ctx,
        )
    if config.backend == "openai":
        from labelers.policy.openai_http import OpenAIHttpPolicy

        if not config.base_url:
            raise ConfigError("policy.backend = 'openai' needs policy.base_url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIHttpPolicy(
            config.base_url,
            config.model,
            api_key=config.api_key,
            max_concurrency=config.max_concurrency,
            request_timeout_s=config.request_timeout_s,
            max_retries=config.max_retries,
        )
    raise ConfigError(f"unknown policy.backend {config.backend!r}; expected embedded, vllm or openai")


def check_policy_runs(config: PolicyConfig, cache_dir: Path | None = None) -> None:
    """Fail early, with one line, when the configured policy cannot run on this machine.

    embedded: the model file is resolved (a preset is assembled on first use) and the llama.cpp
    preflight decodes with it in a child process (labelers/policy/llama_build.py). The other
    backends are checked when they are built.
    """
    if config.backend != "embedded":
        return
    from labelers.policy.llama_build import preflight
    from labelers.policy.model_files import default_cache_dir, resolve_model

    path, _ = resolve_model(config.model, cache_dir)
    preflight(path, config.n_threads, default_cache_dir().parent)
