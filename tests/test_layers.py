"""The import graph: no circles inside ``blenderfarm/server/``, and the three parts
(server, node, client) never import each other.

Every module is parsed with ``ast``, not imported: the imports counted are those that
run (at the top or inside a function), not those under ``if TYPE_CHECKING:``, which
only the type checker follows. ``BF_LAYERS_SERVER`` points the cycle check at another
copy of the server's folder (say, the code before a refactor, to see it fail there).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import blenderfarm

ROOT = Path(blenderfarm.__file__).parent
SERVER = Path(os.environ.get("BF_LAYERS_SERVER") or ROOT / "server")


def module_name(path: Path, folder: Path, package: str) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _run_time_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in ``tree`` but the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)  # the else branch does run
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The absolute names of the modules ``path`` (module ``name``) imports at run time;
    ``from pkg import mod`` counts as importing ``pkg.mod`` when that is in ``known``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    got: set[str] = set()
    for node in _run_time_imports(tree):
        if isinstance(node, ast.Import):
            got.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = name.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            got.add(sub if sub in known else target)
    return got


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same folder it imports at run time."""
    paths = {module_name(p, folder, package): p for p in sorted(folder.rglob("*.py"))}
    known = set(paths)
    return {name: imports_of(path, name, known) & known for name, path in paths.items()}


def knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """The knots of modules that import each other, directly or around a circle (the
    strongly connected components of more than one module, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            knot: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                knot.add(w)
                if w == v:
                    break
            if len(knot) > 1 or v in graph[v]:
                found.append(knot)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each knot, named by one of its circles and the modules in it, e.g.
    ``a -> b -> a (knot: a, b)``."""
    return [" -> ".join(_short(m) for m in _circle_in(graph, knot))
            + f" (knot: {', '.join(sorted(map(_short, knot)))})" for knot in knots(graph)]


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _circle_in(graph: dict[str, set[str]], knot: set[str]) -> list[str]:
    """A shortest path from the knot's first module back to itself, inside the knot."""
    start = min(knot)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & knot):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(knot)} is no knot")  # Tarjan never gives one


def imports_across(part: str, forbidden: tuple[str, ...]) -> list[str]:
    """``module imports target`` for each import of ``part`` into a forbidden part."""
    folder = ROOT / part
    paths = {module_name(p, folder, f"blenderfarm.{part}"): p for p in folder.rglob("*.py")}
    bad = []
    for name, path in sorted(paths.items()):
        for target in sorted(imports_of(path, name, set(paths))):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{name} imports {target}")
    return bad


def test_the_server_modules_import_no_circle() -> None:
    graph = import_graph(SERVER, "blenderfarm.server")
    assert len(graph) > 10, f"no server modules found in {SERVER}"
    assert cycles(graph) == []


def test_the_server_never_imports_the_node_or_the_client() -> None:
    assert imports_across("server", ("blenderfarm.node", "blenderfarm.client")) == []


def test_the_node_never_imports_the_server_or_the_client() -> None:
    assert imports_across("node", ("blenderfarm.server", "blenderfarm.client")) == []


def test_the_check_names_a_circle_and_skips_type_checking_imports(tmp_path: Path) -> None:
    """The check itself can fail: a circle through a function-level import is found and
    named; one closed only under ``if TYPE_CHECKING:`` is not a circle."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "c.py").write_text("from .a import y\nfrom typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from .d import z\n")
    (tmp_path / "d.py").write_text("from .c import x\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == ["a -> b -> c -> a (knot: a, b, c)"]
