"""The single truth for column names, types and meanings of every table prmforge writes.

Each field carries its documentation in the Arrow field metadata (key ``doc``); docs/schema.md
is checked against these schemas by a test. Bump ``SCHEMA_VERSION`` on any change of names or
types; readers compare it with the version stored in a shard's schema metadata.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"prmforge.table": table, "prmforge.schema_version": SCHEMA_VERSION})


def field_doc(field: pa.Field) -> str:
    """The documentation string stored with a schema field."""
    return (field.metadata or {}).get(b"doc", b"").decode()


PROBLEMS = _schema(
    "problems",
    [
        _field("problem_id", pa.string(), "Stable id: hash of the normalized question text and the source.", False),
        _field("source", pa.string(), "Data set or file the problem came from (e.g. gsm8k, math500).", False),
        _field("question", pa.string(), "The problem statement as given to the policy.", False),
        _field("gold_answer", pa.string(), "The reference final answer used to judge rollouts.", False),
        _field("reference_solution", pa.string(), "The data set's worked solution, when it has one."),
        _field("subject", pa.string(), "Subject or topic (MATH), when known."),
        _field("level", pa.int32(), "Difficulty level 1-5 (MATH), when known."),
        _field("source_row", pa.int64(), "1-based line or row number in the input file."),
    ],
)

STEPS = _schema(
    "steps",
    [
        _field("build_id", pa.string(), "Build that produced the row.", False),
        _field("problem_id", pa.string(), "Problem the solution path belongs to.", False),
        _field("source", pa.string(), "Source data set of the problem (shard partition key).", False),
        _field("path_id", pa.string(), "Id of the labeled solution path (root-to-leaf path in the tree).", False),
        _field("node_id", pa.string(), "Tree node holding this step (joins nodes.node_id).", False),
        _field("step_index", pa.int32(), "0-based position of the step in its path.", False),
        _field("num_steps", pa.int32(), "Number of steps in the path.", False),
        _field("step_text", pa.string(), "The step as the policy wrote it.", False),
        _field("prefix_hash", pa.string(), "Hash of the question plus the steps up to and including this one.", False),
        _field("tool_verdict", pa.string(),
               "Tool check verdict: correct, incorrect, unverifiable or error (the verifier failed on the step; "
               "tool_evidence has the message).", False),
        _field("tool_kind", pa.string(), "Which tool judged the step: sympy, python or none.", False),
        _field("tool_evidence", pa.string(), "JSON record of the checked claims, their values and the failing claim."),
        _field("lean_state", pa.string(),
               "Lean 4 result: proved, disproved, no_check, formalization_failed, "
               "lean_unavailable, timeout or disabled.", False),
        _field("lean_statement", pa.string(), "The Lean 4 theorem checked for the step, when one was formalized."),
        _field("lean_message", pa.string(), "Lean's messages or the closing tactic, when Lean ran."),
        _field("mc_correct", pa.int32(),
               "Rollouts from this step's prefix that reached the gold answer; null when not estimated."),
        _field("mc_total", pa.int32(), "Rollouts sampled from this step's prefix; null when not estimated."),
        _field("mc_value", pa.float64(),
               "Monte Carlo value mc_correct / mc_total (Math-Shepherd soft label); null when not estimated."),
        _field("mc_inferred", pa.bool_(),
               "True when the MC value was inferred by first-error search rather than sampled.", False),
        _field("hard_label", pa.bool_(), "Math-Shepherd hard label: mc_correct > 0; null when not estimated."),
        _field("fused_reward", pa.float64(), "Step reward in [-1, 1] from fusing tool, Lean and MC signals.", False),
        _field("fused_label", pa.bool_(), "Final step label (true = good step) after fusion.", False),
        _field("label_source", pa.string(), "Which rule of the fusion decided fused_label.", False),
        _field("signals_agree", pa.bool_(), "False when the tool/Lean verdict and the MC label disagree.", False),
        _field("consensus", pa.bool_(),
               "True when the path passes the consensus filter (MC and verifier agree on the first error).", False),
        _field("rationale", pa.string(),
               "Generative-PRM target text: grounds of the verdict, ending in the verdict token.", False),
        _field("is_first_error", pa.bool_(), "True for the earliest negative step of the path.", False),
        _field("path_final_answer", pa.string(), "Final answer the path ends in, when it has one."),
        _field("path_correct", pa.bool_(),
               "Whether the path's final answer equals the gold answer; null when the path has none."),
        _field("generator_model", pa.string(), "Model id of the policy that wrote the step.", False),
        _field("seed", pa.int64(), "Seed derived for the path from (build seed, problem_id, node path).", False),
        _field("judge_verdict", pa.string(),
               "Step judge verdict (an LLM grounded in the tool result): correct or incorrect; "
               "null when it gave none or did not run."),
        _field("judge_reply", pa.string(),
               "The step judge's raw reply (or the request's error when it failed); null when it did not run."),
        _field("judge_status", pa.string(),
               "Step judge outcome: ok, unparsed (no verdict in the reply), "
               "failed (the request failed) or not_run.", False),
    ],
)

NODES = _schema(
    "nodes",
    [
        _field("build_id", pa.string(), "Build that produced the row.", False),
        _field("problem_id", pa.string(), "Problem whose tree holds the node.", False),
        _field("source", pa.string(), "Source data set of the problem (shard partition key).", False),
        _field("node_id", pa.string(), "Node id, unique within the problem's tree.", False),
        _field("parent_id", pa.string(), "Parent node id; null for the root."),
        _field("depth", pa.int32(), "Steps from the root (root = 0).", False),
        _field("step_text", pa.string(), "The step this node adds (empty for the root).", False),
        _field("prefix_hash", pa.string(), "Hash of the question plus the steps up to this node.", False),
        _field("visits", pa.int32(), "MCTS visit count N.", False),
        _field("value_sum", pa.float64(), "Sum of back-propagated rewards W.", False),
        _field("q_value", pa.float64(), "Mean value Q = W / N; null for an unvisited node."),
        _field("is_terminal", pa.bool_(),
               "True when the step ends the solution (final answer given or budget end).", False),
        _field("final_answer", pa.string(), "Final answer extracted at a terminal node."),
        _field("reached_gold", pa.bool_(), "Whether a terminal node's final answer equals the gold answer."),
        _field("tool_verdict", pa.string(), "Tool verdict of the node's step (as in steps.tool_verdict)."),
        _field("mc_value", pa.float64(), "Monte Carlo value of the node's prefix when estimated."),
    ],
)

OUTCOMES = _schema(
    "problems_outcomes",
    [
        _field("build_id", pa.string(), "Build that produced the row.", False),
        _field("problem_id", pa.string(), "The problem.", False),
        _field("source", pa.string(), "Source data set of the problem (shard partition key).", False),
        _field("question", pa.string(), "The problem statement.", False),
        _field("gold_answer", pa.string(), "Reference final answer.", False),
        _field("status", pa.string(), "labeled, failed or skipped.", False),
        _field("failed_stage", pa.string(),
               "Stage that failed (sample, search, verify, fuse, write); null when labeled."),
        _field("error", pa.string(), "The error message of the failed stage; null when labeled."),
        _field("num_paths", pa.int32(), "Labeled solution paths written for the problem.", False),
        _field("num_steps", pa.int32(), "Step rows written for the problem.", False),
        _field("num_positive", pa.int32(), "Step rows with fused_label = true.", False),
        _field("num_negative", pa.int32(), "Step rows with fused_label = false.", False),
        _field("rollouts", pa.int32(), "Completions sampled for the problem (expansions and rollouts).", False),
        _field("prompt_tokens", pa.int64(), "Prompt tokens sent to the policy for the problem.", False),
        _field("completion_tokens", pa.int64(), "Completion tokens generated for the problem.", False),
        _field("wall_seconds", pa.float64(), "Wall time spent labeling the problem.", False),
    ],
)

# Columns the dataset views (dataset_steps, dataset_nodes, dataset_problems) add to the rows of
# their tables; also stored in a dataset's compacted files (data_schemas/compaction.py).
DATASET_LINEAGE = _schema(
    "dataset_lineage",
    [
        _field("labeling_key", pa.string(),
               "Hash of problem id, problem content, policy model, labeling config and schema version; "
               "a problem is labeled again when it changes.", False),
        _field("build_finished_at", pa.timestamp("us", tz="UTC"),
               "When the build that made the row completed, on that machine's clock "
               "(informational; order is by plan_seq)."),
        _field("plan_seq", pa.int64(),
               "The dataset sequence number the build took when it planned: among committed builds of a problem "
               "the highest wins (null: built before sequence numbers, ranked below)."),
        _field("commit_seq", pa.int64(),
               "The dataset sequence number the build took when it committed (its complete manifest): "
               "the order of the dataset's states."),
        _field("policy_model", pa.string(), "Policy backend and model of that build (backend:model)."),
        _field("config_hash", pa.string(), "Config hash of that build."),
        _field("prmforge_version", pa.string(), "prmforge version that made the row."),
        _field("git_revision", pa.string(), "git revision of the prmforge checkout that made the row, when known."),
    ],
)

TABLES: dict[str, pa.Schema] = {
    "problems": PROBLEMS,
    "steps": STEPS,
    "nodes": NODES,
    "outcomes": OUTCOMES,
    "dataset_lineage": DATASET_LINEAGE,
}
