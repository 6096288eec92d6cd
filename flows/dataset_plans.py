"""Wiring for builds that grow a named dataset: plan under the dataset lock, claim, resume.

The rules (labeling key, eligibility, claims, views) live in data_schemas/datasets.py and the
catalog; this module applies them to a build config and its problems.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_schemas.catalog import Catalog
from data_schemas.datasets import (
    ClaimHeartbeat,
    CurrentProblem,
    DatasetLock,
    DatasetPlan,
    dataset_section,
    labeling_key,
    live_claims,
    plan_problems,
    problem_content_hash,
    utc_now_precise,
)
from data_schemas.errors import ConfigError, PrmforgeError
from data_schemas.manifest import Manifest, new_manifest, write_manifest
from data_schemas.records import Problem
from data_schemas.sequence import next_seq
from labelers.config import BuildConfig


def policy_model_id(config: BuildConfig) -> str:
    """The policy model part of the labeling key: backend and model as configured."""
    return f"{config.policy.backend}:{config.policy.model}"


def wanted_keys(problems: Sequence[Problem], config: BuildConfig) -> dict[str, str]:
    """problem_id -> the labeling key this config gives it, in input order."""
    model, labeling = policy_model_id(config), config.labeling_hash()
    return {
        p.problem_id: labeling_key(
            p.problem_id, problem_content_hash(p.source, p.question, p.gold_answer), model, labeling
        )
        for p in problems
    }


def current_problems(
    root: str, dataset: str, relabel_where: str | None = None
) -> tuple[dict[str, CurrentProblem], set[str]]:
    """(the dataset's current state per problem, ids matching ``relabel_where`` over dataset_problems)."""
    with Catalog(root, dataset=dataset) as catalog:
        rows = catalog.query("SELECT problem_id, labeling_key, status, build_id FROM dataset_problems").to_pylist()
        matching: set[str] = set()
        if relabel_where is not None:
            selected = catalog.query(f"SELECT problem_id FROM dataset_problems WHERE ({relabel_where})")
            matching = set(selected.column(0).to_pylist())
    current = {r["problem_id"]: CurrentProblem(r["labeling_key"], r["status"], r["build_id"]) for r in rows}
    return current, matching


def plan_dataset_build(
    config: BuildConfig,
    problems: Sequence[Problem],
    build_id: str,
    relabel: bool = False,
    relabel_where: str | None = None,
) -> tuple[DatasetPlan, Manifest, ClaimHeartbeat | None]:
    """Plan a new build of ``config.output.dataset``: write its running manifest, start its claim.

    Under the dataset lock (heartbeated, so planning may take as long as reading the dataset
    takes): read the current state and the live claims of other runs, choose the problems, take
    the build's plan sequence number, then — after checking the lock is still ours — write the
    claim and the running manifest (so the next planner sees them). The claim's heartbeat starts
    as the claim is written and is returned (None when nothing was selected): the caller stops it
    when the build ends. ``relabel`` forces every held problem, or with ``relabel_where`` those
    whose ``dataset_problems`` row matches the SQL predicate. The manifest is written even when
    no problem is selected (the caller finishes it as an empty build: a record that the run
    found nothing new).
    """
    dataset = config.output.dataset
    if dataset is None:
        raise ValueError("plan_dataset_build needs config.output.dataset")
    if relabel_where is not None and not relabel:
        raise ConfigError("--where selects problems to relabel: give it with --relabel")
    root = config.output.root
    wanted = wanted_keys(problems, config)
    claim: ClaimHeartbeat | None = None
    with DatasetLock(root, dataset) as lock:
        current, matching = current_problems(root, dataset, relabel_where)
        claimed = {pid for other in live_claims(root, dataset, exclude=build_id) for pid in other.problem_ids}
        forced = None if not relabel else (matching if relabel_where is not None else set(wanted))
        plan = plan_problems(dataset, wanted, current, claimed, forced)
        plan_seq = next_seq(root, dataset, "plan", build_id)
        manifest = new_manifest(build_id, config, policy_model=config.policy.model)
        manifest.dataset = dataset_section(plan, policy_model_id(config), config.labeling_hash(), plan_seq)
        lock.check()  # fencing: a planner whose lock was broken while it stalled claims nothing
        if plan.selected:
            claim = ClaimHeartbeat(root, dataset, build_id, list(plan.selected), config.output.claim_lease_s).start()
        try:
            write_manifest(root, manifest)
        except BaseException:
            if claim is not None:
                claim.stop()
            raise
    return plan, manifest, claim


def commit_section(root: str, manifest: Manifest) -> dict:
    """The ``dataset`` section of a dataset build about to commit: its commit sequence number taken now.

    The complete manifest written with this section is the commit (data_schemas/sequence.py).
    """
    section = dict(manifest.dataset or {})
    section["commit_seq"] = next_seq(root, section["name"], "commit", manifest.build_id)
    section["completed_at"] = utc_now_precise()
    return section


def refuse_complete(manifest: Manifest, standalone_too: bool = True) -> None:
    """A one-line error for resuming a build that is already complete (it would change nothing;
    a dataset build re-committed would make its old labels look new). ``standalone_too=False``
    lets a complete build in no dataset run again (the API's rerun: shards verified and reused)."""
    if not manifest.is_complete or (not standalone_too and not (manifest.dataset or {}).get("name")):
        return
    section = manifest.dataset or {}
    where = ""
    hint = "start a new build"
    if section.get("name"):
        seq = section.get("commit_seq")
        where = f" (committed to dataset {section['name']!r}" + (f" as #{seq})" if seq is not None else ")")
        hint = "start a new build (--relabel labels its problems again)"
    raise PrmforgeError(f"build {manifest.build_id!r} is already complete{where}; nothing to resume: {hint}")


def planned_problems(problems: Sequence[Problem], manifest: Manifest, config: BuildConfig) -> list[Problem]:
    """The problems a dataset build planned, in input order; refuses a changed problem file.

    A resumed build must label exactly what it planned with the same content: a planned problem
    that is missing from the input or whose labeling key changed is a one-line error.
    """
    planned: dict[str, str] = dict((manifest.dataset or {}).get("labeling_keys") or {})
    wanted = wanted_keys(problems, config)
    changed = [pid for pid, key in planned.items() if wanted.get(pid) != key]
    if changed:
        raise PrmforgeError(
            f"build {manifest.build_id!r} planned {len(planned)} problem(s) of dataset "
            f"{manifest.dataset['name']!r}; {len(changed)} of them (first: {changed[0]}) are missing from the "
            "problem file or changed since: restore the file, or start a new build"
        )
    return [p for p in problems if p.problem_id in planned]
