"""The package's shape: no import cycle anywhere in src/moelab (imports inside functions count: a cycle
there is still a pair of modules that each need the other), and config/ is a leaf that imports
nothing of the tasks, models or MoE layer it configures.

The graph is built from the source (ast), so it sees every import a module can make, not only those a
test run happens to execute.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "moelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The moelab modules `path` imports (`from . import x` resolves to the submodule x where one exists)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == "moelab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "moelab":
                continue
            subs = {f"{target}.{alias.name}" for alias in node.names} & modules
            out |= subs or {target}
    if "TYPE_CHECKING" in path.read_text():  # imports only a type checker follows are no dependency
        out -= type_only(path, package)
    return {m for m in out if m in modules and m != name}


def type_only(path: Path, package: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom) and sub.level:
                    base = package.split(".")
                    base = base[: len(base) - sub.level + 1]
                    names.add(".".join(base + ([sub.module] if sub.module else [])))
    return names


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported(f, modules) for f in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each a cycle's members."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_cycle_and_only_it():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = cycles(graph())
    # a package's __init__ re-exporting its submodules, which import their siblings, is the one accepted
    # shape of a "cycle" through __init__: none exists today, and none may appear
    assert not found, "import cycles in src/moelab:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_config_is_a_leaf():
    edges = graph()
    config = {m for m in edges if m == "moelab.config" or m.startswith("moelab.config.")}
    allowed = config | {"moelab.errors"}
    for module in sorted(config):
        assert edges[module] <= allowed, f"{module} imports {sorted(edges[module] - allowed)}"
