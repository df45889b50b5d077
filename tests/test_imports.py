"""The package's imports never run back up: the graph between its modules is acyclic.

Every import of an sktune module counts, at any depth: top-level, inside a function
(a deferred import is still a dependency, only a later one) and under
``TYPE_CHECKING`` (a dependency of the types). The graph is read from the source
with ``ast``, so nothing is imported to build it.

How package ``__init__`` files count. Importing ``sktune.cache.split`` runs
``sktune/cache/__init__.py`` first, and an ``__init__`` that re-exports its
submodules imports them. So an import of ``a.b.c`` is an edge to ``a.b.c`` and to
each package above it (``a.b``) that the importing module is not itself inside; an
``__init__`` has edges to whatever it imports. A module is never given an edge to its
own package merely for being in it: Python initialises the package before the
submodule, so that import is already under way (a package re-exporting its
submodules would otherwise be a cycle with each of them). An explicit import of a
name from the own package (``from . import NAME`` where NAME is not a submodule, or
``from .. import NAME``) is a real edge to that ``__init__`` and is kept.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "sktune"
ROOT = Path(__file__).parents[1] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Each module's dotted name and its file (a package by its ``__init__.py``)."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _ancestors(name: str) -> list[str]:
    """The packages above ``name``: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The sktune modules that ``name`` (its source at ``path``) imports."""
    is_package = path.name == "__init__.py"
    # The package a relative import of level 1 starts from.
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*base, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from pkg import x` imports the submodule x when there is one,
                # else a name defined (or re-exported) by pkg's __init__.
                targets.add(sub if sub in modules else base)
    edges = set()
    own = {*_ancestors(name), name}
    for target in targets:
        if target.split(".")[0] != PACKAGE:
            continue
        while target not in modules:  # `import a.b.NAME` style: the module that has it
            target = target.rpartition(".")[0]
        edges.add(target)
        edges.update(p for p in _ancestors(target) if p not in own)
    edges.discard(name)
    return edges


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state = {}  # absent: unvisited, 1: on the current path, 2: finished
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
    assert find_cycle(acyclic) is None
    assert find_cycle({**acyclic, "c": {"d"}, "d": {"b"}}) == ["b", "c", "d", "b"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_are_resolved_like_python_resolves_them(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import make\n__version__ = '1'\n")
    (pkg / "sub" / "__init__.py").write_text("from .thing import make\n")
    (pkg / "sub" / "thing.py").write_text("from . import other\n")
    (pkg / "sub" / "other.py").write_text(
        "def f():\n    from .. import __version__\n    from ..low import g\n"
    )
    (pkg / "low.py").write_text("import sktune.sub.other\nimport numpy\n")
    assert import_graph(pkg) == {
        PACKAGE: {f"{PACKAGE}.sub"},
        f"{PACKAGE}.sub": {f"{PACKAGE}.sub.thing"},
        f"{PACKAGE}.sub.thing": {f"{PACKAGE}.sub.other"},  # not its own package
        f"{PACKAGE}.sub.other": {PACKAGE, f"{PACKAGE}.low"},  # deferred, relative
        # Importing sktune.sub.other from outside runs sktune/sub/__init__.py.
        f"{PACKAGE}.low": {f"{PACKAGE}.sub", f"{PACKAGE}.sub.other"},
    }
    assert find_cycle(import_graph(pkg)) is not None


def test_the_package_imports_are_acyclic():
    graph = import_graph()
    assert len(graph) > 30 and "sktune.cache.split" in graph  # it read the package
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))
