"""The compiled hot path: which build of a module is imported, and that the install compiled them all."""

from __future__ import annotations

import importlib
import os
import re
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, SourceFileLoader
from pathlib import Path

import pytest
from support.build import hot_modules, native_modules

from agentopz_otel import spans
from agentopz_otel.compiled import PURE_PYTHON_ENV, SourceWhenStale, compiled_modules


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A package `hot` with a module `walk` as source and as a (never loaded) extension beside it."""
    folder = tmp_path / "hot"
    folder.mkdir()
    (folder / "walk.py").write_text("")
    (folder / f"walk{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return folder


def times(package: Path, source: float, extension: float) -> None:
    os.utime(package / "walk.py", (source, source))
    os.utime(package / f"walk{EXTENSION_SUFFIXES[0]}", (extension, extension))


def loader_of(finder: SourceWhenStale, package: Path) -> type:
    spec = finder.find_spec("hot.walk", [str(package)])
    assert spec is not None
    return type(spec.loader)


def test_the_extension_is_imported_when_it_was_built_after_its_source(package: Path) -> None:
    times(package, source=1_000, extension=2_000)
    assert loader_of(SourceWhenStale("hot.", False, []), package) is ExtensionFileLoader


def test_an_extension_as_old_as_its_source_is_still_current(package: Path) -> None:
    times(package, source=1_000, extension=1_000)
    assert loader_of(SourceWhenStale("hot.", False, []), package) is ExtensionFileLoader


def test_a_source_edited_after_the_build_is_imported_as_edited(package: Path) -> None:
    times(package, source=1_001, extension=1_000)
    spec = SourceWhenStale("hot.", False, []).find_spec("hot.walk", [str(package)])
    assert isinstance(spec.loader, SourceFileLoader)
    assert spec.origin == str(package / "walk.py")


def test_an_installed_package_is_never_stale_whatever_order_its_files_were_unpacked_in(package: Path) -> None:
    times(package, source=1_001, extension=1_000)
    assert loader_of(SourceWhenStale("hot.", False, [package.parent]), package) is ExtensionFileLoader


def test_a_pxd_edited_after_the_build_makes_the_extension_stale(package: Path) -> None:
    """A .pxd declares the compiled types of the module beside it (spans.pxd): edited, the build is old."""
    times(package, source=1_000, extension=1_000)
    (package / "walk.pxd").write_text("")
    os.utime(package / "walk.pxd", (1_000, 1_000))
    assert loader_of(SourceWhenStale("hot.", False, []), package) is ExtensionFileLoader
    os.utime(package / "walk.pxd", (1_001, 1_001))
    assert loader_of(SourceWhenStale("hot.", False, []), package) is SourceFileLoader


def test_the_compiled_span_view_declares_exactly_the_fields_of_its_source() -> None:
    """spans.pxd makes SpanView an extension type; its fields must be SpanView.__slots__, no more, no fewer
    (a field missing there would fail only where it is set, at run time)."""
    declared = re.findall(r"cdef public object (\w+)", (Path(spans.__file__).with_name("spans.pxd")).read_text())
    assert sorted(declared) == sorted(spans.SpanView.__slots__)
    assert len(declared) == 37


def test_pure_python_imports_the_source_even_beside_a_current_extension(package: Path) -> None:
    times(package, source=1_000, extension=2_000)
    assert loader_of(SourceWhenStale("hot.", True, []), package) is SourceFileLoader


def test_a_c_module_is_not_imported_in_pure_python_or_when_its_c_source_is_newer(tmp_path: Path) -> None:
    """A NATIVE_MODULES extension has no Python source: turned off, its import fails (its caller then
    takes the pure-Python way)."""
    folder = tmp_path / "hot"
    folder.mkdir()
    extension, source = folder / f"scan{EXTENSION_SUFFIXES[0]}", folder / "scan.c"
    extension.write_bytes(b"")
    source.write_text("")
    os.utime(source, (1_000, 1_000))
    os.utime(extension, (1_000, 1_000))
    assert type(SourceWhenStale("hot.", False, []).find_spec("hot.scan", [str(folder)]).loader) is ExtensionFileLoader
    with pytest.raises(ModuleNotFoundError):
        SourceWhenStale("hot.", True, []).find_spec("hot.scan", [str(folder)])
    os.utime(source, (1_001, 1_001))
    with pytest.raises(ModuleNotFoundError):
        SourceWhenStale("hot.", False, []).find_spec("hot.scan", [str(folder)])
    installed = SourceWhenStale("hot.", False, [tmp_path])
    assert type(installed.find_spec("hot.scan", [str(folder)]).loader) is ExtensionFileLoader


def test_other_packages_and_plain_sources_are_left_to_the_usual_finders(package: Path) -> None:
    finder = SourceWhenStale("hot.", True, [])
    assert finder.find_spec("cold.walk", [str(package)]) is None
    (package / "plain.py").write_text("")
    assert type(finder.find_spec("hot.plain", [str(package)]).loader) is SourceFileLoader
    assert finder.find_spec("hot.missing", [str(package)]) is None


def test_every_hot_module_is_compiled_unless_pure_python_is_asked_for() -> None:
    """Under CI the install must have compiled each of setup.py's HOT_MODULES and built its NATIVE_MODULES;
    with AGENTOPZ_PURE_PYTHON none is (the whole unit suite also runs that way:
    tests/service/test_pure_python.py)."""
    for name in hot_modules():
        importlib.import_module(name)
    built = sorted(hot_modules() + native_modules())
    compiled = compiled_modules()
    if os.environ.get(PURE_PYTHON_ENV):
        assert compiled == []
    elif os.environ.get("AGENTOPZ_REQUIRE_ALL"):
        assert compiled == built
    else:
        assert set(compiled) <= set(built)
