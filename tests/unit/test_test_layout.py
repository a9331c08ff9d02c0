"""Where tests and their helpers live: every test file in one of tests/unit/, tests/service/, tests/e2e/;
shared helpers in tests/support/, fixtures in tests/conftest.py, and no test importing another test (or
conftest) for its helpers, so a test file can move or go without breaking others. A unit test starts no
process and a service test needs no external program. Checked by reading the sources, as
tests/unit/test_import_graph.py does for the package."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from pathlib import Path

from support import TESTS

SUPPORT = "support"
CONFTEST = TESTS / "conftest.py"
# unit: in process, starts no process. service: the service (or its CLI) as a real process, with in-process
# sinks and stand-ins. e2e: with other real components (Prometheus, Alertmanager, rotel, chromium, Node,
# the agent frameworks, the demo).
KINDS = ("unit", "service", "e2e")
# Modules whose import means starting processes (playwright starts a browser); a helper of support/ that
# imports one of them starts processes too.
PROCESS_MODULES = frozenset({"subprocess", "multiprocessing", "playwright", "support.processes"})
# The helper a test needs an external program (prometheus, promtool, chromium, node...) through.
EXTERNAL_PROGRAM = "require_binary"


def every_test_file() -> list[Path]:
    """Test files anywhere under tests/ (the frameworks' agent scripts are programs the tests run, not
    modules they import)."""
    return sorted(path for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)


def kind_files(kind: str) -> list[Path]:
    return sorted(path for path in every_test_file() if path.relative_to(TESTS).parts[0] == kind)


def imported_names(tree: ast.AST) -> set[str]:
    """The first name of every absolute import, at any depth (a lazy import ties files together too)."""
    return {name.split(".")[0] for name in imported_modules(tree)}


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an absolute import names, at any depth; `from a import b` names both `a` and `a.b`
    (b may be a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def forbidden_imports(source: str) -> list[str]:
    """Test modules and conftest imported by `source`: the only shared helpers are in support/."""
    return sorted(name for name in imported_names(ast.parse(source)) if name == "conftest" or name.startswith("test_"))


def non_fixtures(source: str) -> list[str]:
    """Top-level definitions of a conftest.py other than imports, its docstring and pytest fixtures."""
    found = []
    for index, node in enumerate(ast.parse(source).body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.FunctionDef) and any(is_fixture(decorator) for decorator in node.decorator_list):
            continue
        found.append(getattr(node, "name", None) or ast.unparse(node).splitlines()[0])
    return found


def is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) == "pytest.fixture"


def calls_external_program(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == EXTERNAL_PROGRAM
        for node in ast.walk(tree)
    )


def support_closure(seeds: frozenset[str], uses: Callable[[ast.AST], bool] | None = None) -> frozenset[str]:
    """`seeds` and every support module that imports one of them, directly or through another support
    module, or (with `uses`) whose source `uses` says yes to."""
    trees = {f"{SUPPORT}.{path.stem}": ast.parse(path.read_text(encoding="utf-8")) for path in support_files()}
    found = set(seeds) | {module for module, tree in trees.items() if uses is not None and uses(tree)}
    while more := {
        module
        for module, tree in trees.items()
        if module not in found and any(within(name, found) for name in imported_modules(tree))
    }:
        found |= more
    return frozenset(found)


def support_files() -> list[Path]:
    return sorted(path for path in (TESTS / SUPPORT).glob("*.py") if path.stem != "__init__")


def fixtures_using(source: str, modules: frozenset[str], uses: Callable[[ast.AST], bool]) -> set[str]:
    """The fixtures of a conftest that import one of `modules` (at module level for a name they use, or in
    their body), that `uses` says yes to, or that request such a fixture."""
    tree = ast.parse(source)
    bound = {
        (alias.asname or alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if within(alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}", modules)
    }
    fixtures = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(is_fixture(decorator) for decorator in node.decorator_list)
    ]
    found: set[str] = set()
    while more := {
        node.name
        for node in fixtures
        if node.name not in found
        and (
            any(isinstance(name, ast.Name) and name.id in bound for name in ast.walk(node))
            or any(within(module, modules) for module in imported_modules(node))
            or uses(node)
            or any(argument.arg in found for argument in node.args.args)
        )
    }:
        found |= more
    return found


def requested(tree: ast.AST, fixtures: set[str]) -> set[str]:
    """The names among `fixtures` that a test or fixture of `tree` takes as a parameter (pytest passes
    them; a helper's parameter of the same name is not one)."""
    return {
        argument.arg
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (node.name.startswith("test") or any(is_fixture(decorator) for decorator in node.decorator_list))
        for argument in node.args.args
        if argument.arg in fixtures
    }


def starts_a_process(node: ast.AST) -> bool:
    """`os.system(...)`, `os.popen`, `os.fork`, `os.exec*`, `os.spawn*`, `asyncio.create_subprocess_*`."""
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
        return False
    owner, name = node.value.id, node.attr
    if owner == "os":
        return name in {"system", "popen", "fork", "forkpty"} or name.startswith(("exec", "spawn", "posix_spawn"))
    return owner == "asyncio" and name.startswith("create_subprocess")


def process_uses(source: str, modules: frozenset[str], fixtures: set[str]) -> list[str]:
    """What in `source` starts a process: an import of one of `modules`, an os/asyncio call, a fixture."""
    tree = ast.parse(source)
    found = [f"imports {module}" for module in sorted(imported_modules(tree)) if within(module, modules)]
    found += [f"calls {ast.unparse(node)}" for node in ast.walk(tree) if starts_a_process(node)]
    return found + [f"requests the {name} fixture" for name in sorted(requested(tree, fixtures))]


def external_program_uses(source: str, modules: frozenset[str], fixtures: set[str]) -> list[str]:
    """What in `source` needs an external program: a call of require_binary, a helper or fixture that does."""
    tree = ast.parse(source)
    found = [f"calls {EXTERNAL_PROGRAM}"] if calls_external_program(tree) else []
    found += [f"imports {module}" for module in sorted(imported_modules(tree)) if within(module, modules)]
    return found + [f"requests the {name} fixture" for name in sorted(requested(tree, fixtures))]


def test_no_test_imports_another_test_or_conftest():
    modules = every_test_file() + support_files() + [CONFTEST]
    assert len(modules) > 50  # every test file was read
    found = {
        str(path.relative_to(TESTS)): names
        for path in modules
        if (names := forbidden_imports(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_every_test_file_is_in_one_kind_folder_under_a_name_no_other_has():
    files = every_test_file()
    assert sorted({path.relative_to(TESTS).parts[0] for path in files}) == sorted(KINDS)
    assert sum(len(kind_files(kind)) for kind in KINDS) == len(files)
    # The kind folders are not packages: pytest imports a test file by its name, so two of one name clash.
    names = [path.name for path in files]
    assert sorted({name for name in names if names.count(name) > 1}) == []


def test_tests_dir_holds_only_conftest_the_kind_folders_and_the_shared_ones():
    assert sorted(path.name for path in TESTS.glob("*.py")) == ["conftest.py"]
    folders = sorted(path.name for path in TESTS.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert folders == sorted([*KINDS, SUPPORT, "golden"])


def test_conftest_holds_only_fixtures():
    assert non_fixtures(CONFTEST.read_text(encoding="utf-8")) == []


def offenders(kind: str, uses: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """The files of a kind folder for which `uses` finds something, with what it found."""
    files = kind_files(kind)
    assert len(files) >= 10  # the folder was read
    return {path.name: found for path in files if (found := uses(path.read_text(encoding="utf-8")))}


def test_unit_tests_start_no_process():
    modules = support_closure(PROCESS_MODULES)
    fixtures = fixtures_using(CONFTEST.read_text(encoding="utf-8"), modules, lambda node: False)
    assert {"start_service", "service", "chromium"} <= fixtures
    assert offenders("unit", lambda source: process_uses(source, modules, fixtures)) == {}


def test_service_tests_need_no_external_program():
    modules = support_closure(frozenset(), calls_external_program)
    assert {"support.prometheus", "support.alertmanager"} <= modules
    fixtures = fixtures_using(CONFTEST.read_text(encoding="utf-8"), modules, calls_external_program)
    # The recorder comes from support.alertmanager, the module that starts Alertmanager: e2e tests only.
    assert fixtures == {"chromium", "recorder"}
    assert offenders("service", lambda source: external_program_uses(source, modules, fixtures)) == {}


def test_the_checks_find_what_they_forbid():
    source = "import conftest\nfrom test_runs import send\n\ndef f():\n    from support.runs import send\n"
    assert forbidden_imports(source) == ["conftest", "test_runs"]
    assert forbidden_imports("from support import golden\nimport pytest\n") == []
    conftest = "\n".join(
        ['"""Fixtures."""', "import pytest", "LIMIT = 3", "@pytest.fixture", "def a(): pass", "def helper(): pass"]
    )
    assert non_fixtures(conftest) == ["LIMIT = 3", "helper"]
    assert non_fixtures('@pytest.fixture(scope="session")\ndef b():\n    pass\n') == []


def test_the_process_checks_find_what_they_forbid():
    modules = support_closure(PROCESS_MODULES)
    # support.service imports support.processes; support.golden imports neither.
    assert "support.service" in modules
    assert "support.golden" not in modules
    conftest = "\n".join(
        [
            "import pytest",
            "from support.processes import launch",
            "@pytest.fixture",
            "def started():\n    return launch()",
            "@pytest.fixture",
            "def uses_started(started):\n    return started",
            "@pytest.fixture",
            "def lazy():\n    import subprocess",
            "@pytest.fixture",
            "def pure(tmp_path):\n    return tmp_path",
        ]
    )
    fixtures = fixtures_using(conftest, modules, lambda node: False)
    assert fixtures == {"started", "uses_started", "lazy"}
    planted = "\n".join(
        [
            "import subprocess",
            "from support import processes",
            "from support.service import DEFAULT_BODY",
            "def test_a(uses_started, tmp_path):\n    os.system('true')",
            "async def test_b():\n    await asyncio.create_subprocess_exec('true')",
            "def test_c():\n    from multiprocessing import Process",
            "def helper(uses_started):\n    return uses_started",
        ]
    )
    assert process_uses(planted, modules, fixtures) == [
        "imports multiprocessing",
        "imports multiprocessing.Process",
        "imports subprocess",
        "imports support.processes",
        "imports support.service",
        "imports support.service.DEFAULT_BODY",
        "calls os.system",
        "calls asyncio.create_subprocess_exec",
        "requests the uses_started fixture",
    ]
    assert process_uses("from support.golden import cases\ndef test_a(pure):\n    pass\n", modules, fixtures) == []


def test_the_external_program_check_finds_what_it_forbids():
    modules = support_closure(frozenset(), calls_external_program)
    assert "support.processes" not in modules  # it defines require_binary; calling it is what counts
    planted = "from support.prometheus import start_prometheus\ndef test_a(chromium):\n    require_binary('node')\n"
    assert external_program_uses(planted, modules, {"chromium"}) == [
        "calls require_binary",
        "imports support.prometheus",
        "imports support.prometheus.start_prometheus",
        "requests the chromium fixture",
    ]
    assert external_program_uses("from support.processes import launch\n", modules, {"chromium"}) == []
