"""Per-process holder of the expensive labeling resources: the policy engine, a separate judge
model, the tool verifier and the Lean verifier — the one holder of builds and of ``eval run``.

A model is loaded once per worker process and shared by every task that runs there — never one
engine per task or per batch. With the thread runner all batch tasks share one engine, so each
resource is wrapped with a lock: llama.cpp (and the tool verifier's worker pool) are not safe to
call from several threads at once, and a single CPU engine gains nothing from concurrent calls.
Servers reached over HTTP (``openai`` backend) take concurrent calls themselves; their client
still goes through the lock, which costs little since one ``generate`` call already carries a
whole round of requests.

Memory is bounded: engines are keyed by what needs a new model (:func:`policy_key`), not by
sampling settings, and at most ``flow.max_held_models`` are held (least recently used closed
first, never one a batch in flight holds).
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_schemas.errors import ConfigError, InputError
from labelers.config import BuildConfig, PolicyConfig
from labelers.policy.base import (
    GenerationRequest,
    GenerationResult,
    Policy,
    ResultHandler,
    StreamingPolicy,
    TokenUsage,
    generate_in_rounds,
)

PolicyFactory = Callable[[PolicyConfig], Policy]
# A factory given as "package.module:attribute" travels to process/Dask/Ray workers and into
# deployment parameters as plain text.
PolicyFactorySpec = PolicyFactory | str | None

DEFAULT_POLICY_FACTORY = "labelers.policy.factory:make_policy"

log = logging.getLogger(__name__)


def resolve_policy_factory(spec: PolicyFactorySpec) -> PolicyFactory:
    """The factory callable for ``spec`` (a callable, ``"module:attr"`` or None = the default)."""
    if spec is None:
        spec = DEFAULT_POLICY_FACTORY
    if callable(spec):
        return spec
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        raise ConfigError(f"policy factory {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"policy factory {spec!r} cannot be imported: {error}") from None
    if not callable(factory):
        raise ConfigError(f"policy factory {spec!r} is not callable")
    return factory


def factory_label(spec: PolicyFactorySpec) -> str:
    """A stable text naming a factory (part of the holder's cache key)."""
    if spec is None:
        return DEFAULT_POLICY_FACTORY
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"


class LockedPolicy:
    """A policy whose ``generate`` is serialized by a lock (see the module docstring)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def usage(self) -> TokenUsage:
        return self.inner.usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        with self._lock:
            return self.inner.generate(requests)

    def generate_streaming(self, requests: Sequence[GenerationRequest], on_result: ResultHandler) -> None:
        """The inner policy's streaming run (rounds of ``generate`` where it cannot stream), under
        the lock: without this a labeling pass that holds its policy through this wrapper is
        driven in rounds, each draining to its slowest rollout (labelers/search/scheduler.py)."""
        with self._lock:
            if isinstance(self.inner, StreamingPolicy):
                self.inner.generate_streaming(requests, on_result)
            else:
                generate_in_rounds(self.inner.generate, requests, on_result)

    def live_sampled_tokens(self) -> int:
        """Tokens sampled so far, a run in progress included, where the backend counts them
        (EmbeddedPolicy.live_sampled_tokens; progress lines read it without the lock), else the
        finished calls' completion tokens."""
        live = getattr(self.inner, "live_sampled_tokens", None)
        return live() if live is not None else self.inner.usage.completion_tokens

    def close(self) -> None:
        with self._lock:
            self.inner.close()


class LockedVerifier:
    """A step verifier (tool or Lean) whose ``check_steps`` is serialized by a lock."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def check_steps(self, steps: Sequence[Any]) -> list[Any]:
        with self._lock:
            return self.inner.check_steps(steps)

    def close(self) -> None:
        with self._lock:
            self.inner.close()


@dataclass(frozen=True)
class WorkerResources:
    """What one batch task needs besides its problems: shared within the process."""

    policy: LockedPolicy
    tool: LockedVerifier | None
    lean: LockedVerifier | None
    judge: LockedPolicy | None = None  # a separate judge model (judge.model); None: the policy judges


def _section_key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def policy_key(policy: PolicyConfig, policy_factory: PolicyFactorySpec = None) -> str:
    """What needs a new engine: the factory and, for the built-in backends, only the fields
    ``make_policy`` reads (model file, context size, threads, ...; labelers/policy/factory.py).
    Sampling settings (temperature, top_p, token limits) travel with each request and are never
    part of the key. A custom factory may read any other field, so all but sampling count."""
    from labelers.policy.factory import SAMPLING_FIELDS, engine_fields

    if factory_label(policy_factory) == DEFAULT_POLICY_FACTORY:
        fields: dict[str, Any] = engine_fields(policy)
    else:
        fields = policy.model_dump(mode="json", exclude=set(SAMPLING_FIELDS))
    return _section_key(factory_label(policy_factory), fields)


class _HeldPool:
    """Resources of one kind by key, least recently used first, with leases.

    ``bound`` caps how many are held: making one more closes the least recently used entries
    that no lease holds (a batch in flight keeps its engine; the pool may exceed the bound while
    leases pin more than it allows, and shrinks at the next miss).
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Any] = OrderedDict()
        self.leases: dict[str, int] = {}

    def get(self, key: str) -> Any | None:
        resource = self.entries.get(key)
        if resource is not None:
            self.entries.move_to_end(key)
        return resource

    def put(self, key: str, resource: Any) -> None:
        self.entries[key] = resource

    def evict(self, bound: int, keep: set[str]) -> list[tuple[str, Any]]:
        """Remove (not close) entries beyond ``bound``, oldest first, skipping leased and kept ones."""
        removed = []
        for key in list(self.entries):
            if len(self.entries) <= bound:
                break
            if key in keep or self.leases.get(key, 0) > 0:
                continue
            removed.append((key, self.entries.pop(key)))
        return removed

    def lease(self, key: str, delta: int) -> None:
        count = self.leases.get(key, 0) + delta
        if count > 0:
            self.leases[key] = count
        else:
            self.leases.pop(key, None)


@dataclass(frozen=True)
class _Keys:
    policy: str
    judge: str | None
    tool: str | None
    lean: str | None


class ResourceHolder:
    """Loads each resource on first use and hands the same instance to every later task.

    The one holder of builds (``PROCESS_RESOURCES``, one per worker process) and of ``eval run``
    (its own instance), so the two cannot disagree about which model samples, which judges, which
    verifies: the policy, the separate judge model (``judge.model``), the tool verifier and the
    Lean verifier.

    Keys: a policy (and a judge model) by what needs a new engine (:func:`policy_key`), so runs
    that differ only in sampling settings share one model; the tool verifier by its section; the
    Lean verifier by its section and the policy it may ask to formalize. At most
    ``flow.max_held_models`` engines are held (and as many tool and Lean verifiers): a new one
    closes the least recently used that no batch in flight holds (:meth:`lease`), with the Lean
    verifiers tied to it. Token usage of closed engines is kept for :meth:`usage`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies = _HeldPool()
        self._tools = _HeldPool()
        self._leans = _HeldPool()
        self._lean_policy: dict[str, str] = {}  # Lean verifier key -> the policy key it uses
        self._closed_usage = TokenUsage()
        self._closed_tokens = 0  # live_tokens of the engines closed so far

    # -- one resource each (eval asks for them one by one, only those its signals need) --

    def policy(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> LockedPolicy:
        return self._load(config, policy_factory, policy=True).policy

    def judge(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> LockedPolicy | None:
        """The separate judge model's policy when ``judge.model`` is set, else None (the policy judges)."""
        if config.judge.policy_config(config.policy) is None:
            return None
        return self._load(config, policy_factory, judge=True).judge

    def tool(self, config: BuildConfig) -> LockedVerifier:
        """The tool verifier of ``config.tool`` (made even when the build leaves it disabled)."""
        return self._load(config, None, tool=True).tool  # type: ignore[return-value]

    def lean(self, config: BuildConfig) -> LockedVerifier:
        """Lean as a signal of its own (``eval run --labels lean``): enabled whatever the config
        says, with no policy to formalize and no cache beside a build (no model is loaded for it)."""
        enabled = config.model_copy(update={"lean": config.lean.model_copy(update={"enabled": True})})
        return self._load(enabled, None, lean=True, lean_standalone=True).lean  # type: ignore[return-value]

    # -- what a batch task needs --

    def resources(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> WorkerResources:
        """The policy, judge model (when the judge runs and ``judge.model`` is set), tool (if
        enabled) and Lean verifier (if enabled) of a build."""
        return self._load(config, policy_factory, policy=True, judge=config.judge_runs, tool=config.tool.enabled,
                          lean=config.lean.enabled)

    @contextmanager
    def lease(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> Iterator[WorkerResources]:
        """:meth:`resources`, held for the ``with`` block: nothing it returns is closed meanwhile."""
        with self._lock:
            held, keys = self._load_locked(config, policy_factory, policy=True, judge=config.judge_runs,
                                           tool=config.tool.enabled, lean=config.lean.enabled)
            self._lease(keys, 1)
        try:
            yield held
        finally:
            with self._lock:
                self._lease(keys, -1)

    def _lease(self, keys: _Keys, delta: int) -> None:
        for pool, key in ((self._policies, keys.policy), (self._policies, keys.judge), (self._tools, keys.tool),
                          (self._leans, keys.lean)):
            if key is not None:
                pool.lease(key, delta)

    def _load(self, config: BuildConfig, policy_factory: PolicyFactorySpec, **wanted: bool) -> WorkerResources:
        # One lock for loading: two threads asking at once must not load the model twice.
        with self._lock:
            return self._load_locked(config, policy_factory, **wanted)[0]

    def _load_locked(self, config: BuildConfig, policy_factory: PolicyFactorySpec, policy: bool = False,
                     judge: bool = False, tool: bool = False, lean: bool = False,
                     lean_standalone: bool = False) -> tuple[WorkerResources, _Keys]:
        bound = config.flow.max_held_models
        made_policy_key = policy_key(config.policy, policy_factory)
        judge_config = config.judge.policy_config(config.policy) if judge else None
        judge_key = None if judge_config is None else policy_key(judge_config, policy_factory)
        keep = {made_policy_key} | ({judge_key} if judge_key else set())
        needs_policy = policy or (lean and not lean_standalone)
        held_policy = None
        if needs_policy:
            held_policy = self._engine(made_policy_key, config.policy, policy_factory, bound, keep)
        held_judge = None
        if judge_config is not None and judge_key is not None:
            held_judge = self._engine(judge_key, judge_config, policy_factory, bound, keep)
        held_tool, tool_key = None, None
        if tool:
            tool_key = _section_key(config.tool.model_dump(mode="json"))
            held_tool = self._tools.get(tool_key)
            if held_tool is None:
                from labelers.verify.tool import ToolStepVerifier

                held_tool = LockedVerifier(ToolStepVerifier(config.tool))
                self._tools.put(tool_key, held_tool)
                self._close_removed(self._tools.evict(bound, {tool_key}))
        held_lean, lean_key = None, None
        if lean:
            # The Lean verifier may ask the policy to formalize, so it is tied to that policy.
            owner = None if lean_standalone else made_policy_key
            lean_key = _section_key(config.lean.model_dump(mode="json"), owner)
            held_lean = self._leans.get(lean_key)
            if held_lean is None:
                from labelers.verify.lean import make_lean_verifier

                # Checked statements are cached beside the builds, so a rerun recompiles nothing.
                lean_cache = None if lean_standalone else f"{config.output.root.rstrip('/')}/.cache/lean"
                held_lean = LockedVerifier(make_lean_verifier(config.lean, held_policy, default_cache_dir=lean_cache))
                self._leans.put(lean_key, held_lean)
                if owner is not None:
                    self._lean_policy[lean_key] = owner
                self._close_removed(self._leans.evict(bound, {lean_key}))
        resources = WorkerResources(policy=held_policy, tool=held_tool, lean=held_lean, judge=held_judge)  # type: ignore[arg-type]
        return resources, _Keys(made_policy_key, judge_key, tool_key, lean_key)

    def _engine(self, key: str, policy: PolicyConfig, policy_factory: PolicyFactorySpec, bound: int,
                keep: set[str]) -> LockedPolicy:
        engine = self._policies.get(key)
        if engine is None:
            # Close before loading: the evicted model's memory is free for the new one.
            self._close_policies(self._policies.evict(bound - 1, keep))
            engine = LockedPolicy(resolve_policy_factory(policy_factory)(policy))
            self._policies.put(key, engine)
        return engine

    def _close_policies(self, removed: list[tuple[str, Any]]) -> None:
        """Close evicted engines and the Lean verifiers that formalize with them (those first)."""
        for policy_key_, _ in removed:
            tied = [key for key, owner in self._lean_policy.items() if owner == policy_key_]
            self._close_removed([(key, self._leans.entries.pop(key)) for key in tied if key in self._leans.entries])
            for key in tied:
                self._lean_policy.pop(key, None)
        for _, engine in removed:
            self._closed_usage.add(engine.usage)
            self._closed_tokens += engine.live_sampled_tokens()
        self._close_removed(removed)

    def _close_removed(self, removed: list[tuple[str, Any]]) -> None:
        for key, resource in removed:
            self._lean_policy.pop(key, None)
            try:
                resource.close()
            except Exception as error:  # noqa: BLE001 - an old engine failing to close must not fail the new build
                log.warning("closing an evicted resource failed: %s: %s", type(error).__name__, error)

    def held_policies(self) -> int:
        """How many engines (policy and judge models) are held now."""
        with self._lock:
            return len(self._policies.entries)

    def usage(self) -> TokenUsage:
        """Token usage summed over the policies used in this process, closed ones included."""
        total = TokenUsage()
        with self._lock:
            policies = list(self._policies.entries.values())
            total.add(self._closed_usage)
        for policy in policies:
            total.add(policy.usage)
        return total

    def live_tokens(self) -> int:
        """Tokens the policies used in this process have sampled, runs in progress included
        (LockedPolicy.live_sampled_tokens; for live progress: ``usage`` counts a streamed run only
        when it ends)."""
        with self._lock:
            policies = list(self._policies.entries.values())
            closed = self._closed_tokens
        return closed + sum(policy.live_sampled_tokens() for policy in policies)

    def close_all(self) -> None:
        """Close and forget every held resource (verifiers first: Lean may use the policy)."""
        with self._lock:
            held: list[LockedPolicy | LockedVerifier] = [
                *self._leans.entries.values(),
                *self._tools.entries.values(),
                *self._policies.entries.values(),
            ]
            for engine in self._policies.entries.values():
                self._closed_usage.add(engine.usage)
                self._closed_tokens += engine.live_sampled_tokens()
            for pool in (self._leans, self._tools, self._policies):
                pool.entries.clear()
            self._lean_policy.clear()
        for resource in held:
            try:
                resource.close()
            except Exception:  # noqa: BLE001 - closing at shutdown must not mask the build's result
                pass

    def for_config(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None,
                   prm_dir: Path | None = None) -> "ConfigResources":
        """The resources of one config, each made on first use (``eval run``)."""
        return ConfigResources(self, config, policy_factory, prm_dir)


class ConfigResources:
    """One config's view of a holder: ``policy()``, ``step_judge()``, ``tool()``, ``lean()`` (and
    ``prm()``, a trained PRM, eval only), each made on first use (``eval run`` asks only for those
    its signals need)."""

    def __init__(self, holder: ResourceHolder, config: BuildConfig, policy_factory: PolicyFactorySpec = None,
                 prm_dir: Path | None = None) -> None:
        self.holder = holder
        self.config = config
        self.policy_factory = policy_factory
        self.prm_dir = prm_dir
        self._prm: Any = None

    def policy(self) -> LockedPolicy:
        return self.holder.policy(self.config, self.policy_factory)

    def step_judge(self) -> LockedPolicy | None:
        """A separate judge model's policy when ``judge.model`` is set, else None (the policy judges)."""
        return self.holder.judge(self.config, self.policy_factory)

    def tool(self) -> LockedVerifier:
        return self.holder.tool(self.config)

    def lean(self) -> LockedVerifier:
        return self.holder.lean(self.config)

    def prm(self) -> Any:
        if self._prm is None:
            if self.prm_dir is None:
                raise InputError("--labels prm needs --prm DIR (a model trained by prmforge train)")
            from labelers.training import PRMScorer

            self._prm = PRMScorer(self.prm_dir)
        return self._prm

    def close(self) -> None:
        self.holder.close_all()


def prewarm(holder: ResourceHolder, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> threading.Thread:
    """Load this process's resources in a background thread (returns the started thread).

    The CLI calls it before the flow starts, so loading the model (and assembling its GGUF file
    on the first run) overlaps the start of Prefect's temporary server. An error here is left
    for the batch task: it asks the holder again, gets the same error, and retries/records it.
    """

    def load() -> None:
        try:
            holder.resources(config, policy_factory)
        except Exception:  # noqa: BLE001 - reported by the task that needs the resources
            pass

    thread = threading.Thread(target=load, name="prmforge-prewarm", daemon=True)
    thread.start()
    return thread


# The one process-global of the project, and why: Prefect task runners (threads, process pools,
# Dask and Ray workers) give a task no handle on "its" worker, so the only place a worker process
# can keep a loaded model between tasks is module state. Loading a model per task would cost
# seconds to minutes and duplicate gigabytes of weights. Everything else is passed explicitly.
PROCESS_RESOURCES = ResourceHolder()
atexit.register(PROCESS_RESOURCES.close_all)
