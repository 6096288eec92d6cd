"""MCTS over reasoning steps (GroundedPRM), advanced in lock-step across problems.

A node is a step; the path from the root is a solution prefix. One MCTS iteration:

1. **Select** from the root by UCT until a node that has not been expanded::

       UCT(child) = Q(child) + c * sqrt(ln(N(parent) + 1) / (N(child) + 1)),   Q = W / N

   Unvisited children come first (in child order); ties go to the earlier child. Exhausted
   subtrees (terminal nodes, expanded nodes whose children are all exhausted) are skipped.
2. **Expand** it with k = ``children_per_expansion`` children sampled in ONE request (n = k,
   stop at the next step label, ``max_step_tokens``). A child whose normalized text equals an
   existing sibling's is merged into it (never expanded twice). A child is *terminal* when its
   step gives a final answer or it is at ``max_depth``.
3. **Simulate** each new non-terminal child by a rollout to a final answer (n = 1,
   ``max_solution_tokens``); every simulated step s_j is checked by the tool: v_j = +1
   correct, -1 incorrect, 0 unverifiable. With F = +1 when the rollout's final answer equals
   gold, else -1, and N simulated steps::

       R = (1/N) * sum_{j=1..N} ((N - j + 1) / N) * v_j + (1/N) * F,      N = 0  ->  R = F

   A terminal child is not rolled out: R = F of its own answer (-1 when cut off at max_depth).
4. **Back up** from the simulated child: the node at distance d (the child d = 0, its parent
   d = 1, ..., the root) gets ``W += gamma^d * R`` and ``N += 1`` -- every node on the path
   counts the visit (fixing GroundedPRM's released code, which never increments the expanded
   node's visits and picks children at random instead of by UCT).

Rollouts become tree nodes: a rollout that reaches a final answer within ``max_depth`` is
materialized as a chain of nodes below the child (merged with equal siblings), its last node
terminal. These nodes start with N = 0, W = 0 (no selection passed through them); when MCTS
later expands such a node it treats the rollout child like any other unsimulated child. So
every complete path -- from expansions or rollouts -- is a root-to-terminal path of the tree
and every labeled step has a node.

Budget per problem: ``rounds`` iterations, ``max_depth``, and an early stop once the tree holds
``stop_after_positive`` complete paths reaching gold and ``stop_after_negative`` wrong ones
(when both are 0 there is no early stop).

Lock-step: each generate round, every active tree contributes its pending requests (an
expansion, or the rollouts of its new children) to ONE ``generate`` call; the new steps of all
trees are checked in ONE ``check_steps`` call. Seeds: ``derive_seed(build_seed, problem_id,
("expand" | "rollout", *node_path))``: independent of batch composition and order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from labelers.identity import derive_seed, normalize_text, prefix_hash
from labelers.policy.base import GenerationRequest, GenerationResult
from labelers.policy.prompts import STEP_STOP, assistant_prefix, clean_step, solution_messages
from labelers.search.montecarlo import OutcomeJudge
from labelers.steps import split_steps
from labelers.verify.base import StepContext, ToolCheck, ToolVerdict

ROOT_ID = "r"
Origin = Literal["root", "expansion", "rollout", "sample", "given"]


@dataclass(eq=False)
class Node:
    """One step of the tree (the root holds no step)."""

    path: tuple[int, ...]
    parent: "Node | None"
    step_text: str
    steps: tuple[str, ...]  # root-to-node steps, this one last
    prefix_hash: str
    origin: Origin
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    expanded: bool = False
    simulated: bool = False
    is_terminal: bool = False
    final_answer: str | None = None
    reached_gold: bool | None = None
    tool_check: ToolCheck | None = None

    @property
    def node_id(self) -> str:
        return ".".join([ROOT_ID, *map(str, self.path)])

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def q_value(self) -> float | None:
        return self.value_sum / self.visits if self.visits else None

    def iter_nodes(self):
        """This node and its subtree, depth first in child order (deterministic)."""
        yield self
        for child in self.children:
            yield from child.iter_nodes()

    def ancestors(self) -> list["Node"]:
        """This node and its ancestors up to the root, nearest first."""
        chain, node = [], self
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    def child_with_text(self, text: str) -> "Node | None":
        key = normalize_text(text)
        return next((c for c in self.children if normalize_text(c.step_text) == key), None)


def uct_score(child: Node, parent_visits: int, c: float) -> float:
    """``Q(child) + c * sqrt(ln(N_parent + 1) / (N_child + 1))``; an unvisited child scores +inf."""
    if child.visits == 0:
        return math.inf
    return child.value_sum / child.visits + c * math.sqrt(math.log(parent_visits + 1) / (child.visits + 1))


def is_exhausted(node: Node) -> bool:
    """Nothing left to search below ``node``: terminal, or expanded with all children exhausted."""
    if node.is_terminal:
        return True
    return node.expanded and all(is_exhausted(c) for c in node.children)


def select_child(node: Node, c: float) -> Node | None:
    """The UCT choice among the non-exhausted children (first unvisited, ties to the earlier)."""
    best, best_score = None, -math.inf
    for child in node.children:
        if is_exhausted(child):
            continue
        score = uct_score(child, node.visits, c)
        if score > best_score:
            best, best_score = child, score
    return best


def select_leaf(root: Node, c: float) -> Node | None:
    """Descend by UCT to the first node not yet expanded; None when the tree is exhausted."""
    node = root
    while not is_exhausted(node):
        if not node.expanded:
            return node
        chosen = select_child(node, c)
        if chosen is None:
            return None
        node = chosen
    return None


def rollout_reward(verdicts: Sequence[int], outcome: int) -> float:
    """``R = (1/N) sum_j ((N-j+1)/N) v_j + F/N`` for N = len(verdicts) >= 1; ``R = F`` for N = 0."""
    n = len(verdicts)
    if n == 0:
        return float(outcome)
    return sum((n - j + 1) / n * v for j, v in enumerate(verdicts, start=1)) / n + outcome / n


def backup(node: Node, reward: float, gamma: float) -> None:
    """``W += gamma^d * R`` and ``N += 1`` for the node (d = 0) and every ancestor (distance d)."""
    for distance, ancestor in enumerate(node.ancestors()):
        ancestor.value_sum += gamma**distance * reward
        ancestor.visits += 1


def verdict_value(check: ToolCheck | None) -> int:
    """Tool verdict as v in {-1, 0, +1}."""
    if check is None or check.verdict not in (ToolVerdict.CORRECT, ToolVerdict.INCORRECT):
        return 0  # unverifiable, or the verifier failed on the step
    return 1 if check.verdict == ToolVerdict.CORRECT else -1


@dataclass(frozen=True)
class SearchSettings:
    build_seed: int
    mode: Literal["mcts", "sample"] = "mcts"
    samples: int = 4
    rounds: int = 8
    max_depth: int = 8
    children: int = 3
    uct_c: float = 1.4
    gamma: float = 0.9
    stop_after_positive: int = 3
    stop_after_negative: int = 3
    max_step_tokens: int = 160
    max_solution_tokens: int = 512
    stop_at_answer: bool = True  # rollouts end with the line that completes their answer
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass
class _Rollout:
    """A pending simulation: from ``node``, the simulated ``steps`` and their checks."""

    node: Node
    steps: list[str] = field(default_factory=list)
    final_answer: str | None = None
    reached_gold: bool | None = None
    checks: list[ToolCheck | None] = field(default_factory=list)


class TreeSearch:
    """The search of one problem as a state machine the lock-step driver advances.

    Each round: :meth:`requests` (0..k requests), then :meth:`absorb` (their results, in order)
    returns the step contexts to check, then :meth:`finish_round` gets their checks.
    """

    def __init__(self, problem_id: str, question: str, gold_answer: str, settings: SearchSettings, judge: OutcomeJudge):
        self.problem_id, self.question, self.gold_answer = problem_id, question, gold_answer
        self.settings, self.judge = settings, judge
        self.root = Node((), None, "", (), prefix_hash(question, []), "root")
        self.iterations = 0
        self.rounds = 0
        self.merged_duplicates = 0
        self.failed: tuple[str, str] | None = None  # (stage, error)
        self._phase: Literal["select", "expand", "simulate", "sample", "done"] = (
            "sample" if settings.mode == "sample" else "select"
        )
        self._leaf: Node | None = None
        self._rollouts: list[_Rollout] = []
        self._to_check: list[tuple[Node | _Rollout, int]] = []
        self._sampled = False

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._phase == "done" or self.failed is not None

    def complete_paths(self) -> list[Node]:
        """Terminal nodes with a final answer, in tree order."""
        return [n for n in self.root.iter_nodes() if n.is_terminal and n.final_answer is not None]

    def _enough_paths(self) -> bool:
        s = self.settings
        if s.stop_after_positive == 0 and s.stop_after_negative == 0:
            return False
        paths = self.complete_paths()
        positive = sum(bool(n.reached_gold) for n in paths)
        return positive >= s.stop_after_positive and len(paths) - positive >= s.stop_after_negative

    def _seed(self, kind: str, node: Node) -> int:
        return derive_seed(self.settings.build_seed, self.problem_id, (kind, *node.path))

    def _request(self, node: Node, kind: str, n: int) -> GenerationRequest:
        s = self.settings
        step = kind == "expand"
        return GenerationRequest(
            messages=solution_messages(self.question),
            assistant_prefix=assistant_prefix(node.steps),
            n=n,
            max_tokens=s.max_step_tokens if step else s.max_solution_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=STEP_STOP if step else (),
            stop_at_answer=s.stop_at_answer and not step,
            seed=self._seed(kind, node),
            tag=f"{self.problem_id}/{kind}/{node.node_id}",
        )

    def _add_child(self, parent: Node, text: str, origin: Origin) -> tuple[Node, bool]:
        """The child of ``parent`` with ``text`` (existing sibling if equal), and whether it is new."""
        existing = parent.child_with_text(text)
        if existing is not None:
            self.merged_duplicates += 1
            return existing, False
        steps = (*parent.steps, text)
        child = Node(
            (*parent.path, len(parent.children)), parent, text, steps, prefix_hash(self.question, steps), origin
        )
        answer = self.judge.final_answer(text)
        if answer is not None:
            child.is_terminal, child.final_answer = True, answer
            child.reached_gold = self.judge.equal(answer, self.gold_answer)
        elif child.depth >= self.settings.max_depth:
            child.is_terminal = True
        parent.children.append(child)
        return child, True

    def _continuation_steps(self, node: Node, completion: str) -> list[str]:
        """Steps of a completion continuing ``node``'s prefix (which ends in ``Step d+1:``)."""
        return [s for s in split_steps(f"Step {node.depth + 1}:{completion}", style="step") if s.strip()]

    # -- rounds ------------------------------------------------------------------------------
    def requests(self) -> list[GenerationRequest]:
        if self.done:
            return []
        if self._phase == "sample":
            return [self._request(self.root, "sample", self.settings.samples)]
        if self._phase == "select":
            if self.iterations >= self.settings.rounds or self._enough_paths():
                self._phase = "done"
                return []
            leaf = select_leaf(self.root, self.settings.uct_c)
            if leaf is None:
                self._phase = "done"
                return []
            self._leaf, self._phase = leaf, "expand"
            return [self._request(leaf, "expand", self.settings.children)]
        if self._phase == "simulate":
            return [self._request(r.node, "rollout", 1) for r in self._rollouts if not r.node.is_terminal]
        return []

    def absorb(self, results: Sequence[GenerationResult]) -> list[StepContext]:
        """Take this tree's results of the round; return the new steps to check."""
        errors = [r.error for r in results if r.error is not None]
        if errors:
            self.failed = ("search", errors[0])
            return []
        self.rounds += bool(results)
        self._to_check = []
        if self._phase == "sample":
            for completion in results[0].completions:
                node = self.root
                for text in self._continuation_steps(self.root, completion.text)[: self.settings.max_depth]:
                    node, new = self._add_child(node, text, "sample")
                    if new:
                        self._to_check.append((node, -1))
                    if node.is_terminal:
                        break
        elif self._phase == "expand":
            leaf = self._leaf
            assert leaf is not None
            leaf.expanded = True
            for completion in results[0].completions:
                text = clean_step(completion.text)
                if not text:
                    continue
                child, new = self._add_child(leaf, text, "expansion")
                if new:
                    self._to_check.append((child, -1))
            # Every child never simulated (new ones, and earlier rollout nodes) is simulated now.
            self._rollouts = [_Rollout(c) for c in leaf.children if not c.simulated]
        elif self._phase == "simulate":
            pending = [r for r in self._rollouts if not r.node.is_terminal]
            for rollout, result in zip(pending, results):
                text = result.completions[0].text if result.completions else ""
                room = self.settings.max_depth - rollout.node.depth
                for step in self._continuation_steps(rollout.node, text)[:room]:
                    rollout.steps.append(step)
                    answer = self.judge.final_answer(step)
                    if answer is not None:
                        rollout.final_answer = answer
                        rollout.reached_gold = self.judge.equal(answer, self.gold_answer)
                        break
                rollout.checks = [None] * len(rollout.steps)
                for index in range(len(rollout.steps)):
                    self._to_check.append((rollout, index))
        return [self._context(item, index) for item, index in self._to_check]

    def _context(self, item: Node | _Rollout, index: int) -> StepContext:
        if isinstance(item, Node):
            return StepContext(self.question, item.steps[:-1], item.step_text)
        previous = (*item.node.steps, *item.steps[:index])
        return StepContext(self.question, previous, item.steps[index])

    def finish_round(self, checks: Sequence[ToolCheck]) -> None:
        """Store the checks of the steps :meth:`absorb` returned; back up; move to the next phase."""
        for (item, index), check in zip(self._to_check, checks):
            if isinstance(item, Node):
                item.tool_check = check
            else:
                item.checks[index] = check
        self._to_check = []
        if self._phase == "sample":
            self._phase = "done"
        elif self._phase == "expand":
            if any(not r.node.is_terminal for r in self._rollouts):
                self._phase = "simulate"
            else:
                self._complete_iteration()
        elif self._phase == "simulate":
            self._complete_iteration()

    def _complete_iteration(self) -> None:
        gamma = self.settings.gamma
        for rollout in self._rollouts:
            node = rollout.node
            if node.is_terminal:
                reward = rollout_reward([], 1 if node.reached_gold else -1)
            else:
                reward = rollout_reward([verdict_value(c) for c in rollout.checks], 1 if rollout.reached_gold else -1)
                if rollout.final_answer is not None:
                    self._materialize(rollout)
            node.simulated = True
            backup(node, reward, gamma)
        self._rollouts = []
        self.iterations += 1
        self._phase = "select"

    def _materialize(self, rollout: _Rollout) -> None:
        """A rollout that reached a final answer becomes a chain of nodes below its start."""
        node = rollout.node
        for step, check in zip(rollout.steps, rollout.checks):
            node, new = self._add_child(node, step, "rollout")
            if new:
                node.tool_check = check
            if node.is_terminal:
                break
