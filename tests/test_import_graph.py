"""No import cycles in ``raysemi/``, counting imports inside functions too (a cycle hidden behind a function-level
import is still a cycle: the two modules cannot be understood or changed apart)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raysemi"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``<root>/data/splits.py`` → ``raysemi.data.splits``; a package's ``__init__.py`` → the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The ``raysemi`` modules ``path`` imports anywhere in its body (module level, functions, classes).

    ``from X import y`` counts as importing ``X.y`` when that is a module (``from raysemi.data import splits``,
    ``from . import x``), else ``X``; relative imports are resolved against the file's package. Imports under
    ``if TYPE_CHECKING:`` count too: they are a cycle in the design, if not at run time.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {_owner(module, modules) for module in found if _owner(module, modules)} - {name}


def _owner(module: str, modules: set[str]) -> str | None:
    """The longest known module that ``module`` is or lies in (``raysemi.x.Class`` → ``raysemi.x``)."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module or None


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the raysemi modules it imports. A package's ``__init__`` is a node of its own: importing
    ``raysemi.methods.base`` runs ``raysemi/methods/__init__.py`` first, but that edge is Python's, not the
    code's, so it is not drawn."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    return {module_name(path, root): imported_modules(path, modules, root) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None; depth-first search, nodes visited in sorted
    order so the answer is the same every run."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_on_a_hand_made_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_are_resolved_at_every_level(tmp_path):
    package = tmp_path / "raysemi"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import a\n")
    (package / "sub" / "a.py").write_text("def f():\n    from raysemi.sub.b import g\n    return g\n")
    (package / "sub" / "b.py").write_text("from .. import top\nfrom raysemi.sub import a\n")
    (package / "top.py").write_text("import os\nimport raysemi.sub.a\n")
    graph = import_graph(package)
    assert graph == {"raysemi": set(), "raysemi.sub": {"raysemi.sub.a"}, "raysemi.sub.a": {"raysemi.sub.b"},
                     "raysemi.sub.b": {"raysemi.top", "raysemi.sub.a"}, "raysemi.top": {"raysemi.sub.a"}}
    assert find_cycle(graph) == ["raysemi.sub.a", "raysemi.sub.b", "raysemi.sub.a"]


def test_raysemi_has_no_import_cycle():
    graph = import_graph()
    assert "raysemi.methods.base" in graph and graph["raysemi.config"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
