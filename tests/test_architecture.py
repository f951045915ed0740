"""docs/architecture.md's import rules, checked on the package's real import statements (module level and lazy)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fractal_space"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (``from pkg import mod`` counts as ``pkg.mod``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_there_is_no_import_cycle_in_the_package():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", ["fractal_space.recipe", "fractal_space.io", "fractal_space.hardware"])
def test_the_bottom_layer_imports_nothing_from_the_package(name):
    assert GRAPH[name] == set()


def test_the_search_backends_import_neither_the_cli_nor_each_other():
    for backend, other in (("optuna_backend", "ray_backend"), ("ray_backend", "optuna_backend")):
        imported = GRAPH[f"fractal_space.search.{backend}"]
        assert "fractal_space.search.cli" not in imported and f"fractal_space.search.{other}" not in imported


def test_the_shared_search_modules_import_no_backend_and_no_cli():
    top = {"fractal_space.search.cli", "fractal_space.search.optuna_backend", "fractal_space.search.ray_backend"}
    entry_points = {"fractal_space.search", "fractal_space.search.__main__"}
    for name, imported in GRAPH.items():
        if name.startswith("fractal_space.search.") and name not in top | entry_points:
            assert not imported & top, f"{name} imports {imported & top}"


def test_the_model_families_are_siblings():
    families = {"fractal_space.models.fractalnet", "fractal_space.models.resnet_cifar",
                "fractal_space.models.densenet_cifar"}
    for family in families:
        assert not GRAPH[family] & (families - {family}), f"{family} imports {GRAPH[family] & families}"


def test_the_engine_and_data_never_import_the_search_or_the_space():
    upward = {n for n in MODULES if n.startswith("fractal_space.search")} | {"fractal_space.space"}
    for name, imported in GRAPH.items():
        if name.startswith(("fractal_space.engine", "fractal_space.data", "fractal_space.models")):
            assert not imported & upward, f"{name} imports {imported & upward}"


def test_the_shared_search_modules_import_only_what_the_architecture_table_lists_above_them():
    """docs/architecture.md orders the search modules bottom-up; an import of a module listed later is a layering
    error (or the table is out of date)."""
    import re

    table = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    order = [f"fractal_space.search.{m}" for m in re.findall(r"`search/(\w+)\.py`", table)]
    assert set(order) >= {n for n in MODULES if n.startswith("fractal_space.search.") and not n.endswith("__main__")}
    shared = order[: order.index("fractal_space.search.optuna_backend")]
    for i, name in enumerate(shared):
        later = (GRAPH[name] & set(order)) - set(shared[:i])
        assert not later, f"{name} imports {later}, listed after it in docs/architecture.md"


def test_deploy_imports_only_the_bottom_layer_and_metrics_reaches_it():
    assert GRAPH["fractal_space.deploy"] <= {"fractal_space.io", "fractal_space.recipe", "fractal_space.hardware"}
    assert "fractal_space.deploy" in GRAPH["fractal_space.metrics"]
