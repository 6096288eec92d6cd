"""Search and estimation over reasoning steps.

- :mod:`labelers.search.mcts`: MCTS over steps (GroundedPRM), lock-step across problems;
- :mod:`labelers.search.montecarlo`: Monte Carlo step values (Math-Shepherd), adaptive k;
- :mod:`labelers.search.first_error`: binary search of the first error (OmegaPRM);
- :mod:`labelers.search.ledger`: one batched ``generate`` call per round, with per-problem
  accounting of completions, tokens and time.

Formulas: docs/algorithms.md.
"""
