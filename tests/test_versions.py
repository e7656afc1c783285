"""Versions: looks kept inside a project (settings and keys), restored by an undoable edit,
saved with the project, compared through the render cache, and rendered by name from the
command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.engine.request import request_from_project
from zvstudio.engine.status import render_status
from zvstudio.errors import ProjectError, ZvsError
from zvstudio.project import ClipRef, KeyFrame, Project, RenderSettings, load_project, save_project
from zvstudio.project.edits import (
    DeleteVersion,
    KeepVersion,
    RelinkFiles,
    RenameVersion,
    RestoreVersion,
)
from zvstudio.project.versions import (
    check_version_name,
    current_look,
    differences,
    find_version,
    is_current,
    next_version_name,
    version_project,
)

INK = RenderSettings(style="pencil", key_interval=4, matte="/shots/roto/m.png")
POSTER = RenderSettings(style="posterize", style_params={"levels": 2}, key_interval=4)


def project_with_ink() -> Project:
    return Project(keyframes=[KeyFrame(0), KeyFrame(4, seed=3)], settings=INK)


def test_keep_restore_rename_and_delete_are_exact_undo_steps():
    project = project_with_ink()
    assert next_version_name(project) == "Version 1"
    keep = KeepVersion(current_look(project, "  Ink   first "))
    keep.apply(project)
    assert [v.name for v in project.versions] == ["Ink first"]
    assert is_current(project, project.versions[0]) and project.versions[0].kept

    project.settings = POSTER
    project.remove_key(4)
    version = find_version(project, "Ink first")
    assert not is_current(project, version)
    assert differences(project, version) == [
        "style",
        "style params",
        "matte",
        "keys (2 then, 1 now)",
    ]

    restore = RestoreVersion("Ink first")
    restore.apply(project)
    assert project.settings == INK and project.keyframes == [KeyFrame(0), KeyFrame(4, seed=3)]
    assert differences(project, version) == []
    restore.revert(project)
    assert project.settings == POSTER and project.keyframes == [KeyFrame(0)]

    # Keeping a version under a name in use replaces that version, and undo brings it back.
    again = KeepVersion(current_look(project, "Ink first"))
    again.apply(project)
    assert len(project.versions) == 1 and project.versions[0].settings == POSTER
    again.revert(project)
    assert project.versions == [version]

    rename = RenameVersion("Ink first", "Ink")
    rename.apply(project)
    assert [v.name for v in project.versions] == ["Ink"]
    assert replace(project.versions[0], name="Ink first") == version
    rename.revert(project)
    assert project.versions == [version]

    KeepVersion(current_look(project, "Poster")).apply(project)
    assert next_version_name(project) == "Version 3"
    with pytest.raises(ZvsError, match="'Poster' exists already"):
        RenameVersion("Ink first", "Poster").apply(project)
    delete = DeleteVersion("Ink first")
    delete.apply(project)
    assert [v.name for v in project.versions] == ["Poster"]
    delete.revert(project)
    assert [v.name for v in project.versions] == ["Ink first", "Poster"]


def test_unknown_names_and_bad_names_are_refused():
    project = project_with_ink()
    with pytest.raises(ProjectError, match="no version named 'Ink'") as err:
        RestoreVersion("Ink").apply(project)
    assert "Keep this version" in err.value.hint
    KeepVersion(current_look(project, "A")).apply(project)
    with pytest.raises(ProjectError) as err:
        DeleteVersion("B").apply(project)
    assert "its versions: 'A'" in err.value.hint
    assert [v.name for v in project.versions] == ["A"]
    for bad in ("", "   ", "x" * 65):
        with pytest.raises(ProjectError):
            check_version_name(bad)


def test_versions_are_saved_with_the_project_with_relative_paths(tmp_path):
    folder = tmp_path / "shot"
    folder.mkdir()
    project = project_with_ink()
    settings = replace(INK, matte=str(folder / "roto" / "m.png"))
    project.settings = settings
    KeepVersion(current_look(project, "Ink")).apply(project)
    save_project(project, folder / "shot.zvs")
    assert '"matte": "roto/m.png"' in (folder / "shot.zvs").read_text()
    moved = tmp_path / "moved"
    (folder).rename(moved)
    loaded = load_project(moved / "shot.zvs")
    assert loaded.versions[0].settings.matte == str(moved / "roto" / "m.png")
    assert loaded.versions[0].keyframes == project.keyframes


def test_relinking_files_relinks_the_versions_too():
    project = project_with_ink()
    KeepVersion(current_look(project, "Ink")).apply(project)
    relink = RelinkFiles({"/shots/roto/m.png": "/disk2/roto/m.png"})
    relink.apply(project)
    assert project.settings.matte == "/disk2/roto/m.png"
    assert project.versions[0].settings.matte == "/disk2/roto/m.png"
    relink.revert(project)
    assert project.versions[0].settings.matte == "/shots/roto/m.png"


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path))


def test_a_rendered_version_is_found_in_the_cache_and_rendered_by_name(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=8)
    project = Project(clip=ClipRef.from_file(clip), keyframes=[KeyFrame(0), KeyFrame(4)])
    project.settings = POSTER
    path = tmp_path / "walk.zvs"
    save_project(project, path)
    assert main(["render", str(path), "-q", "-o", str(tmp_path / "poster")]) == 0
    capsys.readouterr()

    project = load_project(path)
    KeepVersion(current_look(project, "Poster")).apply(project)
    project.settings = replace(POSTER, style="pencil", style_params={})
    save_project(project, path)
    version = find_version(project, "Poster")
    # The version's frames are still in the cache: comparing costs no render.
    compared = render_status(request_from_project(version_project(project, version), tmp_path))
    assert compared.complete
    now = render_status(request_from_project(project, tmp_path))
    assert not now.complete and all(state != "rendered" for state in now.keys.values())
    assert np.array_equal(
        cv2.cvtColor(compared.rendered_frame(5), cv2.COLOR_RGB2BGR),
        read_png(tmp_path / "poster" / "frame_000005.png"),
    )

    args = ["render", str(path), "--version", "Poster", "-q"]
    assert main([*args, "-o", str(tmp_path / "again")]) == 0
    for number in range(8):
        name = f"frame_{number:06d}.png"
        expected = read_png(tmp_path / "poster" / name)
        assert np.array_equal(read_png(tmp_path / "again" / name), expected)
    assert main(["render", str(path), "--version", "Nope", "-o", str(tmp_path / "n")]) == 1
    assert "no version named 'Nope'" in capsys.readouterr().err
    assert main(["render", str(clip), "--version", "Poster", "-o", str(tmp_path / "m")]) == 1
    assert "kept in a project" in capsys.readouterr().err


def test_the_command_line_lists_a_projects_versions(tmp_path, capsys):
    import json

    path = tmp_path / "shot.zvs"
    project = project_with_ink()
    save_project(project, path)
    assert main(["versions", str(path)]) == 0
    assert "has no versions" in capsys.readouterr().out
    KeepVersion(current_look(project, "Ink")).apply(project)
    project.settings = POSTER
    save_project(project, path)
    assert main(["versions", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Ink (kept " in out and ", 2 keys)" in out and "style pencil" in out
    assert "differs from now in: style, style params, matte" in out
    assert main(["versions", str(path), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["versions"]
    assert entry["name"] == "Ink" and entry["differs_in"] == ["style", "style params", "matte"]
