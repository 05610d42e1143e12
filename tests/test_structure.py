"""The shape of the package (issue #23): no module grows past ~500 lines, and the modules import each other
without a cycle - `pairs` in particular uses the pure ensemble math without importing `eval`.

The import graph is read from the source with ast (every import statement, including those inside functions),
so it holds for lazy imports too; nothing is imported to build it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "autofeedback"
MAX_LINES = 500
TOO_LONG_FOR_NOW: set[str] = set()  # none: every module is under the limit


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom in the tree, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. `from P import name` counts P.name when that is a module, else P;
    importing a module from outside its package also runs the package's __init__, so that is an edge too."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: set[str] = set()

        def add(target: str, mod=mod, edges=edges) -> None:
            t = resolve(target)
            if t is None or t == mod:
                return
            edges.add(t)
            parent = t.rpartition(".")[0]
            while parent:
                if parent in mods and not (mod == parent or mod.startswith(parent + ".")):
                    edges.add(parent)
                parent = parent.rpartition(".")[0]

        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "autofeedback" or alias.name.startswith("autofeedback."):
                        add(alias.name)
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
                if not (source == "autofeedback" or source.startswith("autofeedback.")):
                    continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in mods else source)
        graph[mod] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_module_is_longer_than_500_lines():
    too_long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in TOO_LONG_FOR_NOW:
            too_long[rel] = n
    assert not too_long, f"modules over {MAX_LINES} lines (split them along a seam): {too_long}"


def test_the_import_graph_reads_relative_lazy_and_package_imports():
    g = import_graph()
    assert "autofeedback.tables" in g["autofeedback.pairs.stage"]                 # from .. import tables
    assert "autofeedback.ensemble" in g["autofeedback.pairs.votes"]               # inside a function
    assert "autofeedback.eval.stage" in g["autofeedback.eval"]                    # from .stage import run
    assert {"autofeedback.eval", "autofeedback.eval.stage"} <= g["autofeedback.cli"]  # from .eval import stage
    assert "autofeedback.eval" not in g["autofeedback.eval.stage"]                # a package's own modules


def test_no_import_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_pairs_uses_the_ensemble_math_without_importing_eval():
    g = import_graph()
    pairs = [m for m in g if m == "autofeedback.pairs" or m.startswith("autofeedback.pairs.")]
    assert pairs
    for mod in pairs:
        reached = _reachable(g, mod)
        assert not {m for m in reached if m == "autofeedback.eval" or m.startswith("autofeedback.eval.")}, mod
    assert "autofeedback.ensemble" in _reachable(g, "autofeedback.pairs")
    assert not {m for m in _reachable(g, "autofeedback.ensemble") if m.startswith("autofeedback.eval")}
