"""Per-process holder of the expensive labeling resources: the policy engine and the verifiers.

A model is loaded once per worker process and shared by every task that runs there — never one
engine per task or per batch. With the thread runner all batch tasks share one engine, so each
resource is wrapped with a lock: llama.cpp (and the tool verifier's worker pool) are not safe to
call from several threads at once, and a single CPU engine gains nothing from concurrent calls.
Servers reached over HTTP (``openai`` backend) take concurrent calls themselves; their client
still goes through the lock, which costs little since one ``generate`` call already carries a
whole round of requests.
"""

from __future__ import annotations

import atexit
import importlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from data_schemas.errors import ConfigError
from labelers.config import BuildConfig, PolicyConfig
from labelers.policy.base import GenerationRequest, GenerationResult, Policy, TokenUsage

PolicyFactory = Callable[[PolicyConfig], Policy]
# A factory given as "package.module:attribute" travels to process/Dask/Ray workers and into
# deployment parameters as plain text.
PolicyFactorySpec = PolicyFactory | str | None

DEFAULT_POLICY_FACTORY = "labelers.policy.factory:make_policy"


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


def _section_key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


class ResourceHolder:
    """Loads each resource on first use and hands the same instance to every later task.

    Keys are the config sections that define the resource (plus the policy factory), so two
    builds with the same policy settings in one process share an engine, and a build with a
    different model gets its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[str, LockedPolicy] = {}
        self._tools: dict[str, LockedVerifier] = {}
        self._leans: dict[str, LockedVerifier] = {}

    def resources(self, config: BuildConfig, policy_factory: PolicyFactorySpec = None) -> WorkerResources:
        # One lock for loading: two threads asking at once must not load the model twice.
        with self._lock:
            policy_key = _section_key(factory_label(policy_factory), config.policy.model_dump(mode="json"))
            policy = self._policies.get(policy_key)
            if policy is None:
                policy = LockedPolicy(resolve_policy_factory(policy_factory)(config.policy))
                self._policies[policy_key] = policy
            tool = None
            if config.tool.enabled:
                tool_key = _section_key(config.tool.model_dump(mode="json"))
                tool = self._tools.get(tool_key)
                if tool is None:
                    from labelers.verify.tool import ToolStepVerifier

                    tool = LockedVerifier(ToolStepVerifier(config.tool))
                    self._tools[tool_key] = tool
            lean = None
            if config.lean.enabled:
                # The Lean verifier may ask the policy to formalize, so it is tied to that policy.
                lean_key = _section_key(config.lean.model_dump(mode="json"), policy_key)
                lean = self._leans.get(lean_key)
                if lean is None:
                    from labelers.verify.lean import make_lean_verifier

                    # Checked statements are cached beside the builds, so a rerun recompiles nothing.
                    lean_cache = f"{config.output.root.rstrip('/')}/.cache/lean"
                    lean = LockedVerifier(make_lean_verifier(config.lean, policy, default_cache_dir=lean_cache))
                    self._leans[lean_key] = lean
            return WorkerResources(policy=policy, tool=tool, lean=lean)

    def usage(self) -> TokenUsage:
        """Token usage summed over the policies held in this process (for live progress)."""
        total = TokenUsage()
        with self._lock:
            policies = list(self._policies.values())
        for policy in policies:
            total.add(policy.usage)
        return total

    def close_all(self) -> None:
        """Close and forget every held resource (verifiers first: Lean may use the policy)."""
        with self._lock:
            held: list[LockedPolicy | LockedVerifier] = [
                *self._leans.values(),
                *self._tools.values(),
                *self._policies.values(),
            ]
            self._leans.clear()
            self._tools.clear()
            self._policies.clear()
        for resource in held:
            try:
                resource.close()
            except Exception:  # noqa: BLE001 - closing at shutdown must not mask the build's result
                pass


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
