"""Step verifiers: tool checks (sympy, sandboxed Python) and Lean 4."""
