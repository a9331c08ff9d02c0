"""What setup.py builds, read from its source (importing setup.py would run setup())."""

from __future__ import annotations

import ast

from . import ROOT


def hot_modules() -> list[str]:
    """setup.py's HOT_MODULES: the modules the install compiles."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "HOT_MODULES":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py declares no HOT_MODULES")
