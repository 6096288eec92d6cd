"""MCTS over steps: UCT choice, back-propagation, reward formula, expansion/merging, lock-step."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

import pytest

from labelers.answers import AnswerJudge
from labelers.identity import problem_id
from labelers.search.mcts import (
    Node,
    SearchSettings,
    TreeSearch,
    backup,
    rollout_reward,
    select_child,
    select_leaf,
    uct_score,
)
from labelers.search.montecarlo import OutcomeJudge
from labelers.verify.base import StepContext, ToolCheck, ToolVerdict
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

QUESTION = "Tom has 3 bags of 4 apples and finds 5 more. How many apples?"
CORRECT = ("We have 3 * 4 = 12 apples.", "Adding 5 gives 12 + 5 = 17. The final answer is \\boxed{17}.")
WRONG = ("We have 3 * 4 = 13 apples.", "Adding 5 gives 13 + 5 = 18. The final answer is \\boxed{18}.")


class ArithmeticStandIn:
    """Boundary stand-in for the tool verifier in MCTS unit tests: every ``a op b = c`` in the
    step is evaluated exactly (only integers and + - * /)."""

    _CLAIM = re.compile(r"(\d+(?:\s*[-+*/]\s*\d+)+)\s*=\s*(\d+)")

    def __init__(self) -> None:
        self.calls: list[int] = []

    def check_steps(self, steps: Sequence[StepContext]) -> list[ToolCheck]:
        self.calls.append(len(steps))
        checks = []
        for context in steps:
            claims = self._CLAIM.findall(context.step)
            if not claims:
                checks.append(ToolCheck(ToolVerdict.UNVERIFIABLE, "none", {"reason": "no claim"}))
                continue
            holds = all(_eval(lhs) == Fraction(rhs) for lhs, rhs in claims)
            checks.append(ToolCheck(ToolVerdict.CORRECT if holds else ToolVerdict.INCORRECT, "sympy", {}))
        return checks

    def close(self) -> None:
        return None


def _eval(expression: str) -> Fraction:
    tokens = re.findall(r"\d+|[-+*/]", expression)
    # left-to-right with * / precedence
    terms: list[Fraction] = [Fraction(tokens[0])]
    ops: list[str] = []
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = Fraction(number)
        if op == "*":
            terms[-1] *= value
        elif op == "/":
            terms[-1] /= value
        else:
            ops.append(op)
            terms.append(value)
    total = terms[0]
    for op, value in zip(ops, terms[1:]):
        total = total + value if op == "+" else total - value
    return total


def _node(visits: int, value_sum: float, index: int, parent: Node | None = None) -> Node:
    node = Node((index,), parent, f"s{index}", (f"s{index}",), f"h{index}", "expansion")
    node.visits, node.value_sum = visits, value_sum
    return node


def test_uct_score_and_choice_hand_computed() -> None:
    parent = Node((), None, "", (), "h", "root")
    parent.visits, parent.expanded = 10, True
    a, b, c = _node(4, 3.0, 0, parent), _node(5, 1.0, 1, parent), _node(1, 0.5, 2, parent)
    parent.children = [a, b, c]
    # Q + c * sqrt(ln(N_parent + 1) / (N_child + 1))
    expected = {
        0: 0.75 + 1.4 * math.sqrt(math.log(11) / 5),
        1: 0.2 + 1.4 * math.sqrt(math.log(11) / 6),
        2: 0.5 + 1.4 * math.sqrt(math.log(11) / 2),
    }
    for index, child in enumerate(parent.children):
        assert uct_score(child, 10, 1.4) == pytest.approx(expected[index], abs=1e-12)
    # 2.0330 (c) > 1.7195 (a) > 1.0850 (b)
    assert select_child(parent, 1.4) is c
    # exploitation only: a has the best Q
    assert select_child(parent, 0.0) is a
    # an unvisited child comes first, the earlier one of two unvisited
    d, e = _node(0, 0.0, 3, parent), _node(0, 0.0, 4, parent)
    parent.children += [d, e]
    assert select_child(parent, 1.4) is d
    # ties go to the earlier child
    tie = Node((), None, "", (), "t", "root")
    tie.visits, tie.expanded = 4, True
    tie.children = [_node(2, 1.0, 0, tie), _node(2, 1.0, 1, tie)]
    assert select_child(tie, 1.4) is tie.children[0]


def test_select_leaf_skips_exhausted_subtrees() -> None:
    root = Node((), None, "", (), "h", "root")
    root.visits, root.expanded = 3, True
    done = _node(2, 2.0, 0, root)
    done.is_terminal = True
    open_child = _node(1, -1.0, 1, root)
    root.children = [done, open_child]
    # the terminal child has the best UCT but is exhausted: the open one is selected
    assert select_leaf(root, 1.4) is open_child
    open_child.expanded = True  # expanded with no children left: exhausted
    assert select_leaf(root, 1.4) is None


@pytest.mark.parametrize(
    ("verdicts", "outcome", "expected"),
    [
        ((), 1, 1.0),
        ((), -1, -1.0),
        ((1,), 1, 2.0),
        ((1, -1, 0), -1, (1 * 1 + (2 / 3) * -1 + 0) / 3 - 1 / 3),
        ((1, 1, 1, 1), 1, (1 + 0.75 + 0.5 + 0.25) / 4 + 0.25),
        ((-1, 1), 1, (-1 + 0.5) / 2 + 0.5),
    ],
)
def test_rollout_reward_formula(verdicts, outcome, expected) -> None:
    assert rollout_reward(list(verdicts), outcome) == pytest.approx(expected, abs=1e-12)


def test_backup_discounts_ancestors_and_counts_every_visit() -> None:
    root = Node((), None, "", (), "h", "root")
    child = _node(0, 0.0, 0, root)
    grandchild = Node((0, 0), child, "g", ("s0", "g"), "hg", "expansion")
    backup(grandchild, 0.5, 0.9)
    backup(child, -1.0, 0.9)
    assert (grandchild.visits, child.visits, root.visits) == (1, 2, 2)
    assert grandchild.value_sum == pytest.approx(0.5, abs=1e-9)
    assert child.value_sum == pytest.approx(0.9 * 0.5 - 1.0, abs=1e-9)
    assert root.value_sum == pytest.approx(0.81 * 0.5 - 0.9, abs=1e-9)


def _drive(trees: list[TreeSearch], policy: ScriptedPolicy, tool) -> int:
    rounds = 0
    while True:
        pending = [(t, t.requests()) for t in trees if not t.done]
        pending = [(t, r) for t, r in pending if r]
        if not pending:
            return rounds
        rounds += 1
        results = policy.generate([r for _, reqs in pending for r in reqs])
        offset = 0
        for tree, reqs in pending:
            contexts = tree.absorb(results[offset : offset + len(reqs)])
            offset += len(reqs)
            tree.finish_round(tool.check_steps(contexts) if tool and contexts else [None] * len(contexts))


def test_deterministic_tree_values_exact() -> None:
    """p_correct = 1, no step errors: every expansion samples the same step three times."""
    policy = ScriptedPolicy([ScriptedProblem(QUESTION, "17", CORRECT)])
    settings = SearchSettings(build_seed=1, rounds=8, children=3, gamma=0.9, stop_after_positive=0,
                              stop_after_negative=0)
    tool = ArithmeticStandIn()
    with AnswerJudge() as judge:
        tree = TreeSearch("p", QUESTION, "17", settings, OutcomeJudge(judge))
        rounds = _drive([tree], policy, tool)
    root = tree.root
    # iteration 1: root expanded, 3 equal children merged into one; its rollout (the final step,
    # tool-correct) gives R = 1 * 1 + 1 = 2; the rollout is materialized below the child.
    # iteration 2: the child is expanded; its 3 samples equal the rollout node (merged); that
    # terminal node is not rolled out: R = F = 1. Then everything is exhausted.
    assert tree.iterations == 2 and rounds == 3
    assert [r.n for call in policy.calls for r in call] == [3, 1, 3]
    assert len(root.children) == 1 and tree.merged_duplicates == 2 + 3
    child = root.children[0]
    final = child.children[0]
    assert (final.is_terminal, final.reached_gold, final.origin) == (True, True, "rollout")
    assert (child.visits, final.visits, root.visits) == (2, 1, 2)
    assert final.value_sum == pytest.approx(1.0, abs=1e-9)
    assert child.value_sum == pytest.approx(2.0 + 0.9 * 1.0, abs=1e-9)
    assert root.value_sum == pytest.approx(0.9 * 2.0 + 0.81 * 1.0, abs=1e-9)
    assert [n.node_id for n in root.iter_nodes()] == ["r", "r.0", "r.0.0"]
    assert tree.complete_paths() == [final]
    assert child.tool_check.verdict == ToolVerdict.CORRECT


def test_wrong_branch_gets_negative_values() -> None:
    """step_error_rate = 1: the first expansion takes the wrong step, whose rollout is wrong."""
    problem = ScriptedProblem(QUESTION, "17", CORRECT, (WRONG,), step_error_rate=1.0)
    policy = ScriptedPolicy([problem])
    settings = SearchSettings(build_seed=5, rounds=1, children=2, gamma=0.9)
    with AnswerJudge() as judge:
        tree = TreeSearch("p", QUESTION, "17", settings, OutcomeJudge(judge))
        _drive([tree], policy, ArithmeticStandIn())
    child = tree.root.children[0]
    assert child.step_text == WRONG[0] and child.tool_check.verdict == ToolVerdict.INCORRECT
    # rollout: one step "13 + 5 = 18" (tool-correct), outcome wrong: R = 1 - 1 = 0
    assert child.value_sum == pytest.approx(0.0, abs=1e-9)
    final = child.children[0]
    assert final.reached_gold is False and final.final_answer == "18"


def test_budget_stops_and_depth_limit() -> None:
    policy = ScriptedPolicy([ScriptedProblem(QUESTION, "17", CORRECT, (WRONG,), p_correct=0.5, step_error_rate=0.5)])
    settings = SearchSettings(build_seed=2, rounds=20, max_depth=1, children=3, stop_after_positive=0,
                              stop_after_negative=0)
    with AnswerJudge() as judge:
        tree = TreeSearch("p", QUESTION, "17", settings, OutcomeJudge(judge))
        _drive([tree], policy, None)
    # depth 1: every child is terminal (cut off), nothing is rolled out, one iteration
    assert tree.iterations == 1
    assert all(c.is_terminal and c.depth == 1 for c in tree.root.children)
    assert all(c.final_answer is None for c in tree.root.children)
    assert tree.root.value_sum == pytest.approx(-0.9 * len(tree.root.children))


def test_early_stop_on_enough_paths() -> None:
    problem = ScriptedProblem(QUESTION, "17", CORRECT, (WRONG,), p_correct=0.5, step_error_rate=0.5)
    settings = SearchSettings(build_seed=3, rounds=50, children=3, stop_after_positive=1, stop_after_negative=1)
    with AnswerJudge() as judge:
        tree = TreeSearch("p", QUESTION, "17", settings, OutcomeJudge(judge))
        _drive([tree], ScriptedPolicy([problem]), None)
    paths = tree.complete_paths()
    assert any(n.reached_gold for n in paths) and any(not n.reached_gold for n in paths)
    assert tree.iterations < 50


def test_lock_step_one_call_per_round_and_batch_independent_trees() -> None:
    questions = [f"{QUESTION} (variant {i})" for i in range(3)]
    problems = [ScriptedProblem(q, "17", CORRECT, (WRONG,), p_correct=0.6, step_error_rate=0.4) for q in questions]
    settings = SearchSettings(build_seed=9, rounds=4, children=3, stop_after_positive=0, stop_after_negative=0)

    def run(selected: list[int]) -> tuple[list[TreeSearch], ScriptedPolicy, int]:
        policy = ScriptedPolicy(problems)
        with AnswerJudge() as judge:
            trees = [TreeSearch(problem_id(questions[i], "t"), questions[i], "17", settings, OutcomeJudge(judge))
                     for i in selected]
            rounds = _drive(trees, policy, None)
        return trees, policy, rounds

    trees, policy, rounds = run([0, 1, 2])
    assert len(policy.calls) == rounds
    assert len(policy.calls[0]) == 3  # the first expansion of every tree in one call
    assert {r.tag.split("/")[0] for r in policy.calls[0]} == {t.problem_id for t in trees}
    alone, _, _ = run([1])

    def snapshot(tree: TreeSearch):
        return [(n.node_id, n.step_text, n.visits, round(n.value_sum, 12)) for n in tree.root.iter_nodes()]

    assert snapshot(alone[0]) == snapshot(trees[1])
