"""The package's layers point one way: no module imports, however indirectly, a module that
imports it back (read from the code's own import statements, lazy ones included)."""

import ast
from pathlib import Path

import vaelab

PACKAGE = Path(vaelab.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The vaelab modules a file imports anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x, y
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaelab."):
            found.add(node.module.split(".")[1])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == "open":
                return trail[trail.index(neighbour):] + [neighbour]
            if neighbour not in state:
                cycle = visit(neighbour, trail + [neighbour])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_module_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 10 and graph["training"] >= {"runs", "state", "data"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_function_shadows_a_module_of_the_package():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert not modules & set(vaelab.__all__)
