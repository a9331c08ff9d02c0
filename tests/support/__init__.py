"""Helpers shared by tests: builders of OTLP data, stand-in servers and sinks, the launcher of real
processes, and clients of the service. Tests import from here, never from one another (checked by
tests/unit/test_test_layout.py); tests/conftest.py holds only fixtures."""

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# The repository's root: shipped files (dashboards, alert rules, collector configs) are read from it.
ROOT = Path(__file__).resolve().parents[2]
# The folder holding support/: a process a test starts puts it on sys.path to import these helpers.
TESTS = Path(__file__).resolve().parent.parent


@functools.cache
def bench_script() -> ModuleType:
    """bench/bench.py, a script rather than a package module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
