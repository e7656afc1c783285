"""Rules of the house that code review alone would not keep."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import zvstudio

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zvstudio"
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "qasync")


def non_gui_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(zvstudio.__path__, "zvstudio.")
        if not m.name.startswith("zvstudio.gui")
    ]


def test_no_qt_import_outside_gui_in_the_source():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "gui" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in QT_MODULES]
    assert offenders == []


def test_engine_and_algorithms_import_without_loading_qt(tmp_path):
    code = (
        "import importlib, sys\n"
        f"for name in {non_gui_modules()!r}: importlib.import_module(name)\n"
        f"loaded = [m for m in {QT_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    # Run outside the checkout so the child imports the same (installed) zvstudio as this
    # process, whose zvstudio.resources exists only once installed.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_every_subpackage_is_installed():
    """pyproject lists packages explicitly (resources/ is mapped in), so none may be missed."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed
    assert config["package-dir"]["zvstudio.resources"] == "resources"


def test_top_level_layout():
    allowed = {
        "zvstudio",
        "resources",
        "plugins",
        "tests",
        "packaging",
        "pyproject.toml",
        "README.md",
        ".ci",
        ".git",
        ".gitignore",
    }
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        return  # not a git checkout (e.g. an unpacked sdist)
    top = {line.split("/")[0] for line in tracked.stdout.splitlines()}
    assert top <= allowed, top - allowed


def test_resources_are_readable_as_package_data():
    from importlib import resources

    assert resources.files("zvstudio.resources").joinpath("demo_scene.json").is_file()
