"""Helpers shared by tests: builders of OTLP data, stand-in servers and sinks, the launcher of real
processes, and clients of the service. Tests import from here, never from one another (checked by
tests/unit/test_test_layout.py); tests/conftest.py holds only fixtures."""

from pathlib import Path

# The repository's root: shipped files (dashboards, alert rules, collector configs) are read from it.
ROOT = Path(__file__).resolve().parents[2]
# The folder holding support/: a process a test starts puts it on sys.path to import these helpers.
TESTS = Path(__file__).resolve().parent.parent
