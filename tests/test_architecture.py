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


#: The layers of docs/architecture.md, bottom to top: a module may import its own layer and the layers below it.
#: Each entry is a module-name prefix; the longest matching prefix places a module.
LAYERS: dict[str, int] = {
    "fractal_space.core": 0,
    "fractal_space.data": 1,
    "fractal_space.models": 1,
    "fractal_space": 1,  # the package's __init__: importing it registers the models
    "fractal_space.deploy": 2,
    "fractal_space.engine": 3,
    "fractal_space.search.space": 4,
    "fractal_space.search.trial": 5,
    "fractal_space.search.study": 6,
    "fractal_space.search.results": 7,
    "fractal_space.search.backends": 7,
    "fractal_space.search": 8,  # the public surface, the command line and ``python -m fractal_space.search``
    "fractal_space.checks": 9,  # acceptance checks over every layer (``python -m fractal_space.checks.gpu``)
}


def _layer(name: str) -> str:
    return max((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), key=len)


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


def test_every_module_sits_in_a_layer_the_architecture_page_names():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for name in MODULES:
        layer = _layer(name).replace(".", "/")
        named = f"`{layer}/`" in page or f"`{layer}.py`" in page or layer == "fractal_space"
        assert named, f"{name}: its layer {layer} is not in docs/architecture.md's table"


def test_no_module_imports_a_layer_above_its_own():
    for name, imported in GRAPH.items():
        up = {other for other in imported if LAYERS[_layer(other)] > LAYERS[_layer(name)]}
        assert not up, f"{name} imports {sorted(up)}, a layer above its own"


def test_the_core_layer_imports_nothing_from_the_package_outside_itself():
    for name in MODULES:
        if _layer(name) == "fractal_space.core":
            outside = {other for other in GRAPH[name] if _layer(other) != "fractal_space.core"}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_results_and_backends_are_siblings():
    """The final stage and the report read what any backend wrote; a backend never reads the report's code."""
    for name, imported in GRAPH.items():
        for mine, other in (("results", "backends"), ("backends", "results")):
            if _layer(name) == f"fractal_space.search.{mine}":
                assert not {i for i in imported if _layer(i) == f"fractal_space.search.{other}"}, name


def test_the_search_backends_import_neither_the_cli_nor_each_other():
    backends = {n for n in MODULES if n.startswith("fractal_space.search.backends.") and n.endswith("_backend")}
    assert len(backends) == 2
    for backend in backends:
        assert not GRAPH[backend] & (backends - {backend}) and "fractal_space.search.cli" not in GRAPH[backend]


def test_the_model_families_are_siblings():
    families = {"fractal_space.models.fractalnet", "fractal_space.models.resnet_cifar",
                "fractal_space.models.densenet_cifar"}
    for family in families:
        assert not GRAPH[family] & (families - {family}), f"{family} imports {GRAPH[family] & families}"
    # FractalNet's extraction helper serves its family and imports none
    assert not GRAPH["fractal_space.models.fractalnet_paths"] & families


def test_deploy_onnx_imports_only_the_core_and_metrics_reaches_it():
    assert {_layer(n) for n in GRAPH["fractal_space.deploy.onnx"]} <= {"fractal_space.core"}
    assert "fractal_space.deploy.onnx" in GRAPH["fractal_space.deploy.metrics"]


#: Top-level folders of the repository that are not installed with the package.
OUTSIDE = {"experiments", "benchmarks"}


def _reaches_above_the_package(node: ast.AST, depth: int) -> bool:
    """``...Path(__file__)...parents[k]`` with k at or past the package folder: a path into the repository."""
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents" and isinstance(node.slice, ast.Constant) and node.slice.value >= depth
            and any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node.value)))


def test_the_package_reads_nothing_outside_itself():
    """An installed library has no experiments/, benchmarks/ or docs/: no module imports the experiments or the
    benchmarks, or builds a path from its own file to above the package folder. The acceptance checks are the one
    exception: they run from a checkout, and the GPU check times the checkout's reference FractalNet when it is
    there."""
    for name, path in MODULES.items():
        if _layer(name) == "fractal_space.checks":
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & OUTSIDE, f"{name} imports {sorted(imported & OUTSIDE)}"
        depth = len(path.relative_to(PACKAGE).parts)  # parents[depth - 1] is the package folder itself
        assert not any(_reaches_above_the_package(n, depth) for n in ast.walk(tree)), f"{name} reads the repository"
