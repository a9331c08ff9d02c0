"""The pure-Python path stays: the in-process suite passes with every module imported from its source."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import support
from support.build import hot_modules, native_modules

from agentopz_otel.compiled import PURE_PYTHON_ENV


def test_the_unit_suite_passes_on_the_pure_python_path() -> None:
    env = {**os.environ, PURE_PYTHON_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=support.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


def test_without_a_c_compiler_the_package_is_left_as_pure_python(tmp_path: Path) -> None:
    """Every compile fails (CC=false): the build still succeeds, warns once for each hot and each C module,
    leaves no extension, and the package imports from its sources (normalize without its native scan)."""
    shutil.copy(support.ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copytree(
        support.ROOT / "agentopz_otel",
        tmp_path / "agentopz_otel",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    env = {**os.environ, "CC": "false", "PYTHONPATH": str(tmp_path)}
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    failed = sorted(re.findall(r'building extension "([\w.]+)" failed', build.stderr))
    assert failed == sorted(hot_modules() + native_modules())
    assert list(tmp_path.rglob("*.so")) == []
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import agentopz_otel.processors.normalize as module; print(module.__file__, module.scan)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == f"{tmp_path / 'agentopz_otel' / 'processors' / 'normalize.py'} None"
