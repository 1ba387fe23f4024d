"""The shape of the code: which package may import which, no import cycles, short functions.

What counts as an import edge A -> B (A, B modules of audio_dcls, pipelines or service;
a package is its ``__init__``): any ``import`` or ``from ... import`` statement in A's
source -- at module level or inside a function (lazy imports run too, only later) --
whose target is B. ``from P import name`` points at the submodule ``P.name`` when that
is a module, else at ``P``; relative imports are resolved against A's package. Imports
of anything outside the three packages are ignored.

Left out on purpose: the edge from a package's ``__init__`` to the modules inside that
same package (``audio_dcls/models/__init__.py`` importing ``convnext_audio`` to
register it). That edge only decides load order within one package; counting it would
make every submodule that imports a sibling through its package look circular.
Everything else must form a DAG, and the layering is one-way: ``audio_dcls`` imports
neither ``pipelines`` nor ``service``, and those two never import each other.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("audio_dcls", "pipelines", "service")
MAX_FUNCTION_LINES = 120
# service/ is held to the same limit once its long app factory is split (another change).
LENGTH_CHECKED = ("pipelines", "service")


def _module_files() -> Dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _targets(node: ast.AST, module: str, is_pkg: bool, known: Set[str]) -> Iterable[str]:
    """The project modules an import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield from _deepest_known(alias.name, known)
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        if sub in known:
            yield sub
        else:
            yield from _deepest_known(prefix, known)


def _deepest_known(name: str, known: Set[str]) -> Iterable[str]:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            yield candidate
            return


def import_graph() -> Dict[str, Set[str]]:
    files = _module_files()
    known = set(files)
    graph: Dict[str, Set[str]] = {m: set() for m in files}
    for module, path in files.items():
        pkg = _is_package(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, module, pkg, known):
                if target == module or (pkg and target.startswith(module + ".")):
                    continue  # a package's __init__ loading its own modules (see the docstring)
                graph[module].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # function-level imports count: pipelines.evaluate loads releases only inside load_model
    assert "audio_dcls.checkpoint" in graph["pipelines.evaluate"]
    # relative imports resolve: the models package re-exports from its own _audio_cfg
    assert "audio_dcls.models._audio_cfg" in graph["audio_dcls.models.convnext_audio"]
    # a package's __init__ importing its own modules is left out, its other imports are not
    assert not any(t.startswith("audio_dcls.models.") for t in graph["audio_dcls.models"])
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_one_way():
    bad = []
    for module, targets in import_graph().items():
        top = module.split(".")[0]
        for t in targets:
            other = t.split(".")[0]
            if (top == "audio_dcls" and other != "audio_dcls") or {top, other} == {"pipelines", "service"}:
                bad.append(f"{module} -> {t}")
    assert not bad, "imports against the layering (audio_dcls <- pipelines, audio_dcls <- service): " + ", ".join(bad)


def test_functions_fit_on_a_screen():
    long = []
    for pkg in LENGTH_CHECKED:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)
