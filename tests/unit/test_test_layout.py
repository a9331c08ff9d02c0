"""Where tests and their helpers live: shared helpers in tests/support/, fixtures in conftest.py, and no
test importing another test (or conftest) for its helpers, so a test file can move or go without
breaking others. Checked by reading the sources, as tests/test_import_graph.py does for the package."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = "support"


def every_test_file() -> list[Path]:
    """Test files anywhere under tests/ (the frameworks' agent scripts are programs the tests run, not
    modules they import)."""
    return sorted(path for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)


def imported_names(tree: ast.AST) -> set[str]:
    """The first name of every absolute import, at any depth (a lazy import ties files together too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


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


def test_no_test_imports_another_test_or_conftest():
    modules = every_test_file() + sorted((TESTS / SUPPORT).glob("*.py")) + [TESTS / "conftest.py"]
    assert len(modules) > 50  # every test file was read
    found = {
        str(path.relative_to(TESTS)): names
        for path in modules
        if (names := forbidden_imports(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_shared_helpers_live_in_support_and_tests_dir_holds_only_tests_and_conftest():
    loose = sorted(
        path.name for path in TESTS.glob("*.py") if path.name != "conftest.py" and not path.name.startswith("test_")
    )
    assert loose == []


def test_conftest_holds_only_fixtures():
    assert non_fixtures((TESTS / "conftest.py").read_text(encoding="utf-8")) == []


def test_the_checks_find_what_they_forbid():
    source = "import conftest\nfrom test_runs import send\n\ndef f():\n    from support.runs import send\n"
    assert forbidden_imports(source) == ["conftest", "test_runs"]
    assert forbidden_imports("from support import golden\nimport pytest\n") == []
    conftest = "\n".join(
        ['"""Fixtures."""', "import pytest", "LIMIT = 3", "@pytest.fixture", "def a(): pass", "def helper(): pass"]
    )
    assert non_fixtures(conftest) == ["LIMIT = 3", "helper"]
    assert non_fixtures('@pytest.fixture(scope="session")\ndef b():\n    pass\n') == []
