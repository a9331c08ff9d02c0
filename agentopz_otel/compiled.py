"""Which build of a module is imported: its compiled extension (setup.py's HOT_MODULES) or its source.

Python imports an extension module ahead of the source beside it. Two exceptions are made here: with
AGENTOPZ_PURE_PYTHON set, every module of the package comes from its source; and in a checkout (not a
site-packages install) an extension older than its source (or the .pxd that declares its types) is
passed over, so a source edited after the last build runs as edited instead of being silently
shadowed. A C module (setup.py's NATIVE_MODULES) has no Python source: then the import fails, and its
caller takes its pure-Python way.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from importlib.machinery import ExtensionFileLoader, ModuleSpec, PathFinder, SourceFileLoader
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

PURE_PYTHON_ENV = "AGENTOPZ_PURE_PYTHON"
_PREFIX = f"{__package__}."


class SourceWhenStale:
    """A meta path finder for one package's modules; it leaves every other import alone."""

    def __init__(self, prefix: str, pure_python: bool, installed_under: Sequence[Path]) -> None:
        self._prefix = prefix
        self._pure_python = pure_python
        self._installed_under = tuple(installed_under)

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if not name.startswith(self._prefix):
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is None or not isinstance(spec.loader, ExtensionFileLoader) or spec.origin is None:
            return spec
        extension = Path(spec.origin)
        stem = name.rpartition(".")[2]
        source = extension.with_name(stem + ".py")
        if not (
            self._pure_python
            or any(self._stale(extension, extension.with_name(stem + suffix)) for suffix in (".py", ".pxd", ".c"))
        ):
            return spec
        if source.exists():
            return spec_from_file_location(name, source, loader=SourceFileLoader(name, str(source)))
        raise ModuleNotFoundError(f"{name}: its extension is turned off or older than its C source", name=name)

    def _stale(self, extension: Path, source: Path) -> bool:
        # An installed package is never edited, and its files' times are those of unpacking, in any order.
        if not source.exists() or any(extension.is_relative_to(root) for root in self._installed_under):
            return False
        return source.stat().st_mtime > extension.stat().st_mtime


def install() -> None:
    """Put the finder for this package first on sys.meta_path (once)."""
    if any(isinstance(finder, SourceWhenStale) for finder in sys.meta_path):
        return
    paths = sysconfig.get_paths()
    installed_under = {Path(paths["purelib"]), Path(paths["platlib"])}
    sys.meta_path.insert(0, SourceWhenStale(_PREFIX, bool(os.environ.get(PURE_PYTHON_ENV)), sorted(installed_under)))


def compiled_modules() -> list[str]:
    """The package's modules imported so far from a compiled extension."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith(_PREFIX) and isinstance(getattr(module, "__loader__", None), ExtensionFileLoader)
    )
