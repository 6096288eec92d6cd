"""Step signals: what labels a step besides the search (tool, Lean, step judge, Monte Carlo).

``base.py`` holds the protocol, one module per signal implements it, ``registry.py`` lists them.
This package module imports nothing, so a signal module can be imported without the registry.
"""
