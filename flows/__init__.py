"""Prefect flows, tasks and the ``prmforge`` CLI. Thin wiring: algorithms live in labelers/."""
