"""What setup.py builds, read from its source (importing setup.py would run setup())."""

from __future__ import annotations

import ast

from . import ROOT


def hot_modules() -> list[str]:
    """setup.py's HOT_MODULES: the modules the install compiles from their Python source."""
    return _declared("HOT_MODULES")


def native_modules() -> list[str]:
    """setup.py's NATIVE_MODULES: the C modules the install builds."""
    return _declared("NATIVE_MODULES")


def _declared(name: str) -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"setup.py declares no {name}")
