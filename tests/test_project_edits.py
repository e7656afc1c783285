"""Undoable edits and autosave/recovery of the project document (no GUI)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from zvstudio.errors import ZvsError
from zvstudio.project import ClipRef, FrameRange, KeyFrame, Project, RenderSettings
from zvstudio.project.autosave import Autosaver, pending_recoveries
from zvstudio.project.edits import (
    MoveKey,
    RemoveKey,
    ReplaceClip,
    SetFrameRange,
    SetKey,
    SetSettings,
    keys_every,
    mark_range,
    relink_clip,
)


def frames(project: Project) -> list[int]:
    return [key.frame for key in project.keyframes]


def test_every_edit_reverts_exactly():
    clip = ClipRef("/clips/a.mp4", "b2:" + "1" * 32)
    project = Project(clip=clip, keyframes=[KeyFrame(0), KeyFrame(10, prompt="a cat", seed=3)])
    original = repr(project)
    shorter = ClipRef("/clips/a-v2.mp4", "b2:" + "2" * 32)
    edits = [
        SetKey(KeyFrame(5)),
        SetKey(KeyFrame(10, prompt="a dog")),
        RemoveKey(0),
        MoveKey(10, 12),
        SetSettings(replace(project.settings, style="pencil"), "style"),
        SetFrameRange(FrameRange(2, 20)),
        ReplaceClip(shorter, 10),
    ]
    for edit in edits:
        edit.apply(project)
    assert frames(project) == [5] and project.frame_range == FrameRange(2, 9)
    assert project.clip == shorter
    for edit in reversed(edits):
        edit.revert(project)
    assert repr(project) == original
    for edit in edits:  # redo after undo gives the same result again
        edit.apply(project)
    assert frames(project) == [5] and project.settings.style == "pencil"
    edits[-1].revert(project)
    assert project.key_at(12).prompt == "a dog" and project.frame_range == FrameRange(2, 20)


def test_moving_onto_a_key_is_refused_and_changes_nothing():
    project = Project(keyframes=[KeyFrame(0), KeyFrame(4)])
    with pytest.raises(ZvsError, match="already a key"):
        MoveKey(0, 4).apply(project)
    assert frames(project) == [0, 4]


def test_keys_every_keeps_keys_with_overrides():
    project = Project(keyframes=[KeyFrame(3, prompt="hero"), KeyFrame(7), KeyFrame(10, seed=9)])
    edit = keys_every(project, 5, frame_count=16)
    edit.apply(project)
    assert frames(project) == [0, 3, 5, 10, 15]  # 7 had no override: dropped
    assert project.key_at(10).seed == 9 and project.key_at(3).prompt == "hero"
    edit.revert(project)
    assert frames(project) == [3, 7, 10]


def test_keys_every_follows_the_render_range():
    project = Project(frame_range=FrameRange(4, 12))
    keys_every(project, 4, frame_count=100).apply(project)
    assert frames(project) == [4, 8, 12]


def test_in_and_out_points_as_editors_set_them():
    project = Project()

    def mark(first=None, last=None):
        mark_range(project, 100, first, last).apply(project)
        return project.frame_range

    assert mark(first=10) == FrameRange(10, 99)
    assert mark(last=40) == FrameRange(10, 40)
    assert mark(first=50) == FrameRange(50, 99)  # past the out point: the out opens
    assert mark(last=20) == FrameRange(0, 20)  # before the in point: the in opens
    assert mark(last=99) is None  # the whole clip is no range
    edit = mark_range(project, 100, first=5)
    edit.apply(project)
    edit.revert(project)
    assert project.frame_range is None
    with pytest.raises(ZvsError, match="outside the clip"):
        mark_range(project, 100, last=100)


def test_relinking_a_clip_keeps_what_fits_in_it():
    old = ClipRef("/gone/a.mp4", "b2:" + "1" * 32)
    project = Project(clip=old, keyframes=[KeyFrame(0), KeyFrame(10, seed=4)])
    moved = ClipRef("/new/a.mp4", old.content_hash)
    assert relink_clip(project, moved, 24) == []
    assert project.clip == moved and frames(project) == [0, 10]

    project = Project(clip=old, frame_range=FrameRange(5, 20), keyframes=[KeyFrame(0)])
    project.keyframes += [KeyFrame(12), KeyFrame(20)]
    shorter = ClipRef("/new/b.mp4", "b2:" + "2" * 32)
    notes = relink_clip(project, shorter, 12)
    assert frames(project) == [0]
    assert project.frame_range == FrameRange(5, 11) and project.clip == shorter
    assert notes == [
        "keys past the clip's last frame (11) removed: 12, 20",
        "the render range now ends at the clip's last frame",
    ]
    project.frame_range = FrameRange(8, 11)
    assert relink_clip(project, shorter, 8) == ["the render range was cleared"]
    assert project.frame_range is None


def test_typing_in_one_field_merges_into_one_step():
    project = Project()
    first = SetSettings(replace(project.settings, prompt="a"), "prompt")
    first.apply(project)
    later = SetSettings(replace(project.settings, prompt="ab"), "prompt")
    later.apply(project)
    assert first.merge(later)
    assert not first.merge(SetSettings(RenderSettings(seed=4), "seed"))
    first.revert(project)
    assert project.settings.prompt == ""
    key_edit = SetKey(KeyFrame(3, prompt="x"), "prompt")
    key_edit.apply(project)
    assert key_edit.merge(SetKey(KeyFrame(3, prompt="xy"), "prompt"))
    assert not key_edit.merge(SetKey(KeyFrame(4, prompt="xy"), "prompt"))


def test_autosave_of_a_live_editor_is_not_offered_for_recovery(tmp_path):
    saver = Autosaver(tmp_path)
    saver.save(Project(keyframes=[KeyFrame(3)]), tmp_path / "mine.zvs")
    assert pending_recoveries(tmp_path) == []  # this process is running
    saver.discard()
    assert list(tmp_path.iterdir()) == []


def test_autosave_left_by_a_crashed_editor_is_recovered(tmp_path):
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from zvstudio.project import Project, KeyFrame\n"
        "from zvstudio.project.autosave import Autosaver\n"
        "saver = Autosaver(Path(sys.argv[1]))\n"
        "saver.save(Project(keyframes=[KeyFrame(7, prompt='lost?')]), Path(sys.argv[2]))\n"
        "os._exit(9)  # a crash: no clean-up\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "p.zvs")])
    [recovery] = pending_recoveries(tmp_path)
    assert recovery.original == tmp_path / "p.zvs"
    assert recovery.load().key_at(7).prompt == "lost?"
    recovery.discard()
    assert pending_recoveries(tmp_path) == [] and os.listdir(tmp_path) == []


def test_damaged_autosave_notes_are_ignored(tmp_path):
    (tmp_path / "session-1-2.zvs").write_text("{}")
    (tmp_path / "session-1-2.zvs.json").write_text("not json")
    assert pending_recoveries(tmp_path) == []
