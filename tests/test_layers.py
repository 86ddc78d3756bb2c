"""The package's layers point one way: no module imports, however indirectly, a module that
imports it back (read from the code's own import statements, lazy ones included)."""

import ast
from pathlib import Path

import vaelab

PACKAGE = Path(vaelab.__file__).parent


def module_of(path: Path) -> str:
    """A file's module, relative to the package: "training", "models", "models.vae"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The vaelab modules a file imports anywhere in it (top level or inside functions),
    relative imports of any depth resolved; `from .models import X` counts as models."""
    package = module_of(path).split(".")[:-1] if path.stem != "__init__" else \
        module_of(path).split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
        elif (node.module or "").startswith("vaelab."):
            base = []
        else:
            continue
        tail = (node.module or "").split(".") if node.module else []
        if tail and tail[0] == "vaelab" and not node.level:
            tail = tail[1:]
        targets = [base + tail] if node.module else [base + [a.name] for a in node.names]
        for target in targets:
            found |= {".".join(target[:n]) for n in range(len(target), 0, -1)
                      if ".".join(target[:n]) in modules}
    return {max(found_in, key=len) for found_in in _by_root(found)}


def _by_root(names: set[str]) -> list[set[str]]:
    """Group names that are prefixes of one another (keep the most specific of each)."""
    groups: list[set[str]] = []
    for name in sorted(names, key=len, reverse=True):
        for group in groups:
            if any(other.startswith(name + ".") for other in group):
                group.add(name)
                break
        else:
            groups.append({name})
    return groups


def import_graph() -> dict[str, set[str]]:
    modules = {module_of(path): path for path in PACKAGE.rglob("*.py")}
    modules.pop("", None)  # the package itself: its lazy names import nothing at load
    names = set(modules)
    return {name: imports_of(path, names) - {name} for name, path in modules.items()}


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
    assert len(graph) > 10 and graph["training"] >= {"runs", "training_state", "data"}
    assert graph["models.vae"] >= {"models.interface", "models.networks", "likelihoods"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_function_shadows_a_module_of_the_package():
    modules = {module_of(path).split(".")[0] for path in PACKAGE.rglob("*.py")}
    assert not modules & set(vaelab.__all__)
