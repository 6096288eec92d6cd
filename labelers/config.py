"""The build configuration: one typed model, every section in one place.

``BuildConfig`` is what a TOML file, a preset and CLI overrides all become. Each stage receives
only its own section. Unknown keys are errors (``extra="forbid"``) so a typo never passes silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProblemsConfig(_Section):
    """Where problems come from."""

    # "bundled" = the small GSM8K + MATH-500 set shipped inside the package; else a file, a
    # folder (every problem file in it) or a glob ("data/*.jsonl"), read in name order.
    path: str = "bundled"
    format: Literal["auto", "gsm8k", "math", "generic"] = "auto"
    source: str | None = None  # source name recorded in rows; default: derived from format/file
    # Column mapping for the generic format: prmforge field -> column name in the file.
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    skip_invalid: bool = False


class PolicyConfig(_Section):
    """Which language model samples steps and rollouts."""

    backend: Literal["embedded", "vllm", "openai"] = "embedded"
    # embedded: a preset name ("small", "better") or a path to a GGUF file;
    # vllm: a model path or id; openai: the served model name.
    model: str = "better"
    base_url: str | None = None  # openai backend: e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None
    max_concurrency: int = Field(default=16, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    n_ctx: int = Field(default=4096, ge=512)  # embedded: context window
    n_threads: int | None = Field(default=None, ge=1)  # embedded: default in docs/generation.md ("Threads")
    # embedded: "batched" decodes up to max_sequences completions per llama.cpp call in a KV
    # cache of kv_cells cells (continuous batching); "sequential" one completion at a time.
    decode: Literal["batched", "sequential"] = "batched"
    max_sequences: int = Field(default=32, ge=1, le=255)
    kv_cells: int = Field(default=16384, ge=512)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)  # vllm
    enable_prefix_caching: bool = True  # vllm
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_step_tokens: int = Field(default=160, ge=8)  # one expansion = one step
    max_solution_tokens: int = Field(default=512, ge=16)  # a rollout to the final answer
    # A rollout stops once its final answer is complete (labelers.answers.answer_end); off, it
    # runs to EOS or max_solution_tokens (the earlier behaviour, for comparison).
    stop_at_answer: bool = True
    # embedded, batched: consecutive generate calls of one labeling pass reuse the prompts the
    # earlier calls evaluated (docs/generation.md, "Prompt cache").
    prompt_cache: bool = True


class SearchConfig(_Section):
    """MCTS over steps (GroundedPRM) and Monte Carlo estimation (Math-Shepherd, OmegaPRM)."""

    mode: Literal["mcts", "sample"] = "mcts"  # "sample": n independent solutions, no tree
    samples_per_problem: int = Field(default=4, ge=1)  # mode "sample"
    rounds: int = Field(default=8, ge=1)  # MCTS iterations per problem
    max_depth: int = Field(default=8, ge=1)  # steps before a path is cut off
    children_per_expansion: int = Field(default=3, ge=1)  # k children per expansion (n=k)
    uct_c: float = Field(default=1.4, ge=0)
    gamma: float = Field(default=0.9, ge=0, le=1)  # ancestor discount of the back-up
    stop_after_positive: int = Field(default=3, ge=0)  # stop once this many correct paths...
    stop_after_negative: int = Field(default=3, ge=0)  # ...and this many wrong ones exist
    mc_rollouts: int = Field(default=8, ge=1)  # k rollouts per prefix estimate
    mc_early_stop: int = Field(default=4, ge=0)  # stop a prefix once the first m agree; 0 = off
    first_error_search: bool = True  # OmegaPRM binary search on wrong paths
    # With first_error_search: also per-step MC on paths that reach gold (soft values). Off:
    # their steps are inferred positive (the path itself reaches gold from every prefix).
    # Without first_error_search every path gets per-step MC (Math-Shepherd).
    mc_correct_paths: bool = False
    # Hybrid rule: no rollouts from a step the tool or Lean disproved, nor after it (the step is
    # negative whatever MC says; later steps follow the path's first error). Path consensus then
    # asks only that MC finds no error before the verifier's (docs/algorithms.md).
    skip_mc_after_disproved: bool = True
    # Hybrid rule: a prefix estimated at 0 whose last step the tool or Lean verified gets
    # mc_rollouts more rollouts before the zero overrules the verifier (docs/algorithms.md).
    mc_confirm_verified_zero: bool = True
    max_paths_per_problem: int = Field(default=6, ge=1)  # labeled paths kept per problem


class ToolConfig(_Section):
    """Step checking with sympy and sandboxed Python."""

    enabled: bool = True
    workers: int | None = Field(default=None, ge=1)  # default: cores
    claim_timeout_s: float = Field(default=2.0, gt=0)
    sandbox_timeout_s: float = Field(default=5.0, gt=0)
    sandbox_memory_mb: int = Field(default=512, ge=32)
    rounding_tolerance: float = Field(default=0.01, ge=0)  # relative; only where a step rounds
    worker_memory_mb: int = Field(default=1024, ge=64)  # sympy worker headroom (RLIMIT_AS)
    chunk_size: int = Field(default=16, ge=1)  # claims sent to a sympy worker at a time
    run_code: bool = True  # run ```python blocks of a step in the sandbox
    # "bubblewrap": kernel namespaces (code checks are off, with a warning, where it cannot start);
    # "process-unsafe": a limited process that can read host files and reach the network (opt-in)
    code_isolation: Literal["bubblewrap", "process-unsafe"] = "bubblewrap"


class LeanConfig(_Section):
    """Lean 4 step verification (Safe)."""

    enabled: bool = False
    project: str | None = None  # path to a Lake project with Mathlib; env PRMFORGE_LEAN_PROJECT
    backend: Literal["batch", "leandojo"] = "batch"
    tactics: tuple[str, ...] = ("norm_num", "decide", "omega", "simp", "linarith", "ring_nf", "positivity")
    batch_size: int = Field(default=64, ge=1)
    batch_timeout_s: float = Field(default=300.0, gt=0)
    memory_mb: int = Field(default=8192, ge=256)
    llm_formalize: bool = False  # ask the policy when no template fits
    cache_dir: str | None = None  # default: <output root>/.cache/lean
    statement_timeout_s: float = Field(default=60.0, gt=0)  # one statement re-run alone (Safe: 60 s)
    formalize_max_tokens: int = Field(default=512, ge=16)  # LLM formalization reply length
    # backend "leandojo": a traced repo (URL or local path + commit) and a file in it that
    # imports Mathlib; commands run in the environment at line leandojo_line of that file.
    leandojo_repo: str | None = None
    leandojo_commit: str | None = None
    leandojo_file: str | None = None
    leandojo_line: int = Field(default=0, ge=0)


class JudgeConfig(_Section):
    """The LLM step judge grounded in the tool (GroundedPRM's verifier), docs/algorithms.md.

    It reads the question, the previous steps, the step and the tool's result and answers
    correct/incorrect with a reason. Runs when ``enabled``, or when ``fuse.rule = "judge"`` or
    ``fuse.judge`` is not ``"off"``."""

    enabled: bool = False
    # None: the policy model judges (same backend, one more batched generate call per round);
    # else a separate judge model on ``backend`` (default: the policy's backend).
    model: str | None = None
    backend: Literal["embedded", "vllm", "openai"] | None = None
    base_url: str | None = None  # openai backend of a separate judge
    max_tokens: int = Field(default=192, ge=8)
    temperature: float = Field(default=0.0, ge=0)  # greedy: the same step gets the same verdict

    def policy_config(self, policy: PolicyConfig) -> PolicyConfig | None:
        """The separate judge model's policy settings, or None when the policy model judges.

        The policy's settings with the judge's model, backend and URL: the one place both
        ``build`` and ``eval run`` get the judge from (flows/resources.py)."""
        if self.model is None:
            return None
        return policy.model_copy(
            update={
                "model": self.model,
                "backend": self.backend or policy.backend,
                "base_url": self.base_url or policy.base_url,
            }
        )


class FuseConfig(_Section):
    """How tool verdict, Lean state and MC value become a step label."""

    rule: Literal["hybrid", "mc", "tool", "lean", "judge"] = "hybrid"
    mc_threshold: float = Field(default=0.0, ge=0, le=1)  # MC label positive when mc_value > this
    after_first_error: Literal["truncate", "negative"] = "truncate"
    consensus_filter: bool = False  # keep only paths whose MC and verifier agree on the first error
    # How the hybrid rule uses the judge (labelers/fuse.py): "off" (stored, not fused),
    # "verifier" (a verifier of lower rank than tool and Lean), "tiebreak" (decides only where
    # neither a verifier nor MC does).
    judge: Literal["off", "verifier", "tiebreak"] = "off"
    # Hybrid path rule (labelers/fuse.py): on a path with a disproved step, MC zeros before it
    # that no measured positive precedes (a zero at step 0: the question is never sampled) are
    # not taken as errors; the disproved step is the first error.
    zero_without_drop_yields: bool = True


class OutputConfig(_Section):
    """Where shards go."""

    root: str = "prmforge-data"  # local path or fsspec URI (s3://bucket/prefix)
    batch_size: int = Field(default=8, ge=1)  # problems per batch = per shard
    # A named dataset the build grows: only problems it does not hold under the same labeling
    # key are labeled (docs/operations.md "Datasets"). None: a standalone build of every problem.
    dataset: str | None = None
    # How long a running build's claim on its problems lives without a heartbeat (a killed run's
    # problems become eligible again after this).
    claim_lease_s: float = Field(default=600.0, gt=0)


class FlowConfig(_Section):
    """Prefect orchestration."""

    task_runner: Literal["threads", "processes", "dask", "ray"] = "threads"
    max_workers: int = Field(default=1, ge=1)
    retries: int = Field(default=2, ge=0)
    retry_delay_s: float = Field(default=2.0, ge=0)
    dask_address: str | None = None  # scheduler address; None = start a LocalCluster
    dask_processes: bool = True  # LocalCluster workers as processes (False: threads in this process)
    ray_address: str | None = None  # ray cluster address ("auto", "ray://host:10001"); None = local Ray
    # Models (policy and judge engines) a worker process keeps loaded between builds; beyond it
    # the least recently used one not in use is closed (flows/resources.py). Sampling settings
    # never need a new model, so schedules differing only in them share one.
    max_held_models: int = Field(default=2, ge=1)


class BuildConfig(_Section):
    """Everything a build needs. ``config_hash`` identifies the labeling-relevant part."""

    name: str = "build"
    seed: int = 0
    problems: ProblemsConfig = ProblemsConfig()
    policy: PolicyConfig = PolicyConfig()
    search: SearchConfig = SearchConfig()
    tool: ToolConfig = ToolConfig()
    lean: LeanConfig = LeanConfig()
    fuse: FuseConfig = FuseConfig()
    judge: JudgeConfig = JudgeConfig()
    output: OutputConfig = OutputConfig()
    flow: FlowConfig = FlowConfig()

    def config_hash(self) -> str:
        """sha256 (16 hex) of the canonical JSON of everything that changes rows.

        Output location and orchestration settings are left out: moving a build or running it
        with more workers must not change its identity.
        """
        exclude = {
            "output": {"root", "dataset", "claim_lease_s"}, "flow": True, "name": True, **self._judge_exclusion()
        }
        payload = self.model_dump(mode="json", exclude=exclude)
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def labeling_hash(self) -> str:
        """sha256 (16 hex) of the sections that change a problem's labels.

        Seed, search (MCTS and Monte Carlo), tool, Lean, fusion and judge settings, and the
        policy's sampling settings; not the problem file, output, orchestration, or how the policy
        is reached (URL, key, concurrency, timeouts, threads: same model, same rows), nor tool/Lean
        parallelism and locations. The policy model id is a separate part of the labeling key.
        Policy keys not listed as transport count as label-changing, so a new setting errs
        towards relabeling. The judge counts only when it runs (as in :meth:`config_hash`).
        """
        policy_transport = {
            "backend", "model", "base_url", "api_key", "max_concurrency", "request_timeout_s",
            "max_retries", "n_threads", "gpu_memory_utilization",
        }
        exclude: dict = {
            "policy": policy_transport,
            "tool": {"workers", "chunk_size"},  # parallelism only
            "lean": {"project", "cache_dir", "batch_size"},  # where Lean runs, not what it checks
            "judge": {"base_url"},  # where a separate judge is served, not which model judges
            **self._judge_exclusion(),
        }
        payload = self.model_dump(
            mode="json", include={"seed", "policy", "search", "tool", "lean", "fuse", "judge"}, exclude=exclude
        )
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def _judge_exclusion(self) -> dict:
        """Without the judge, its settings are left out of the hashes, so builds without it keep
        the hashes they had before the judge existed."""
        return {} if self.judge_runs else {"judge": True, "fuse": {"judge"}}

    @property
    def judge_runs(self) -> bool:
        """Whether the step judge runs in this build (asked for, or needed by fusion)."""
        return self.judge.enabled or self.fuse.rule == "judge" or self.fuse.judge != "off"

    def with_overrides(self, overrides: dict[str, object]) -> "BuildConfig":
        """A copy with dotted-key overrides applied (``{"search.rounds": 4}``), validated."""
        data = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return BuildConfig.model_validate(data)


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
    step_separator: str = "\n"  # PRMTrainer: appended to each step; its last token carries the label
    train_on_last_step_only: bool = False
    gradient_checkpointing: bool = True
    bf16: bool | None = None
    seed: int = 0
    logging_steps: int = Field(default=10, ge=1)
