"""The import graph of ``src/ovss``: no cycle between modules and no import from a lower layer to a
higher one, deferred imports (inside functions, under ``TYPE_CHECKING``) included.

The layers are listed in docs/architecture.md ("Layers"); ``LAYERS`` below is that list.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ovss"

# Lowest first. A module may import modules of its own area and of areas on lower lines only; areas on
# the same line are independent of each other. An area is a sub-package (``ovss/weights/``) or a
# top-level module (``ovss/utils.py``); ``ovss`` is the package itself (the public facade).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("utils",),
    ("config", "home", "distributed", "plotting", "cpu"),
    ("layers",),
    ("towers",),
    ("vocab",),
    ("models", "data"),
    ("weights",),
    ("api", "export"),
    ("evaluation",),
    ("engine", "demo"),
    ("cli",),
    ("ovss",),
)
RANK = {area: rank for rank, areas in enumerate(LAYERS) for area in areas}

# Known lower -> higher imports still to be moved (each with the issue item that removes it).
PENDING: set[tuple[str, str]] = set()


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` is the package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (``from ovss import __version__``: the
    version constant, not the facade, so it is not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source == "ovss" and all(alias.name == "__version__" for alias in node.names):
                continue
            # "from ovss.weights import cache" imports the module ovss.weights.cache
            named = [f"{source}.{alias.name}" for alias in node.names]
            targets = [target if target in modules else source for target in named]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import ovss.a.b" of a missing name: its package
                target = target.rpartition(".")[0]
            if target.startswith("ovss") and target != name:
                found.add(target)
    return found


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ovss"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = area(module), area(target)
            if a != b and RANK[b] >= RANK[a] and (module, target) not in PENDING:
                bad.append(f"{module} ({a}) imports {target} ({b})")
    return bad


def test_every_area_has_a_layer():
    assert {area(m) for m in module_files()} <= set(RANK), "add the new area to LAYERS and the docs"


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert layer_violations(import_graph()) == []


def test_pending_exceptions_still_exist():
    """An entry of PENDING whose import is gone must leave the list (so it cannot hide a new one)."""
    graph = import_graph()
    assert [pair for pair in PENDING if pair[1] not in graph.get(pair[0], set())] == []


def test_the_checks_see_deferred_imports_and_cycles(tmp_path):
    """The parser finds an import inside a function and under TYPE_CHECKING; the checks flag a cycle and
    an upward import."""
    pkg = tmp_path / "ovss"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "layers" / "a.py").write_text("def f():\n    from ovss.models.b import g\n")
    (pkg / "models" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..layers import a\n"
    )
    modules = module_files(pkg)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["ovss.layers.a"] == {"ovss.models.b"} and graph["ovss.models.b"] == {"ovss.layers.a"}
    assert find_cycle(graph) == ["ovss.layers.a", "ovss.models.b", "ovss.layers.a"]
    assert layer_violations(graph) == ["ovss.layers.a (layers) imports ovss.models.b (models)"]


@pytest.mark.parametrize("module", ["ovss.weights.read", "ovss.weights.modelfile", "ovss.weights.build"])
def test_weights_stages_import_no_later_stage(module):
    """resolve -> read -> convert -> build: the read stage knows nothing of conversion or of the cache,
    and building knows nothing of files."""
    later = {
        "ovss.weights.read": {"ovss.weights.detect", "ovss.weights.cache", "ovss.weights.resolve"},
        "ovss.weights.modelfile": {"ovss.weights.read", "ovss.weights.build", "ovss.weights.detect",
                                   "ovss.weights.cache", "ovss.weights.resolve"},
        "ovss.weights.build": {"ovss.weights.read", "ovss.weights.modelfile", "ovss.weights.detect",
                               "ovss.weights.cache", "ovss.weights.resolve"},
    }[module]
    assert import_graph()[module] & later == set()
