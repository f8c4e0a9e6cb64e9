"""The layout's rules, checked on the source: which room may import which, no import cycle, one importer
each for ray, orbax and qwix, and no long function (docs/design.md states the same rules).

Every import is walked, those inside functions included (an import hidden in a function to dodge a circle
is still an arrow). A -> B means a module of room A may import room B.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "distill", "nas", "scripts", "bench")

# Room of a module: the longest prefix listed here wins.
ROOMS = {
    "tasks": "tasks",
    "distill": "distill",  # the package's own __init__ (a docstring)
    "distill.files": "files",
    "distill.arch": "arch",
    "distill.model": "model",
    "distill.kd": "kd",
    "distill.train": "train",
    "distill.export": "export",
    "distill.run": "run",
    "distill.cli": "cli",
    "nas": "nas",
    "scripts": "scripts",
    "bench": "bench",
}
LIBRARY = {"tasks", "files", "arch", "model", "kd", "train", "export", "run", "cli", "nas", "distill"}
ALLOWED = {
    "tasks": {"tasks"},
    "files": {"tasks"},
    "arch": {"tasks"},
    "model": {"arch", "files", "tasks"},
    "kd": {"model", "arch", "files", "tasks"},
    "train": {"kd", "model", "arch", "files", "tasks"},
    "export": {"model", "arch", "files", "tasks"},
    "run": {"train", "kd", "model", "export", "arch", "files", "tasks"},
    "cli": {"run", "export", "arch", "files", "tasks"},
    "nas": {"run", "cli", "model", "export", "arch", "files", "tasks"},
    "distill": set(),
    "scripts": {"nas"},  # each script is `nas.cli.main([command, ...])`
    "bench": LIBRARY,
}
# Within `distill.run`, nas uses the public API (the package), never a stage module behind it.
PUBLIC_ONLY = {("nas", "run"): "distill.run"}
SOLE_IMPORTERS = {"ray": "nas", "orbax": "distill.train.checkpoint", "qwix": "distill.export.int8"}
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = sources()


def room(module: str) -> str | None:
    best = None
    for prefix, name in ROOMS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, name)
    return best[1] if best else None


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported project-or-library module, line) for every import statement, nested ones included;
    `from pkg import name` names the submodule `pkg.name` when there is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((f"<relative import, level {node.level}>", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
    return found


def arrows() -> list[tuple[str, str, int]]:
    """(importing module, imported project module, line)."""
    out = []
    for name, path in MODULES.items():
        for target, line in imports(path):
            if room(target) is not None:
                out.append((name, target, line))
    return out


def wrong_arrows(edges) -> list[str]:
    bad = []
    for source, target, line in edges:
        a, b = room(source), room(target)
        if a == b:
            continue
        where = f"{MODULES[source].relative_to(ROOT)}:{line}: {source} -> {target}"
        if b not in ALLOWED[a]:
            bad.append(f"{where} ({a} may not import {b})")
        elif (a, b) in PUBLIC_ONLY and target != PUBLIC_ONLY[a, b]:
            bad.append(f"{where} ({a} uses {PUBLIC_ONLY[a, b]}'s public API, not its modules)")
    return bad


def cycles(edges) -> list[list[str]]:
    """Import cycles among project modules (Tarjan's strongly connected components of size > 1 or self-loops)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, target, _ in edges:
        if target in graph:
            graph[source].add(target)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_room():
    assert not [m for m in MODULES if room(m) is None]


def test_no_relative_import():
    """Relative imports would hide arrows from this checker: every import names its module in full."""
    found = [f"{MODULES[m].relative_to(ROOT)}:{line}" for m, path in MODULES.items()
             for target, line in imports(path) if target.startswith("<relative")]
    assert not found, found


def test_imports_follow_the_arrows():
    bad = wrong_arrows(arrows())
    assert not bad, "wrong imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(arrows())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("library, owner", sorted(SOLE_IMPORTERS.items()))
def test_one_importer_of(library, owner):
    users = {
        m for m, path in MODULES.items() for target, _ in imports(path)
        if target == library or target.startswith(library + ".")
    }
    assert users and all(m == owner or m.startswith(owner + ".") for m in users), sorted(users)


def test_no_long_function_in_the_library():
    long = []
    for name, path in MODULES.items():
        if room(name) == "bench":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over %d lines:\n%s" % (MAX_FUNCTION_LINES, "\n".join(long))


# --- the checker itself: a wrong arrow and a cycle are caught -------------------------------------------


def test_the_checker_catches_a_wrong_arrow_and_a_cycle():
    assert wrong_arrows([("distill.export.hf", "distill.train.steps", 1)])  # export imports training code
    assert wrong_arrows([("nas.tune", "distill.kd.outputs", 1)])  # nas reaches into kd
    assert wrong_arrows([("nas.tune", "distill.run.data", 1)])  # a run module behind the public API
    assert wrong_arrows([("tasks.base", "distill.arch", 1)])  # tasks imports nothing of ours
    assert not wrong_arrows([("nas.tune", "distill.run", 1), ("distill.kd.init", "distill.model.bert", 1)])
    edges = [("distill.run.data", "distill.run.config", 1), ("distill.run.config", "distill.run.data", 9)]
    assert cycles(edges) == [["distill.run.config", "distill.run.data"]]
