"""Packaging files (packaging/, the icon): fast checks that build nothing.

The real build (packaging/build.sh: a fresh venv, then PyInstaller) takes many minutes and is run
by hand; these catch a spec, desktop entry, icon or script that is broken or incomplete.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.resources import files
from pathlib import Path

import pytest

import zvstudio

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SPEC = PACKAGING / "zvstudio.spec"
ENTRY = PACKAGING / "zvstudio_entry.py"
DESKTOP = PACKAGING / "zvstudio.desktop"
MIME = PACKAGING / "zvstudio-mime.xml"
BUILD = PACKAGING / "build.sh"
SVG = REPO / "resources" / "zvstudio.svg"
PNG = REPO / "resources" / "zvstudio.png"
PROJECT_TYPE = "application/x-zvstudio-project"


# -- the PyInstaller spec -----------------------------------------------------------------------
def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))


def _strings(tree: ast.AST) -> set[str]:
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return ast.literal_eval(keyword.value)
    raise AssertionError(f"{name}= missing from the {ast.unparse(call.func)}(...) call")


def test_spec_parses_and_builds_a_zvstudio_folder_from_the_entry_script():
    tree = _spec_tree()
    (analysis,) = _calls(tree, "Analysis")
    scripts = analysis.args[0]
    assert isinstance(scripts, ast.List) and len(scripts.elts) == 1
    assert ast.unparse(scripts.elts[0]) == "ENTRY_SCRIPT"
    assert "zvstudio_entry.py" in _strings(tree) and ENTRY.is_file()
    (exe,) = _calls(tree, "EXE")
    assert _keyword(exe, "name") == "zvstudio"
    assert _keyword(exe, "exclude_binaries") is True  # onedir: the libraries sit beside it
    assert _keyword(exe, "upx") is False
    (collect,) = _calls(tree, "COLLECT")
    assert _keyword(collect, "name") == "zvstudio"


def test_spec_collects_what_the_app_needs_at_run_time():
    tree = _spec_tree()
    strings = _strings(tree)
    # Package data: resources (SD1.5 configs, demo scene, icon) and CLIP's BPE vocabulary.
    assert {"zvstudio.resources", "**/*.json", "**/*.svg", "**/*.png", "**/*.qss"} <= strings
    assert {"clip", "*.txt.gz"} <= strings
    collected = {ast.unparse(call) for call in _calls(tree, "collect_data_files")}
    assert any("'zvstudio.resources'" in call for call in collected)
    assert any("'clip'" in call for call in collected)
    # The whole package (the editor is imported lazily) and the Qt modules it uses.
    assert "collect_submodules('zvstudio')" in {
        ast.unparse(call) for call in _calls(tree, "collect_submodules")
    }
    assert {"PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets", "PySide6.QtSvg"} <= strings
    # Lazily imported model code.
    assert {"diffusers.models", "diffusers.schedulers", "transformers.models.clip"} <= strings
    # Distributions whose versions are read with importlib.metadata at run time.
    (metadata_call,) = [call for call in _calls(tree, "_metadata") if call.args]
    names = {ast.literal_eval(arg) for arg in metadata_call.args}
    required = {
        "zvstudio",
        "openai-clip",
        "transformers",
        "diffusers",
        "huggingface_hub",
        "tokenizers",
        "safetensors",
        "accelerate",
        "peft",
        "torch",
        "tqdm",
        "regex",
        "requests",
        "filelock",
        "numpy",
        "packaging",
        "pyyaml",
    }
    assert required <= names, f"copy_metadata misses {sorted(required - names)}"
    assert {"tkinter", "pytest"} <= strings  # excluded


def test_the_data_the_spec_collects_is_in_the_package():
    resources = files("zvstudio.resources")
    for name in ("demo_scene.json", "sd15/model_index.json", "sd15/unet/config.json"):
        assert resources.joinpath(name).is_file(), name
    # The editor loads its window icon from the package (zvstudio.gui.app).
    assert (Path(str(resources)) / "zvstudio.svg").is_file()
    from zvstudio.diffusion.tokenizer import find_bpe_file

    bpe = find_bpe_file()
    assert bpe is not None and bpe.name == "bpe_simple_vocab_16e6.txt.gz"
    assert bpe.parent.name == "clip"  # the spec collects it from the `clip` package


def _load_entry():
    spec = importlib.util.spec_from_file_location("zvstudio_pack_entry", ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv",
    [["zvstudio", "--version"], ["zvstudio", "-m", "zvstudio.__main__", "--version"]],
    ids=["cli", "python-m"],
)
def test_entry_script_runs_the_cli(monkeypatch, capsys, argv):
    entry = _load_entry()
    monkeypatch.setattr(sys, "argv", list(argv))
    with pytest.raises(SystemExit) as exit_info:
        entry._run()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"zvstudio {zvstudio.__version__}"


# -- the desktop entry and MIME type ------------------------------------------------------------
def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(DESKTOP.read_text(encoding="utf-8"))
    return parser["Desktop Entry"]


def _list(value: str) -> list[str]:
    assert value.endswith(";"), f"{value!r}: a desktop-entry list ends with ';'"
    return value[:-1].split(";")


def test_desktop_entry_has_the_required_keys():
    entry = _desktop_entry()
    assert entry["Type"] == "Application"
    assert entry["Name"] == "zvstudio"
    assert entry["Exec"] == "zvstudio %F"
    assert entry["Icon"] == "zvstudio"
    assert entry["Terminal"] == "false"
    types = _list(entry["MimeType"])
    assert PROJECT_TYPE in types
    assert "video/mp4" in types and all(t.startswith(("video/", "application/")) for t in types)
    categories = _list(entry["Categories"])
    assert categories[:3] == ["AudioVideo", "Video", "AudioVideoEditing"]


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="no desktop-file-utils")
def test_desktop_entry_validates():
    result = subprocess.run(
        ["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_mime_type_for_projects():
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    root = ET.parse(MIME).getroot()
    (mime_type,) = root.findall(f"m:mime-type[@type='{PROJECT_TYPE}']", ns)
    assert [g.get("pattern") for g in mime_type.findall("m:glob", ns)] == ["*.zvs"]


# -- the icon -----------------------------------------------------------------------------------
def test_svg_icon_is_an_svg():
    root = ET.parse(SVG).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"


def test_png_icon_is_256_square():
    data = PNG.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, chunk = struct.unpack(">I4s", data[8:16])
    assert chunk == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (256, 256)


# -- the build script ---------------------------------------------------------------------------
def test_build_script_is_executable_and_parses():
    assert os.access(BUILD, os.X_OK), "packaging/build.sh must be executable (chmod +x)"
    assert BUILD.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    result = subprocess.run(["bash", "-n", str(BUILD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_build_script_help_and_bad_options_build_nothing(tmp_path):
    run = [str(BUILD), "--out", str(tmp_path / "b")]
    help_ = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0 and "--dist" in help_.stdout
    bad = subprocess.run([*run, "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr
    assert not (tmp_path / "b").exists()


def test_build_script_refuses_to_build_inside_the_repository():
    result = subprocess.run(
        [str(BUILD), "--out", str(REPO / "build")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "outside the repository" in result.stderr
