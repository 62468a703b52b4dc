"""The package layout (docs/ARCHITECTURE.md, "Packages"): the root folders engine/, export/, model/ and
benchmarks/ install as styleengine.*, and code imports them only by that name.

From the repository root `import engine` also works (the working directory is on sys.path), but it
loads a second copy of each module: `engine.steps.TorchStep is not styleengine.engine.steps.TorchStep`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = ("engine", "export", "model", "benchmarks")
SOURCES = [*ROOT_PACKAGES, "src", "tests"]


def _bare_imports(source: str, label: str) -> list[str]:
    """`import engine...` / `from export... import ...` in `source`: a root folder by its bare name."""
    found = []
    for node in ast.walk(ast.parse(source, label)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{label}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in ROOT_PACKAGES]
    return found


def test_no_module_imports_a_root_folder_by_its_bare_name():
    files = [p for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 40  # the scan sees the code
    offenders = [line for path in files
                 for line in _bare_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not offenders, "import these as styleengine.<package>: " + "; ".join(offenders)


# what each layer may not import (the arrows of docs/ARCHITECTURE.md: cli -> engine, benchmarks -> export -> model)
FORBIDDEN = {
    "model": ("styleengine.engine", "styleengine.export", "styleengine.benchmarks", "styleengine.cli"),
    "export": ("styleengine.engine", "styleengine.benchmarks", "styleengine.cli"),
    "engine": ("styleengine.benchmarks", "styleengine.cli"),
}


def test_imports_point_one_way():
    offenders = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.startswith(forbidden)]
    assert not offenders, offenders


def test_the_scan_finds_a_bare_import():
    source = "import engine.steps\nfrom export import spec\nfrom styleengine.export import spec\nfrom . import x\n"
    assert _bare_imports(source, "probe.py") == ["probe.py:1: engine.steps", "probe.py:2: export"]


def test_every_root_package_is_installed_under_styleengine():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    assert mapping == {"styleengine": "src/styleengine", **{f"styleengine.{p}": p for p in ROOT_PACKAGES}}
    # packages inside src/styleengine (serve/) need no mapping of their own
    inner = [f"styleengine.{p.parent.name}" for p in (ROOT / "src" / "styleengine").glob("*/__init__.py")]
    assert sorted(setuptools["packages"]) == sorted([*mapping, *inner])
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk == set(ROOT_PACKAGES), "a new root package needs its styleengine.* line in pyproject.toml"
