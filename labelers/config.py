"""The build configuration: one typed model, every section in one place.

``BuildConfig`` is what a TOML file, a preset and CLI overrides all become. Each stage receives
only its own section. Unknown keys are errors (``extra="forbid"``) so a typo never passes silently.

Every key carries its meaning as ``Field(description=...)``; docs/config.md is generated from them
(``python -m labelers.configdoc > docs/config.md``, checked by tests/test_config_doc.py). Whether a
key counts towards the build's identity is declared on the field too (:data:`BUILD_ONLY`,
:data:`NOT_HASHED`), read by one function, :func:`hash_exclusions`.

The policy section is one model per backend (:data:`PolicyConfig`, keyed on ``backend``): the
sampling settings all share (:class:`PolicySampling`) plus the backend's own engine settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

log = logging.getLogger(__name__)

# How a key counts towards the build's identity, declared on its field (``json_schema_extra``);
# a key without a mark changes labels and counts in both hashes. hash_exclusions() reads the marks.
HashRole = Literal["labels", "unless", "build", "none"]
BUILD_ONLY: dict[str, Any] = {"hash": "build"}  # in config_hash, not labeling_hash (same labels)
NOT_HASHED: dict[str, Any] = {"hash": "none"}  # in neither (where output goes, orchestration)
# A policy key the backend accepts but its engine does not read (labelers/policy/factory.py
# ENGINE_FIELDS leaves it out, so it never keys a new model).
NOT_READ: dict[str, Any] = {"engine": False}


def hashed_unless(earlier: Any) -> dict[str, Any]:
    """Mark of a label-changing key added after datasets were built: hashed unless it holds
    ``earlier``, the value that gives the rows built before the key existed, so a config at that
    value keeps its identity."""
    return {"hash": "unless", "unless": earlier}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProblemsConfig(_Section):
    """Where problems come from."""

    path: str = Field(
        default="bundled",
        description='"bundled" = the small GSM8K + MATH-500 set shipped inside the package; else a file, a folder '
        '(every problem file in it) or a glob ("data/*.jsonl"), read in name order.',
    )
    format: Literal["auto", "gsm8k", "math", "generic"] = Field(
        default="auto", description="File format; auto: from the file name and columns (docs/problems.md)."
    )
    source: str | None = Field(
        default=None, description="Source name recorded in rows; default: derived from format/file."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping for the generic format: prmforge field -> column name in the file.",
    )
    limit: int | None = Field(default=None, ge=1, description="Read at most this many problems; None: all.")
    skip_invalid: bool = Field(default=False, description="Skip (and count) malformed problems instead of failing.")


# -- the policy: one model per backend -------------------------------------------------------------

PolicyBackend = Literal["embedded", "vllm", "openai"]


class PolicySampling(_Section):
    """Sampling settings every backend shares. They travel with each request
    (labelers/policy/base.py ``GenerationRequest``), so changing them never needs a new model."""

    temperature: float = Field(default=0.8, ge=0, description="Sampling temperature of steps and rollouts.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling threshold.")
    max_step_tokens: int = Field(default=160, ge=8, description="Token limit of one expansion = one step.")
    max_solution_tokens: int = Field(default=512, ge=16, description="Token limit of a rollout to the final answer.")
    stop_at_answer: bool = Field(
        default=True,
        description="A rollout stops once its final answer is complete (labelers.answers.answer_end); off, it runs "
        "to EOS or max_solution_tokens (the earlier behaviour, for comparison).",
    )


class EmbeddedPolicyConfig(PolicySampling):
    """``backend = "embedded"``: a GGUF model run in-process by llama.cpp (docs/generation.md)."""

    backend: Literal["embedded"] = Field(default="embedded", description="The backend: llama.cpp in-process.",
                                         json_schema_extra=BUILD_ONLY)
    model: str = Field(
        default="better",
        description='A preset name ("small", "better") or a path to a GGUF file.',
        json_schema_extra=BUILD_ONLY,
    )
    n_ctx: int = Field(default=4096, ge=512, description="Context window (tokens) of one sequence.")
    n_threads: int | None = Field(
        default=None, ge=1, description='CPU threads; default in docs/generation.md ("Threads").',
        json_schema_extra=BUILD_ONLY,
    )
    decode: Literal["batched", "sequential"] = Field(
        default="batched",
        description='"batched" decodes up to max_sequences completions per llama.cpp call in a KV cache of '
        'kv_cells cells (continuous batching); "sequential" one completion at a time.',
    )
    max_sequences: int = Field(default=32, ge=1, le=254, description="Batched decode: sequences per llama.cpp call.")
    kv_cells: int = Field(default=16384, ge=512, description="Batched decode: KV cache cells shared by the sequences.")
    prompt_cache: bool = Field(
        default=True,
        description="Batched decode: consecutive generate calls of one labeling pass reuse the prompts the earlier "
        'calls evaluated (docs/generation.md, "Prompt cache").',
    )


class VllmPolicyConfig(PolicySampling):
    """``backend = "vllm"``: a model run in-process by vLLM on a CUDA GPU."""

    backend: Literal["vllm"] = Field(default="vllm", description="The backend: vLLM in-process (CUDA GPU).",
                                     json_schema_extra=BUILD_ONLY)
    model: str = Field(default="better", description="A model path or Hugging Face id.", json_schema_extra=BUILD_ONLY)
    n_ctx: int = Field(default=4096, ge=512, description="Context window (vLLM max_model_len).")
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.", json_schema_extra=BUILD_ONLY
    )
    enable_prefix_caching: bool = Field(default=True, description="vLLM automatic prefix caching.")


class OpenAIPolicyConfig(PolicySampling):
    """``backend = "openai"``: a model served behind an OpenAI-compatible HTTP API (``prmforge serve``,
    vLLM's server, ...)."""

    backend: Literal["openai"] = Field(default="openai", description="The backend: an OpenAI-compatible server.",
                                       json_schema_extra=BUILD_ONLY)
    model: str = Field(default="better", description="The served model name.", json_schema_extra=BUILD_ONLY)
    n_ctx: int = Field(
        default=4096, ge=512,
        description="Not read: the server's context window decides. Accepted, and counted in the hashes as before "
        "the per-backend split, so a preset's n_ctx (math500, demo) keeps the build's identity under "
        "--backend openai.",
        json_schema_extra=NOT_READ,
    )
    base_url: str | None = Field(
        default=None, description="The server's URL, e.g. http://127.0.0.1:8000/v1 (required).",
        json_schema_extra=BUILD_ONLY,
    )
    api_key: str | None = Field(default=None, description="Bearer token, if the server wants one.",
                                json_schema_extra=BUILD_ONLY)
    max_concurrency: int = Field(default=16, ge=1, description="Requests in flight at once.",
                                 json_schema_extra=BUILD_ONLY)
    request_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one HTTP request.",
                                     json_schema_extra=BUILD_ONLY)
    max_retries: int = Field(default=4, ge=0, description="Retries of a failed request (with backoff).",
                             json_schema_extra=BUILD_ONLY)


POLICY_MODELS: dict[str, type[PolicySampling]] = {
    "embedded": EmbeddedPolicyConfig, "vllm": VllmPolicyConfig, "openai": OpenAIPolicyConfig,
}
DEFAULT_BACKEND = "embedded"
# Every key of any backend: a key of another backend than the chosen one is dropped (fit_policy_keys),
# a key of none is an error.
ALL_POLICY_KEYS: frozenset[str] = frozenset(name for model in POLICY_MODELS.values() for name in model.model_fields)
_POLICY_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for model in POLICY_MODELS.values() for name, field in model.model_fields.items()
}


def _backend_of(value: Any) -> Any:
    """The union's tag: ``backend``, "embedded" when a mapping does not give it."""
    if isinstance(value, Mapping):
        return value.get("backend", DEFAULT_BACKEND)
    return getattr(value, "backend", None)


def fit_policy_keys(data: Mapping[str, Any], explicit: Collection[str] | None = None) -> dict[str, Any]:
    """``data`` (a policy mapping) without the keys of other backends than its ``backend``.

    A switch of backend (``--backend openai`` over a preset that sets ``n_ctx``) must not fail on
    the old backend's settings. Dropped keys in ``explicit`` (None: those not at their default, so
    the flat policy of a manifest written before the split passes quietly) are named in one warning
    line; keys of no backend are left for validation to reject."""
    backend = data.get("backend", DEFAULT_BACKEND)
    model = POLICY_MODELS.get(backend) if isinstance(backend, str) else None
    if model is None:
        return dict(data)
    foreign = [key for key in data if key in ALL_POLICY_KEYS and key not in model.model_fields]
    if explicit is None:
        noted = [key for key in foreign if data[key] != _POLICY_DEFAULTS[key]]
    else:
        noted = [key for key in foreign if key in explicit]
    if noted:
        log.warning("policy settings %s dropped: not settings of the %s backend", ", ".join(sorted(noted)), backend)
    return {key: value for key, value in data.items() if key not in foreign}


def _fit_policy_input(value: Any) -> Any:
    return fit_policy_keys(value) if isinstance(value, Mapping) else value


PolicyConfig = Annotated[
    Union[  # noqa: UP007 - the tagged members read better one per line
        Annotated[EmbeddedPolicyConfig, Tag("embedded")],
        Annotated[VllmPolicyConfig, Tag("vllm")],
        Annotated[OpenAIPolicyConfig, Tag("openai")],
    ],
    Discriminator(
        _backend_of,
        custom_error_type="policy_backend",
        custom_error_message="Input should be 'embedded', 'vllm' or 'openai'",
    ),
    BeforeValidator(_fit_policy_input),
]
"""Which language model samples steps and rollouts: one model per ``backend``."""

_POLICY_ADAPTER: TypeAdapter[Any] = TypeAdapter(PolicyConfig)


def policy_config(data: Mapping[str, Any] | None = None, /, **fields: Any) -> PolicyConfig:
    """The policy config of a mapping or keywords (``backend`` picks the model, default embedded)."""
    return _POLICY_ADAPTER.validate_python({**(data or {}), **fields})


def flat_policy_payload(policy: PolicySampling) -> dict[str, Any]:
    """The policy as the hashes see it: every key of every backend, those of other backends at
    their defaults. The payload of the flat policy model before the per-backend split, so a
    config keeps its hashes."""
    payload: dict[str, Any] = {}
    for model in POLICY_MODELS.values():
        payload.update(model().model_dump(mode="json"))
    payload.update(policy.model_dump(mode="json"))
    return payload


class SearchConfig(_Section):
    """MCTS over steps (GroundedPRM) and Monte Carlo estimation (Math-Shepherd, OmegaPRM)."""

    mode: Literal["mcts", "sample"] = Field(
        default="mcts", description='"mcts": a tree over steps; "sample": n independent solutions, no tree.'
    )
    samples_per_problem: int = Field(default=4, ge=1, description='Mode "sample": solutions per problem.')
    rounds: int = Field(default=8, ge=1, description="MCTS iterations per problem.")
    max_depth: int = Field(default=8, ge=1, description="Steps before a path is cut off.")
    children_per_expansion: int = Field(default=3, ge=1, description="k children per expansion (n=k).")
    uct_c: float = Field(default=1.4, ge=0, description="UCT exploration constant.")
    gamma: float = Field(default=0.9, ge=0, le=1, description="Ancestor discount of the back-up.")
    stop_after_positive: int = Field(default=3, ge=0, description="Stop once this many correct paths...")
    stop_after_negative: int = Field(default=3, ge=0, description="...and this many wrong ones exist.")
    mc_rollouts: int = Field(default=8, ge=1, description="k rollouts per prefix estimate.")
    mc_early_stop: int = Field(default=4, ge=0, description="Stop a prefix once the first m agree; 0 = off.")
    mc_curtail: bool = Field(
        default=False,
        description="Stop a prefix's rollouts once its label is decided (c > fuse.mc_threshold * k): one rollout "
        "first, the rest only when it misses. Labels are those of all k rollouts; mc_value becomes c of the "
        "rollouts drawn (biased up), so leave it off for soft labels (docs/algorithms.md).",
        json_schema_extra=hashed_unless(False),
    )
    first_error_search: bool = Field(default=True, description="OmegaPRM binary search on wrong paths.")
    mc_correct_paths: bool = Field(
        default=False,
        description="With first_error_search: also per-step MC on paths that reach gold (soft values). Off: their "
        "steps are inferred positive (the path itself reaches gold from every prefix). Without first_error_search "
        "every path gets per-step MC (Math-Shepherd).",
    )
    skip_mc_after_disproved: bool = Field(
        default=True,
        description="Hybrid rule: no rollouts from a step the tool or Lean disproved, nor after it (the step is "
        "negative whatever MC says; later steps follow the path's first error). Path consensus then asks only "
        "that MC finds no error before the verifier's (docs/algorithms.md).",
    )
    mc_confirm_verified_zero: bool = Field(
        default=False,
        description="Hybrid rule: a prefix estimated at 0 whose last step the tool or Lean verified gets "
        "mc_rollouts more rollouts before the zero overrules the verifier. Off by default: on all 203 ProcessBench "
        "GSM8K dev cases it changed no F1 for +51% rollouts (docs/algorithms.md).",
    )
    mc_confirm_every_zero: bool = Field(
        default=False,
        description="Hybrid rule: every prefix estimated at 0 gets mc_rollouts more rollouts, not only one after a "
        "verified step (a zero from k rollouts of a weak policy is often the policy's, not the step's).",
        json_schema_extra=hashed_unless(False),
    )
    max_paths_per_problem: int = Field(default=6, ge=1, description="Labeled paths kept per problem.")


class ToolConfig(_Section):
    """Step checking with sympy and sandboxed Python."""

    enabled: bool = Field(default=True, description="Check steps with the tool.")
    workers: int | None = Field(default=None, ge=1, description="Sympy worker processes; default: cores.",
                                json_schema_extra=BUILD_ONLY)
    claim_timeout_s: float = Field(default=2.0, gt=0, description="Time limit of one claim's check.")
    sandbox_timeout_s: float = Field(default=5.0, gt=0, description="Time limit of one sandboxed code run.")
    sandbox_memory_mb: int = Field(default=512, ge=32, description="Memory limit of one sandboxed code run.")
    rounding_tolerance: float = Field(
        default=0.01, ge=0, description="Relative tolerance, applied only where a step rounds."
    )
    worker_memory_mb: int = Field(default=1024, ge=64, description="Sympy worker headroom (RLIMIT_AS).")
    chunk_size: int = Field(default=16, ge=1, description="Claims sent to a sympy worker at a time.",
                            json_schema_extra=BUILD_ONLY)
    run_code: bool = Field(default=True, description="Run ```python blocks of a step in the sandbox.")
    code_isolation: Literal["bubblewrap", "process-unsafe"] = Field(
        default="bubblewrap",
        description='"bubblewrap": kernel namespaces (code checks are off, with a warning, where it cannot start); '
        '"process-unsafe": a limited process that can read host files and reach the network (opt-in).',
    )


class LeanConfig(_Section):
    """Lean 4 step verification (Safe)."""

    enabled: bool = Field(default=False, description="Check steps with Lean (docs/lean.md).")
    project: str | None = Field(
        default=None, description="Path to a Lake project with Mathlib; env PRMFORGE_LEAN_PROJECT.",
        json_schema_extra=BUILD_ONLY,
    )
    backend: Literal["batch", "leandojo"] = Field(
        default="batch", description='"batch": statements checked in batches by the REPL; "leandojo": LeanDojo.'
    )
    tactics: tuple[str, ...] = Field(
        default=("norm_num", "decide", "omega", "simp", "linarith", "ring_nf", "positivity"),
        description="Tactics tried on each statement.",
    )
    batch_size: int = Field(default=64, ge=1, description="Statements per Lean run.", json_schema_extra=BUILD_ONLY)
    batch_timeout_s: float = Field(default=300.0, gt=0, description="Time limit of one batch.")
    memory_mb: int = Field(default=8192, ge=256, description="Memory limit of one Lean process.")
    llm_formalize: bool = Field(default=False, description="Ask the policy when no template fits.")
    cache_dir: str | None = Field(
        default=None, description="Default: <output root>/.cache/lean.", json_schema_extra=BUILD_ONLY
    )
    statement_timeout_s: float = Field(
        default=60.0, gt=0, description="One statement re-run alone (Safe: 60 s)."
    )
    formalize_max_tokens: int = Field(default=512, ge=16, description="LLM formalization reply length.")
    leandojo_repo: str | None = Field(
        default=None,
        description='Backend "leandojo": a traced repo (URL or local path + commit) and a file in it that imports '
        "Mathlib; commands run in the environment at line leandojo_line of that file.",
    )
    leandojo_commit: str | None = Field(default=None, description="Backend leandojo: the repo's commit.")
    leandojo_file: str | None = Field(default=None, description="Backend leandojo: the file that imports Mathlib.")
    leandojo_line: int = Field(default=0, ge=0, description="Backend leandojo: the line whose environment is used.")


class JudgeConfig(_Section):
    """The LLM step judge grounded in the tool (GroundedPRM's verifier), docs/algorithms.md.

    It reads the question, the previous steps, the step and the tool's result and answers
    correct/incorrect with a reason. Runs when ``enabled``, or when ``fuse.rule = "judge"`` or
    ``fuse.judge`` is not ``"off"``. Its model: the policy's (nothing set), the policy's settings
    with another model (the shorthand ``model``, ``backend``, ``base_url``), or a policy section
    of its own (``[judge.policy]``, any backend)."""

    enabled: bool = Field(default=False, description="Run the judge even when fusion does not use it.")
    model: str | None = Field(
        default=None,
        description="None: the policy model judges (same backend, one more batched generate call per round); else "
        "a separate judge model on `backend` (default: the policy's backend) with the policy's other settings.",
    )
    backend: PolicyBackend | None = Field(
        default=None, description="Backend of a separate judge `model`; None: the policy's."
    )
    base_url: str | None = Field(
        default=None, description="Openai backend of a separate judge `model`: its server; None: the policy's.",
        json_schema_extra=BUILD_ONLY,
    )
    policy: PolicyConfig | None = Field(
        default=None,
        description="A judge model with settings of its own: a policy section (any backend, its keys as under "
        "[policy], counting towards the hashes as they do there). Not together with model/backend/base_url.",
    )
    max_tokens: int = Field(default=192, ge=8, description="Length limit of a verdict.")
    temperature: float = Field(
        default=0.0, ge=0, description="Greedy by default: the same step gets the same verdict."
    )

    @model_validator(mode="after")
    def _one_way_to_name_the_model(self) -> "JudgeConfig":
        if self.policy is not None and (self.model, self.backend, self.base_url) != (None, None, None):
            raise ValueError("judge.policy and judge.model/backend/base_url name the judge model twice; give one")
        return self

    def policy_config(self, policy: PolicyConfig) -> PolicyConfig | None:
        """The separate judge model's policy settings, or None when the policy model judges.

        ``judge.policy`` as given; or the policy's settings with the judge's model, backend and URL
        (settings the judge's backend lacks dropped, those it has and the policy's lacks at their
        defaults). The one place both ``build`` and ``eval run`` get the judge from
        (flows/resources.py)."""
        if self.policy is not None:
            return self.policy
        if self.model is None:
            return None
        backend = self.backend or policy.backend
        model = POLICY_MODELS[backend]
        data = {key: value for key, value in policy.model_dump().items() if key in model.model_fields}
        data.update(backend=backend, model=self.model)
        if "base_url" in model.model_fields:
            data["base_url"] = self.base_url or data.get("base_url")
        return model.model_validate(data)


class FuseConfig(_Section):
    """How tool verdict, Lean state and MC value become a step label."""

    rule: Literal["hybrid", "mc", "tool", "lean", "judge"] = Field(
        default="hybrid", description="The labeling rule (docs/algorithms.md)."
    )
    mc_threshold: float = Field(default=0.0, ge=0, le=1, description="MC label positive when mc_value > this.")
    after_first_error: Literal["truncate", "negative"] = Field(
        default="truncate", description="Steps after a path's first error: cut off, or labeled negative."
    )
    consensus_filter: bool = Field(
        default=False, description="Keep only paths whose MC and verifier agree on the first error."
    )
    judge: Literal["off", "verifier", "tiebreak"] = Field(
        default="off",
        description='How the hybrid rule uses the judge (labelers/fuse.py): "off" (stored, not fused), "verifier" '
        '(a verifier of lower rank than tool and Lean), "tiebreak" (decides only where neither a verifier nor MC '
        "does).",
    )
    zero_without_drop_yields: bool = Field(
        default=True,
        description="Hybrid path rule (labelers/fuse.py): on a path with a disproved step, MC zeros before it that "
        "no measured positive precedes (a zero at step 0: the question is never sampled) are not taken as "
        "errors; the disproved step is the first error.",
    )
    mc_relative_progress: float | None = Field(
        default=None, gt=0, le=1,
        description="Relative progress (GenPRM, labelers/fuse.py): a step that MC labels + (or a checker "
        "verified) is - when its sampled value falls below this share of the previous step's sampled value "
        "(MC(t) / MC(t-1) < this). Reads sampled neighbours only (per-step MC; binary search infers most "
        "values). None: off.",
        json_schema_extra=hashed_unless(None),
    )


class OutputConfig(_Section):
    """Where shards go."""

    root: str = Field(
        default="prmforge-data", description="Local path or fsspec URI (s3://bucket/prefix).",
        json_schema_extra=NOT_HASHED,
    )
    batch_size: int = Field(default=8, ge=1, description="Problems per batch = per shard.")
    dataset: str | None = Field(
        default=None,
        description="A named dataset the build grows: only problems it does not hold under the same labeling key "
        'are labeled (docs/operations.md "Datasets"). None: a standalone build of every problem.',
        json_schema_extra=NOT_HASHED,
    )
    claim_lease_s: float = Field(
        default=600.0, gt=0,
        description="How long a running build's claim on its problems lives without a heartbeat (a killed run's "
        "problems become eligible again after this).",
        json_schema_extra=NOT_HASHED,
    )


class FlowConfig(_Section):
    """Prefect orchestration."""

    task_runner: Literal["threads", "processes", "dask", "ray"] = Field(
        default="threads", description="Where batch tasks run (docs/operations.md)."
    )
    max_workers: int = Field(default=1, ge=1, description="Batch tasks at once.")
    retries: int = Field(default=2, ge=0, description="Retries of a failed batch task.")
    retry_delay_s: float = Field(default=2.0, ge=0, description="Wait before a retry.")
    dask_address: str | None = Field(default=None, description="Scheduler address; None = start a LocalCluster.")
    dask_processes: bool = Field(
        default=True, description="LocalCluster workers as processes (False: threads in this process)."
    )
    ray_address: str | None = Field(
        default=None, description='Ray cluster address ("auto", "ray://host:10001"); None = local Ray.'
    )
    max_held_models: int = Field(
        default=2, ge=1,
        description="Models (policy and judge engines) a worker process keeps loaded between builds; beyond it the "
        "least recently used one not in use is closed (flows/resources.py). Sampling settings never need a new "
        "model, so schedules differing only in them share one.",
    )


class BuildConfig(_Section):
    """Everything a build needs. ``config_hash`` identifies the labeling-relevant part."""

    name: str = Field(default="build", description="The build's name (in its manifest).",
                      json_schema_extra=NOT_HASHED)
    seed: int = Field(default=0, description="Build seed: seeds derive from it, the problem and the node path.")
    problems: ProblemsConfig = Field(default=ProblemsConfig(), json_schema_extra=BUILD_ONLY)
    policy: PolicyConfig = EmbeddedPolicyConfig()
    search: SearchConfig = SearchConfig()
    tool: ToolConfig = ToolConfig()
    lean: LeanConfig = LeanConfig()
    fuse: FuseConfig = FuseConfig()
    judge: JudgeConfig = JudgeConfig()
    output: OutputConfig = Field(default=OutputConfig(), json_schema_extra=BUILD_ONLY)
    flow: FlowConfig = Field(default=FlowConfig(), json_schema_extra=NOT_HASHED)

    def config_hash(self) -> str:
        """sha256 (16 hex) of the canonical JSON of everything that changes rows.

        Output location and orchestration settings are left out (keys marked :data:`NOT_HASHED`):
        moving a build or running it with more workers must not change its identity.
        """
        return _digest(self._hash_payload("build"))

    def labeling_hash(self) -> str:
        """sha256 (16 hex) of the sections that change a problem's labels.

        Seed, search (MCTS and Monte Carlo), tool, Lean, fusion and judge settings, and the
        policy's sampling settings; not the problem file, output, orchestration, or how the policy
        is reached (URL, key, concurrency, timeouts, threads: same model, same rows), nor tool/Lean
        parallelism and locations (keys marked :data:`BUILD_ONLY` or :data:`NOT_HASHED`). The policy
        model id is a separate part of the labeling key. Policy keys without a mark count as
        label-changing, so a new setting errs towards relabeling. The judge counts only when it
        runs (as in :meth:`config_hash`).
        """
        return _digest(self._hash_payload("labels"))

    def _hash_payload(self, purpose: Literal["build", "labels"]) -> dict[str, Any]:
        payload = self.model_dump(mode="json", exclude=hash_exclusions(BuildConfig, purpose))
        # The policies hash in the flat shape they had before the per-backend models.
        policy_exclude = _policy_exclusions(purpose)
        if "policy" in payload:
            payload["policy"] = _without(flat_policy_payload(self.policy), policy_exclude)
        if "judge" in payload:
            if self.judge.policy is None:
                payload["judge"].pop("policy")  # absent before judge.policy existed
            else:
                payload["judge"]["policy"] = _without(flat_policy_payload(self.judge.policy), policy_exclude)
        for name, section in self:
            if isinstance(section, BaseModel) and isinstance(payload.get(name), dict):
                for key, field in type(section).model_fields.items():
                    extra = field.json_schema_extra
                    if hash_role(field) == "unless" and getattr(section, key) == extra["unless"]:  # type: ignore[index]
                        payload[name].pop(key, None)
        if not self.judge_runs:
            # Without the judge, its settings are left out of the hashes, so builds without it keep
            # the hashes they had before the judge existed.
            payload.pop("judge", None)
            payload.get("fuse", {}).pop("judge", None)
        return payload

    @property
    def judge_runs(self) -> bool:
        """Whether the step judge runs in this build (asked for, or needed by fusion)."""
        return self.judge.enabled or self.fuse.rule == "judge" or self.fuse.judge != "off"

    def with_overrides(self, overrides: dict[str, object]) -> "BuildConfig":
        """A copy with dotted-key overrides applied (``{"search.rounds": 4}``), validated.

        A new ``policy.backend`` drops the settings the new backend lacks (one warning line names
        those that were set, :func:`fit_policy_keys`)."""
        data = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        # "Set": a value other than the default, or overridden now (a config validated from a dump
        # has every field in model_fields_set, so that cannot tell).
        if isinstance(data.get("policy"), dict):
            explicit = _not_default(self.policy) | {key[7:] for key in overrides if key.startswith("policy.")}
            data["policy"] = fit_policy_keys(data["policy"], explicit)
        judge = data.get("judge")
        if isinstance(judge, dict) and isinstance(judge.get("policy"), dict) and self.judge.policy is not None:
            explicit = _not_default(self.judge.policy)
            explicit |= {key[13:] for key in overrides if key.startswith("judge.policy.")}
            judge["policy"] = fit_policy_keys(judge["policy"], explicit)
        return BuildConfig.model_validate(data)


def hash_role(field: Any) -> HashRole:
    """How a field counts towards the hashes: its ``json_schema_extra["hash"]`` mark, else "labels"."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("hash", "labels")  # type: ignore[return-value]


def hash_exclusions(model: type[BaseModel], purpose: Literal["build", "labels"]) -> dict[str, Any]:
    """The ``model_dump`` exclude spec of ``model`` for one hash, from the fields' marks: the one
    place the marks are read. ``purpose`` "build" (config_hash) leaves out :data:`NOT_HASHED`
    keys, "labels" (labeling_hash) :data:`BUILD_ONLY` ones too. Sections are walked; the policy
    union is walked by :func:`_policy_exclusions`."""
    dropped: tuple[str, ...] = ("none",) if purpose == "build" else ("none", "build")
    exclude: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if hash_role(field) in dropped:
            exclude[name] = True
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            inner = hash_exclusions(field.annotation, purpose)
            if inner:
                exclude[name] = inner
    return exclude


def _policy_exclusions(purpose: Literal["build", "labels"]) -> set[str]:
    """Policy keys a hash leaves out: those any backend marks (a key means the same in each)."""
    keys: set[str] = set()
    for model in POLICY_MODELS.values():
        keys |= set(hash_exclusions(model, purpose))
    return keys


def _not_default(model: BaseModel) -> set[str]:
    """The fields of ``model`` whose value is not their default."""
    return {
        name for name, field in type(model).model_fields.items()
        if getattr(model, name) != field.get_default(call_default_factory=True)
    }


def _without(payload: dict[str, Any], keys: Collection[str]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in keys}


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

def load_toml(path: Path) -> dict:
    """The raw mapping of a TOML config file."""
    import tomllib

    with path.open("rb") as handle:
        return tomllib.load(handle)


class TrainConfig(_Section):
    """``prmforge train``: the settings passed to the pinned trainer (trl 1.13.0 PRMTrainer for
    the ``trl`` layout, SFTTrainer for ``generative``). Defaults are the trainer's own, except
    ``bf16`` (None: on when a CUDA device supports it, off on the CPU, where trl's default of on
    fails) and ``max_steps`` (None: train ``epochs`` epochs)."""

    format: Literal["trl", "generative"] = "trl"
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=8)
    step_separator: str = Field(
        default="\n", description="PRMTrainer: appended to each step; its last token carries the label."
    )
    train_on_last_step_only: bool = False
    gradient_checkpointing: bool = True
    bf16: bool | None = None
    seed: int = 0
    logging_steps: int = Field(default=10, ge=1)
