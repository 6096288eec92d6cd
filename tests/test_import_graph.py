"""The import graph of flows/, labelers/ and data_schemas/: no cycle, no arrow that runs up.

Layers: ``data_schemas <- labelers <- flows``. labelers/ may import data_schemas/; data_schemas/
imports neither labelers/ nor flows/; labelers/ never imports flows/. Every ``import`` counts,
module level or inside a function (an import in a function is still a dependency, only a later
one), ``TYPE_CHECKING`` blocks included; ``importlib.import_module("x.y")`` with a literal name
counts too (in a module that calls ``import_module``, any string literal naming a project module
is an arrow), so a dependency cannot hide behind loading by name.

Run as a script (``python tests/test_import_graph.py``) it prints the graph's cycles and upward
arrows, the figures quoted in docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("data_schemas", "labelers", "flows")  # lowest layer first
# What each package must not import (the arrows that would run up the layers).
FORBIDDEN = {
    "data_schemas": ("labelers", "flows"),
    "labelers": ("flows",),
    "flows": (),
}

_MODULE_LITERAL = re.compile(r"(?:data_schemas|labelers|flows)(?:\.\w+)+(?::\w+)?")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def _resolve_relative(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def _closest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``a.b.c`` -> ``a.b`` when c is an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports, anywhere in its file."""
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    loads_by_name = any(
        isinstance(node, ast.Attribute) and node.attr == "import_module" for node in ast.walk(tree)
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            # ``from pkg import mod`` imports the submodule pkg.mod; ``from mod import name`` the module.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif loads_by_name and isinstance(node, ast.Constant) and isinstance(node.value, str):
            # In a module that loads modules by name, a literal naming a project module (or a
            # "module:attribute" spec) is an arrow, wherever the name is passed on from.
            names = [node.value.partition(":")[0]] if _MODULE_LITERAL.fullmatch(node.value) else []
        for name in names:
            target = _closest_module(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {module: imports_of(module, modules) for module in modules}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module (the cycles)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index_of:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index_of:
                    index_of[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    arrows = []
    for module, targets in sorted(graph.items()):
        banned = FORBIDDEN[module.split(".")[0]]
        arrows += [(module, target) for target in sorted(targets) if target.split(".")[0] in banned]
    return arrows


def test_the_walker_sees_imports_inside_functions_and_by_name(tmp_path):
    """The walker itself: a function-level import and an importlib call are arrows too."""
    modules = {"labelers.a": tmp_path / "a.py", "labelers.b": tmp_path / "b.py", "flows.c": tmp_path / "c.py"}
    modules["labelers.a"].write_text("def f():\n    from labelers.b import thing\n", encoding="utf-8")
    modules["labelers.b"].write_text(
        "import importlib\nNAME = 'labelers.a'\ndef load(name=NAME):\n    return importlib.import_module(name)\n",
        encoding="utf-8",
    )
    modules["flows.c"].write_text("from labelers import b\n", encoding="utf-8")
    graph = {name: imports_of(name, modules) for name in modules}
    assert graph == {"labelers.a": {"labelers.b"}, "labelers.b": {"labelers.a"}, "flows.c": {"labelers.b"}}
    assert strongly_connected(graph) == [["labelers.a", "labelers.b"]]
    assert upward_arrows({"labelers.a": {"flows.c"}, "flows.c": set()}) == [("labelers.a", "flows.c")]


def test_no_import_cycle():
    cycles = strongly_connected(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_upward_import():
    arrows = upward_arrows(import_graph())
    assert not arrows, "imports that run up the layers (data_schemas <- labelers <- flows): " + ", ".join(
        f"{a} -> {b}" for a, b in arrows
    )


def main() -> int:
    graph = import_graph()
    cycles = strongly_connected(graph)
    arrows = upward_arrows(graph)
    print(f"modules {len(graph)}, arrows {sum(len(t) for t in graph.values())}")
    print(f"cycles {len(cycles)}")
    for cycle in cycles:
        print("  cycle: " + " <-> ".join(cycle))
    print(f"upward arrows {len(arrows)}")
    for source, target in arrows:
        print(f"  up: {source} -> {target}")
    return 1 if (arrows or cycles) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
