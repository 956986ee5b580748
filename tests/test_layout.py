"""The package layout is the architecture: no import cycles, no upward imports, small modules.

    .venv/bin/pytest tests/test_layout.py -q

Every module's imports are read from its syntax tree — function-local imports included, which
is where cycles hide — and resolved to project modules. The stages are layers, bottom to top:

    core < data < training < evaluation < publish < cloud < backends, chain < cli < flows

A module may import its own layer or any layer below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows")
MAX_LINES = 550  # "no module over ~500 lines"

# Layer of each top-level unit of the project (a subpackage of pipeline, a top module, flows).
LAYERS = {
    "pipeline.core": 0,
    "pipeline.data": 1,
    "pipeline.training": 2,
    "pipeline.evaluation": 3,
    "pipeline.publish": 4,
    "pipeline.cloud": 5,
    "pipeline.backends": 6,
    "pipeline.chain": 6,
    "pipeline.experiments": 6,
    "pipeline.cli": 7,
    "pipeline": 7,  # pipeline/__init__.py: the map, no imports of its own
    "flows": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import of ``name`` loads (a module, or the package holding a name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (annotations only; they never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(module: str) -> set[str]:
    """Project modules ``module`` imports anywhere in its body (function-local ones included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pipeline.data import convert` imports the module pipeline.data.convert;
            # `from pipeline.data.dataset import load_manifest` imports pipeline.data.dataset.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} belongs to no layer; add its package to LAYERS in {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_parser_sees_function_local_imports():
    # chain imports its steps' modules inside the step functions; they must be seen.
    chain = GRAPH["pipeline.chain"]
    assert {"pipeline.data.source", "pipeline.evaluation.evaluate", "pipeline.backends"} <= chain
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_imports_point_down():
    upward = sorted(f"{m} ({_layer(m)}) imports {t} ({_layer(t)})"
                    for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m))
    assert not upward, "upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    where = MODULES[module].relative_to(ROOT)
    assert lines <= MAX_LINES, f"{where} has {lines} lines (> {MAX_LINES}); split it"


def test_only_one_module_imports_tf_keras():
    importers = [m for m in MODULES if "tf_keras" in {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(MODULES[m].read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }]
    assert importers == ["pipeline.core.tfk"]
