"""The package's import graph: no circle, and no module importing one from a layer above its own.

Every `import` and `from ... import` counts, at module level, inside functions and under
`if TYPE_CHECKING:` alike: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = "agentopz_otel"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

# Lowest first. A module is in the layer of its first name under the package (`processors.runs.assembly`
# is in `processors`'s). A module may import from its own layer and the ones below.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "ground floor",
        frozenset(
            {
                PACKAGE,
                "admin_auth",
                "bearer",
                "bounded_log",
                "catalogue",
                "compiled",
                "content",
                "exposition",
                "fleet",
                "garbage",
                "httpserver",
                "loop_lag",
                "metrics",
                "spans",
                "netaddr",
                "pacing",
                "records",
                "runbooks",
                "slo",
                "text",
                "triage",
            }
        ),
    ),
    # The GenAI semantic conventions as data and pure functions: read by components, never reaching one.
    ("semantic conventions", frozenset({"semconv"})),
    ("component model", frozenset({"components"})),
    ("pipeline components", frozenset({"receivers", "processors", "exporters"})),
    ("extensions", frozenset({"extensions"})),
    ("assembly", frozenset({"config", "registry", "service", "cli", "cli_rollouts", "demo", "__main__"})),
)
# Within a layer, imports that are still forbidden: an extension reaches pipeline data only through
# the interfaces on the component model's Context, never by importing a pipeline component.
FORBIDDEN = {("extensions", "processors"), ("extensions", "receivers"), ("extensions", "exporters")}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its body."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from . import pages` imports a module; `from .model import Batch` a name of one.
            candidates = [[f"{target}.{alias.name}", target] for alias in node.names]
        else:
            continue
        for options in candidates:
            for name in options:
                if name in known:
                    found.add(name)
                    break
    found.discard(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        module: imports_of(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py", known)
        for module, path in files.items()
    }


def area(module: str) -> str:
    """`processors` for `agentopz_otel.processors.runs.assembly`; the package itself for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def layer_of(module: str) -> int:
    for index, (_, areas) in enumerate(LAYERS):
        if area(module) in areas:
            return index
    raise AssertionError(f"{module} is in no layer: add {area(module)!r} to one of LAYERS in {__file__}")


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if layer_of(target) > layer_of(module):
                found.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
            elif (area(module), area(target)) in FORBIDDEN:
                found.append(f"{module} imports {target}: {area(module)} never import {area(target)}")
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle through: {' -> '.join(error.args[1])}")
    assert set(order) == set(graph)


def test_no_module_imports_from_a_layer_above_its_own():
    assert violations(import_graph()) == []


def test_the_component_model_imports_no_component():
    graph = import_graph()
    assert {area(target) for target in graph[f"{PACKAGE}.components"]} <= LAYERS[0][1]


def test_the_runs_assembler_reaches_no_metric_no_publishing_and_no_event_loop():
    """The runs processor's pure core: none of the runs modules it imports, directly or not, records a
    metric, sends on, saves a checkpoint or runs on the event loop (the shell, runs/processor.py, does).
    (Constants it takes from other processors' modules bring their imports along: not checked here.)"""
    graph = import_graph()
    runs = f"{PACKAGE}.processors.runs"
    reached: set[str] = set()
    todo = [f"{runs}.assembler"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(target for target in graph[module] if target.startswith(runs))
    assert reached & {f"{runs}.{name}" for name in ("processor", "publishing", "checkpoint")} == set()
    assert not any(f"{PACKAGE}.metrics" in graph[module] for module in reached)
    files = {module_name(path, ROOT): path for path in ROOT.rglob("*.py")}
    with_asyncio = {
        module
        for module in reached
        for node in ast.walk(ast.parse(files[module].read_text(encoding="utf-8")))
        if (isinstance(node, ast.Import) and any(alias.name == "asyncio" for alias in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "asyncio")
    }
    assert with_asyncio == set()
    assert {f"{runs}.assembler", f"{runs}.assembly", f"{runs}.settings"} <= reached


def test_a_circle_or_an_upward_import_is_found(tmp_path):
    """The checks themselves: a planted upward import through a lazy import, and a planted circle."""
    package = tmp_path / PACKAGE
    (package / "processors").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "processors" / "__init__.py").write_text("")
    (package / "spans.py").write_text("def f():\n    from .processors.quality import Evaluation\n")
    (package / "processors" / "quality.py").write_text("from ..spans import f\n")
    (package / "records.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from . import spans\n")
    graph = import_graph(package)
    assert graph == {
        PACKAGE: set(),
        f"{PACKAGE}.spans": {f"{PACKAGE}.processors.quality"},
        f"{PACKAGE}.processors": set(),
        f"{PACKAGE}.processors.quality": {f"{PACKAGE}.spans"},
        f"{PACKAGE}.records": {f"{PACKAGE}.spans"},
    }
    assert violations(graph) == [
        f"{PACKAGE}.spans (ground floor) imports {PACKAGE}.processors.quality (pipeline components)"
    ]
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
