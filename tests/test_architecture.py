"""The package's shape (docs/architecture.md): floors that import only downward, no cycles, no
private imports across subpackages, and a light ``import sae_circuits``.

Imports are read from the source with ``ast`` (module level and inside functions alike; only
``if TYPE_CHECKING:`` blocks are left out, since they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sae_circuits"

#: Subpackages (and top-level modules) by floor: each may import only from lower floors and
#: from itself. The root ``__init__``/shims are the top floor.
FLOORS: dict[str, int] = {
    "_version": 0,
    "core": 0,
    "transcoders": 1,
    "graph": 1,
    "replacement_model": 2,
    "toy": 2,
    "models": 3,
    "attribution": 3,
    "features": 3,
    "interventions": 4,
    "viewer": 5,
    "batch": 5,
    "demo": 6,
    "multilingual_demo": 6,
    "cli": 9,
    "supernodes": 7,
    "__init__": 8,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[str]:
    """Every ``sae_circuits...`` module ``path`` imports at run time (``from X import y``: X.y if
    that is a module, else X)."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append(sub if _exists(sub) else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [m for m in found if m == "sae_circuits" or m.startswith("sae_circuits.")]


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    root = PACKAGE.parent
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        edges[_module_name(path)] = set(_imports(path)) - {_module_name(path)}
    return edges


def _unit(module: str) -> str:
    """The floor unit of a module: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_every_unit_has_a_floor():
    units = {_unit(m) for m in _graph()}
    assert units <= FLOORS.keys(), (
        f"add these to FLOORS (and docs/architecture.md): {units - FLOORS.keys()}"
    )


def test_floors_import_only_downward():
    upward = []
    for module, targets in _graph().items():
        here = _unit(module)
        for target in targets:
            there = _unit(target)
            if there != here and FLOORS[there] >= FLOORS[here]:
                upward.append(f"{module} -> {target} (floor {FLOORS[here]} -> {FLOORS[there]})")
    assert not upward, "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of ``graph``, except a subpackage's ``__init__`` importing its own modules
    that import their siblings through it (``pkg -> pkg._a -> pkg``), which Python resolves."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])

    def inside_one_subpackage(cycle: list[str]) -> bool:
        head = cycle[0]
        return head != "sae_circuits" and all(m.startswith(head + ".") for m in cycle[1:-1])

    return [c for c in cycles if not inside_one_subpackage(c)]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_cycles():
    a, b, c = "sae_circuits.graph._a", "sae_circuits.graph._b", "sae_circuits.core.x"
    assert _cycles({a: {b}, b: {a}})  # two modules of one subpackage
    assert _cycles({"sae_circuits": {a}, a: {"sae_circuits"}})  # through the root
    assert _cycles({a: {c}, c: {b}, b: {a}})  # across subpackages
    assert not _cycles({"sae_circuits.graph": {a}, a: {"sae_circuits.graph"}})  # pkg -> own module
    assert not _cycles({a: {b}, b: {c}})


def test_no_private_imports_across_subpackages():
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            parts = target.split(".")
            private = [i for i, p in enumerate(parts) if p.startswith("_") and p != "__init__"]
            if not private or parts[private[0]] == "_version":
                continue
            owner = ".".join(parts[: private[0]])
            if not (module == owner or module.startswith(owner + ".")):
                bad.append(f"{module} -> {target}")
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize(
    "heavy", ["toy_training", "sae_circuits.viewer", "matplotlib", "sae_circuits.toy", "ray"]
)
def test_import_is_light(heavy):
    code = f"import sys, sae_circuits; print({heavy!r} in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    assert out.stdout.strip() == "False", f"import sae_circuits imports {heavy}"


def test_old_module_paths_still_import():
    from sae_circuits.export import save_neuronpedia
    from sae_circuits.hooks import scoped_hooks
    from sae_circuits.intervene import compare_with_graph
    from sae_circuits.pruning import prune_graph

    import sae_circuits as sc

    assert callable(sc.intervene) and callable(sc.replacement)  # still the functions
    assert save_neuronpedia is sc.save_neuronpedia
    assert compare_with_graph is sc.compare_with_graph
    assert callable(scoped_hooks) and callable(prune_graph)
    assert sc.supernodes.experiment is not None and sc.toy.tiny_model is not None


def test_no_sae_lens_registry_internals():
    """Registration goes through SAELens' public API only."""
    offenders = [
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if "SAE_CLASS_REGISTRY" in p.read_text()
    ]
    assert not offenders
