"""No import cycle inside ``streamctl/``: the package's modules form a DAG.

Walks every module's source with ``ast`` and follows each import of a streamctl module, at module
level, in functions and under ``if TYPE_CHECKING:`` alike (a cycle hidden behind one of those is
still a knot a reader has to untie). A submodule importing a name from one of its parent packages
(``from . import __version__``) is not an edge: Python initialises a package before its submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamctl"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The streamctl modules ``name`` imports (anywhere in its source), including the packages
    an import initialises on the way (``from .store.base import X`` runs ``store/__init__.py``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            # ``from x import y``: y is either a submodule of x or a name defined in x.
            named += [
                f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                for a in node.names
            ]
    found: set[str] = set()
    for target in named:
        while target and target not in known:  # the deepest module the import names
            target = target.rpartition(".")[0]
        while target:  # and every package initialised on the way to it
            if target != name and not name.startswith(target + "."):
                found.add(target)
            target = target.rpartition(".")[0]
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_streamctl_has_no_import_cycle() -> None:
    edges = graph()
    assert "streamctl.store.sqlite" in edges  # the walk sees the whole package
    assert cycles(edges) == [], "modules importing each other, directly or not"


def test_the_walk_finds_every_kind_of_import(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from .a import A\n",
        "a.py": "from . import __version__\nfrom .b import B\nA = 1\n",
        "b.py": "def f():\n    from .sub.c import C\n",
        "sub/__init__.py": "",
        "sub/c.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n"
        ),
        "d.py": "import pkg.sub\nfrom pkg import b\n",
    }
    for name, text in sources.items():
        (root / name).write_text(text, encoding="utf-8")
    edges = graph(root)
    assert edges["pkg.a"] == {"pkg.b"}  # the parent package is no edge
    assert edges["pkg.b"] == {"pkg.sub.c", "pkg.sub"}  # function level, and the package on the way
    assert edges["pkg.sub.c"] == {"pkg.a"}  # under TYPE_CHECKING; pkg is c's parent
    assert edges["pkg.d"] == {"pkg.sub", "pkg.b"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
