"""Named datasets: many builds that grow one set of labeled problems (docs/operations.md "Datasets").

A *dataset* is a name under the data root. Each build that grows it records in its manifest a
``dataset`` section: the dataset name and, for every problem it labels, the problem's
*labeling key*::

    labeling key = sha256(problem_id, content hash, policy model id, labeling config hash,
                          label schema version)[:16]

The dataset's current state is derived from the manifests alone (no second truth to drift):
for every problem, the rows of the committed build that labeled it with the highest *plan
sequence number* (a labeled or skipped outcome beats a failed one). Sequence numbers come from
the dataset's sequence (data_schemas/sequence.py: exclusive create, no clock): a build takes
``plan_seq`` when it plans and ``commit_seq`` when it commits; its complete manifest, written
atomically, carries both and is the commit. Ranking by the plan number means a killed build
resumed days later never outranks a build planned — and committed — after it; views of past
states, diff and "last build" follow ``commit_seq``. Wall-clock times are only informational.
The catalog exposes that state as the ``dataset_*`` views (data_schemas/catalog.py). A build
plans its problems against it: a problem is eligible when the dataset has no current row for
it, its current row failed, or its current labeling key differs from the key this build would
give it.

Files under ``<root>/datasets/<name>/``:

``.lock``                 held while a build plans (fenced, heartbeated lock: data_schemas/locks.py)
``.compact.lock``         held while a compaction runs (one at a time; same kind of lock)
``seq/<n>.json``          the dataset's sequence: one file per number handed out (plan or commit)
``claims/<build_id>.json`` a running build's claim on its planned problems, with a lease the
                          build renews while it runs; a claim whose file is older than its lease
                          on the storage's clock (a killed run) is ignored
``compacted.json``        the current compaction (files + checksums + covered builds)
``compacted/<gen>/...``   the compacted Parquet files of a generation
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from data_schemas.errors import PrmforgeError
from data_schemas.locks import FencedLock, Heartbeat, storage_now
from data_schemas.manifest import Manifest
from data_schemas.schemas import SCHEMA_VERSION
from data_schemas.shards import DataRoot, check_name, file_sha256, resolve_root, write_bytes_atomic

DATASETS_DIR = "datasets"
LOCK_NAME = ".lock"
COMPACT_LOCK_NAME = ".compact.lock"
COMPACTED_POINTER = "compacted.json"
#: A planning lock whose heartbeat is older than this (storage clock) is a leftover of a killed planner.
STALE_LOCK_S = 120.0
#: The same for the compaction lock (its holder heartbeats too, however long it runs).
STALE_COMPACT_LOCK_S = 120.0
#: How often a lock holder touches its lock (at most a quarter of the stale time).
LOCK_HEARTBEAT_S = 10.0
#: How long a planner waits for another run's planning (alive: heartbeating) before a one-line error.
PLAN_LOCK_WAIT_S = 600.0
#: Outcome statuses that mean "labeled under this key" (a failed problem is retried next run).
HELD_STATUSES = ("labeled", "skipped")


def check_dataset_name(name: str) -> str:
    return check_name("dataset name", name)


def dataset_dir(name: str) -> str:
    """Path of a dataset's directory relative to the data root."""
    return f"{DATASETS_DIR}/{check_dataset_name(name)}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def problem_content_hash(source: str, question: str, gold_answer: str) -> str:
    """What the labels of a problem depend on in the problem itself: an edited answer is a new problem."""
    return _digest(source, question, gold_answer)


def labeling_key(problem_id: str, content_hash: str, policy_model: str, labeling_hash: str) -> str:
    """sha256(problem id, content hash, policy model id, labeling config hash, schema version), 16 hex."""
    return _digest(problem_id, content_hash, policy_model, labeling_hash, SCHEMA_VERSION)


def utc_now_precise() -> str:
    """ISO 8601 UTC with microseconds: orders builds that finish within the same second."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


# -- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentProblem:
    """A problem's current state in a dataset (its row in ``dataset_problems``)."""

    labeling_key: str
    status: str
    build_id: str


@dataclass
class DatasetPlan:
    """Which problems a build of a dataset labels, and why the others are left out."""

    dataset: str
    selected: dict[str, str]  # problem_id -> labeling key, in input order
    new: int = 0  # never labeled in the dataset (or only failed)
    changed: int = 0  # held under another key: problem content, model or label config changed
    relabeled: int = 0  # held under this key, forced by --relabel
    already_labeled: int = 0  # held under this key: skipped
    claimed_elsewhere: int = 0  # being labeled by another running build of the dataset

    def counts(self) -> dict[str, int]:
        return {
            "new": self.new,
            "changed": self.changed,
            "relabeled": self.relabeled,
            "already_labeled": self.already_labeled,
            "claimed_elsewhere": self.claimed_elsewhere,
        }


def plan_problems(
    dataset: str,
    wanted: Mapping[str, str],
    current: Mapping[str, CurrentProblem],
    claimed: Iterable[str] = (),
    relabel: Iterable[str] | None = None,
) -> DatasetPlan:
    """Choose the problems to label.

    ``wanted``: problem_id -> labeling key this build would give it (input order). ``current``:
    the dataset's current state. ``claimed``: problem ids other running builds hold a live claim
    on (never taken, even with --relabel). ``relabel``: problem ids forced even when held under
    the same key (None: none).
    """
    claimed_ids = set(claimed)
    forced = set(relabel or ())
    plan = DatasetPlan(dataset, {})
    for problem_id, key in wanted.items():
        if problem_id in claimed_ids:
            plan.claimed_elsewhere += 1
            continue
        held = current.get(problem_id)
        if held is None or held.status not in HELD_STATUSES:
            plan.new += 1
        elif held.labeling_key != key:
            plan.changed += 1
        elif problem_id in forced:
            plan.relabeled += 1
        else:
            plan.already_labeled += 1
            continue
        plan.selected[problem_id] = key
    return plan


def dataset_section(
    plan: DatasetPlan, policy_model: str, labeling_hash: str, plan_seq: int | None = None
) -> dict[str, Any]:
    """The manifest's ``dataset`` section for a planned build (``plan_seq``: data_schemas/sequence.py)."""
    return {
        "name": plan.dataset,
        "policy_model": policy_model,
        "labeling_hash": labeling_hash,
        "plan": plan.counts(),
        "labeling_keys": dict(plan.selected),
        "plan_seq": plan_seq,  # the dataset sequence number taken when this build planned
        "commit_seq": None,  # taken when the build commits (its complete manifest carries it)
        "completed_at": None,  # informational: the committing machine's clock (utc_now_precise)
    }


def commit_order(manifest: Manifest) -> tuple[int, int, str, str]:
    """Sort key of a dataset's complete builds: by ``commit_seq``; builds committed before
    sequence numbers existed (none) come first, in their recorded completion order."""
    section = manifest.dataset or {}
    commit_seq = section.get("commit_seq")
    if commit_seq is None:
        return (0, 0, section.get("completed_at") or manifest.finished_at or "", manifest.build_id)
    return (1, int(commit_seq), "", manifest.build_id)


def dataset_manifests(manifests: Iterable[Manifest], name: str) -> list[Manifest]:
    """The complete builds of dataset ``name``, in commit order (:func:`commit_order`)."""
    members = [m for m in manifests if m.is_complete and m.dataset and m.dataset.get("name") == name]
    return sorted(members, key=commit_order)


def member_rows(manifests: Iterable[Manifest]) -> list[dict[str, Any]]:
    """One row per (build, problem) of complete dataset builds, with the build's lineage."""
    rows = []
    for manifest in manifests:
        section = manifest.dataset or {}
        finished = section.get("completed_at") or manifest.finished_at
        for problem_id, key in (section.get("labeling_keys") or {}).items():
            rows.append(
                {
                    "build_id": manifest.build_id,
                    "problem_id": problem_id,
                    "labeling_key": key,
                    "build_finished_at": datetime.fromisoformat(finished) if finished else None,
                    "plan_seq": section.get("plan_seq"),
                    "commit_seq": section.get("commit_seq"),
                    "policy_model": section.get("policy_model") or manifest.policy_model,
                    "config_hash": manifest.config_hash,
                    "prmforge_version": manifest.package_versions.get("prmforge"),
                    "git_revision": manifest.git_revision,
                }
            )
    return rows


# -- locks -------------------------------------------------------------------------------------


class DatasetLock(FencedLock):
    """Exclusive lock on a dataset: planning (``.lock``) or compaction (``.compact.lock``).

    A :class:`~data_schemas.locks.FencedLock`: a unique token, a heartbeat every
    :data:`LOCK_HEARTBEAT_S`, broken only when its heartbeat is older than ``stale_s`` on the
    storage's clock (:data:`STALE_LOCK_S`, or :data:`STALE_COMPACT_LOCK_S` for the compaction
    lock; read when the lock is made, so a test may shorten them). The holder calls
    :meth:`check` before it publishes (claim + manifest, compaction pointer).
    """

    def __init__(
        self,
        root: str | DataRoot,
        name: str,
        timeout_s: float | None = None,
        lock_name: str = LOCK_NAME,
        stale_s: float | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        default_stale = STALE_COMPACT_LOCK_S if lock_name == COMPACT_LOCK_NAME else STALE_LOCK_S
        super().__init__(
            root,
            f"{dataset_dir(name)}/{lock_name}",
            timeout_s=PLAN_LOCK_WAIT_S if timeout_s is None else timeout_s,
            stale_s=default_stale if stale_s is None else stale_s,
            heartbeat_s=LOCK_HEARTBEAT_S if heartbeat_s is None else heartbeat_s,
            what="dataset lock" if lock_name == LOCK_NAME else "compaction lock",
        )


# -- claims ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A running build's claim on problems of a dataset.

    Live while the claim file's mtime (renewed by the build's heartbeat) is less than
    ``lease_s`` old on the storage's clock. ``expires_at`` (the writer's clock + lease) is only
    informational, and the rule for claim files without ``lease_s`` (written before it existed).
    """

    build_id: str
    problem_ids: tuple[str, ...]
    expires_at: float
    lease_s: float | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "build_id": self.build_id,
                "lease_s": self.lease_s,
                "expires_at": self.expires_at,
                "problem_ids": list(self.problem_ids),
            }
        ).encode()


def claim_path(name: str, build_id: str) -> str:
    return f"{dataset_dir(name)}/claims/{check_name('build id', build_id)}.json"


def write_claim(root: str | DataRoot, name: str, build_id: str, problem_ids: Sequence[str], lease_s: float) -> Claim:
    claim = Claim(build_id, tuple(problem_ids), time.time() + lease_s, lease_s)
    write_bytes_atomic(root, claim_path(name, build_id), claim.to_json())
    return claim


def remove_claim(root: str | DataRoot, name: str, build_id: str) -> None:
    data_root = resolve_root(root)
    try:
        data_root.filesystem.delete_file(data_root.join(claim_path(name, build_id)))
    except (FileNotFoundError, OSError):
        pass


def live_claims(root: str | DataRoot, name: str, now: float | None = None, exclude: str | None = None) -> list[Claim]:
    """Claims of other running builds whose lease has not expired (unreadable files are skipped).

    A claim's age is its file's mtime against ``now``: the storage's clock (a probe file written
    in the claims directory) unless given, so a writer whose clock is off by minutes neither
    loses its claim early nor keeps it past its lease. A filesystem without mtimes falls back
    to ``expires_at`` against this machine's clock.
    """
    data_root = resolve_root(root)
    directory = data_root.join(dataset_dir(name), "claims")
    selector = pafs.FileSelector(directory, allow_not_found=True)
    infos = [
        info
        for info in data_root.filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith(".")
    ]
    if not infos:
        return []
    storage = now if now is not None else storage_now(data_root, directory)
    claims = []
    for info in infos:
        try:
            with data_root.filesystem.open_input_stream(info.path) as stream:
                data = json.loads(stream.read().decode())
            lease = data.get("lease_s")
            claim = Claim(
                str(data["build_id"]),
                tuple(data["problem_ids"]),
                float(data["expires_at"]),
                float(lease) if lease else None,
            )
        except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
            continue  # removed while listing, or written by a killed process: not a live claim
        if claim.lease_s is not None and info.mtime is not None and storage is not None:
            alive = storage - info.mtime.timestamp() < claim.lease_s
        else:
            alive = claim.expires_at > (time.time() if now is None else now)
        if alive and claim.build_id != exclude:
            claims.append(claim)
    return claims


class ClaimHeartbeat:
    """A build's claim: written by :meth:`start`, renewed every ``lease_s / 4`` until :meth:`stop`.

    Started where the claim is written (at planning), so the lease runs from its first write.
    A renewal that raises anything is logged and retried (:class:`~data_schemas.locks.Heartbeat`);
    ``failures`` / ``last_error`` say what went wrong.
    """

    def __init__(
        self, root: str | DataRoot, name: str, build_id: str, problem_ids: Sequence[str], lease_s: float
    ) -> None:
        self.root = resolve_root(root)
        self.name, self.build_id, self.problem_ids, self.lease_s = name, build_id, tuple(problem_ids), lease_s
        self._heartbeat = Heartbeat(f"claim of build {build_id} on dataset {name}", self._renew, lease_s / 4)

    def _renew(self) -> None:
        write_claim(self.root, self.name, self.build_id, self.problem_ids, self.lease_s)

    @property
    def failures(self) -> int:
        return self._heartbeat.failures

    @property
    def last_error(self) -> str | None:
        return self._heartbeat.last_error

    def start(self) -> ClaimHeartbeat:
        self._renew()
        self._heartbeat.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop renewing (idempotent); ``release`` removes the claim file."""
        self._heartbeat.stop()
        if release:
            remove_claim(self.root, self.name, self.build_id)


# -- compaction pointer ------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactedFile:
    table: str  # steps, nodes or outcomes
    path: str  # relative to the data root
    rows: int
    bytes: int
    sha256: str


@dataclass
class Compaction:
    """``<dataset>/compacted.json``: the compacted current rows of a dataset at one moment."""

    dataset: str
    generation: str
    created_at: str
    covered_builds: list[str]
    files: list[CompactedFile]
    source_shards: dict[str, str] = field(default_factory=dict)  # folded-in shard path -> sha256

    def to_json(self) -> bytes:
        return (
            json.dumps(
                {
                    "dataset": self.dataset,
                    "generation": self.generation,
                    "created_at": self.created_at,
                    "covered_builds": self.covered_builds,
                    "files": [vars(f) for f in self.files],
                    "source_shards": self.source_shards,
                },
                indent=2,
            )
            + "\n"
        ).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Compaction:
        return cls(
            dataset=str(data["dataset"]),
            generation=str(data["generation"]),
            created_at=str(data["created_at"]),
            covered_builds=[str(b) for b in data["covered_builds"]],
            files=[CompactedFile(**f) for f in data["files"]],
            source_shards=dict(data.get("source_shards") or {}),
        )

    def table_files(self, table: str) -> list[str]:
        return [f.path for f in self.files if f.table == table]


def read_compaction(root: str | DataRoot, name: str) -> Compaction | None:
    """The dataset's current compaction, None when it was never compacted."""
    data_root = resolve_root(root)
    try:
        with data_root.filesystem.open_input_stream(data_root.join(dataset_dir(name), COMPACTED_POINTER)) as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        return None
    try:
        return Compaction.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise PrmforgeError(f"{dataset_dir(name)}/{COMPACTED_POINTER}: unreadable ({error})") from None


def write_compaction(root: str | DataRoot, compaction: Compaction) -> None:
    """Publish a compaction: one atomic move of the pointer file (readers see old or new)."""
    write_bytes_atomic(root, f"{dataset_dir(compaction.dataset)}/{COMPACTED_POINTER}", compaction.to_json())


def verify_compaction(root: str | DataRoot, compaction: Compaction) -> None:
    """Re-hash the compacted files against the pointer's checksums (one-line error naming a bad file)."""
    for item in compaction.files:
        try:
            digest, size = file_sha256(root, item.path)
        except FileNotFoundError:
            raise PrmforgeError(f"dataset {compaction.dataset!r}: compacted file {item.path} is missing") from None
        if (digest, size) != (item.sha256, item.bytes):
            raise PrmforgeError(f"dataset {compaction.dataset!r}: compacted file {item.path} checksum mismatch")


def list_datasets(manifests: Iterable[Manifest]) -> list[str]:
    """Names of the datasets that complete or running builds belong to, sorted."""
    return sorted({m.dataset["name"] for m in manifests if m.dataset and m.dataset.get("name")})
