"""The package is layered (see ``nca_cli/__init__.py``): a module imports only from its own
layer or from those below it, and the import graph has no cycle. Function-level imports count:
a lazy import is still a dependency."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nca_cli"

# lowest first; packages (or top-level modules) of one layer may not import each other
LAYERS = [
    ["__init__", "core"],     # the package root holds only the version and lazy names
    ["io", "models"],
    ["kernels"],
    ["data", "recipes"],
    ["inference"],
    ["training", "segment", "benchmark"],
    ["vwsl"],
    ["cli", "demo"],
    ["__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("nca_cli"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nca_cli"))
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}
    # keep only names that are modules (``from .x import y`` where y is a function names x)
    return {n for n in found if n in modules} - {module}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


def test_no_upward_or_sideways_import():
    bad = []
    for module, deps in _graph().items():
        for dep in deps:
            a, b = _unit(module), _unit(dep)
            if a == b:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
