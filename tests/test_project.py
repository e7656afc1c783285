"""The project document: model helpers, the .zvs format, migrations and atomic saving."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from zvstudio.errors import ProjectError
from zvstudio.project import (
    CURRENT_SCHEMA_VERSION,
    FORMAT,
    MIGRATIONS,
    ClipRef,
    FrameRange,
    KeyFrame,
    LoraRef,
    OutputSettings,
    Project,
    RenderSettings,
    content_hash,
    load_project,
    project_from_dict,
    project_to_dict,
    save_project,
)
from zvstudio.project.model import DEFAULT_KEY_SIZE

FIXTURES = Path(__file__).parent / "fixtures"


def make_file(path: Path, data: bytes = b"not really a video") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def full_project(folder: Path) -> Project:
    """A project that sets every field away from its default."""
    clip = make_file(folder / "media" / "clip.mp4")
    painted = make_file(folder / "paint" / "key10.png")
    lora = make_file(folder / "loras" / "ink.safetensors")
    settings = RenderSettings(
        renderer="diffusion",
        style="ink",
        key_interval=5,
        prompt="an ink drawing",
        negative_prompt="blurry",
        seed=1234,
        strength=0.5,
        steps=30,
        guidance_scale=6.0,
        model="sd15.safetensors",
        loras=[LoraRef(lora, -0.5)],
        controlnet=None,
        controlnet_scale=1.2,
        output=OutputSettings(format="prores", crf=0, audio=False),
    )
    keys = [
        KeyFrame(0),
        KeyFrame(10, prompt="a café at night", seed=7, strength=0.25, painted_image=painted),
        KeyFrame(20, negative_prompt=""),
    ]
    return Project(ClipRef.from_file(clip), FrameRange(0, 99), keys, settings)


def save_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def v1(**fields: object) -> dict:
    return {"format": FORMAT, "schema_version": 1, **fields}


def load_error(path: Path) -> str:
    with pytest.raises(ProjectError) as info:
        load_project(path)
    return info.value.message


# --------------------------------------------------------------------------- model


def test_set_key_keeps_keys_sorted_and_replaces_same_frame():
    project = Project()
    for frame in (20, 0, 10):
        assert project.set_key(KeyFrame(frame)) is None
    assert [k.frame for k in project.keyframes] == [0, 10, 20]
    old = project.set_key(KeyFrame(10, prompt="new"))
    assert old == KeyFrame(10)
    assert [k.frame for k in project.keyframes] == [0, 10, 20]
    assert project.key_at(10) == KeyFrame(10, prompt="new")
    assert project.key_at(11) is None
    assert project.key_at(99) is None


def test_remove_key_returns_it_and_keeps_order():
    project = Project(keyframes=[KeyFrame(30), KeyFrame(0), KeyFrame(15)])
    assert [k.frame for k in project.keyframes] == [0, 15, 30]  # sorted on construction
    assert project.remove_key(15) == KeyFrame(15)
    assert project.remove_key(15) is None
    assert [k.frame for k in project.keyframes] == [0, 30]


def test_constructors_reject_bad_values():
    with pytest.raises(ProjectError, match=r"strength: must be between 0 and 1, got 1\.5"):
        KeyFrame(3, strength=1.5)
    with pytest.raises(ProjectError, match=r"last: must not be before first \(5\), got 2"):
        FrameRange(5, 2)
    with pytest.raises(ProjectError, match="seed: expected an integer, got true"):
        RenderSettings(seed=True)
    with pytest.raises(ProjectError, match=r"keyframes\[1\]\.frame: duplicate 4"):
        Project(keyframes=[KeyFrame(4), KeyFrame(4)])
    with pytest.raises(ProjectError, match="format: must be one of"):
        OutputSettings(format="gif")
    assert FrameRange(3, 3).count == 1


# ------------------------------------------------------------------------- hashing


def test_content_hash_equal_for_copies_and_changes_with_one_byte(tmp_path):
    data = os.urandom(3 * (1 << 20) + 123)  # several 1 MiB chunks and a partial one
    original = make_file(tmp_path / "a.bin", data)
    copy = make_file(tmp_path / "b.bin", data)
    changed = make_file(tmp_path / "c.bin", data[:-1] + bytes([data[-1] ^ 1]))
    digest = content_hash(original)
    assert digest == "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()
    assert content_hash(copy) == digest
    assert content_hash(changed) != digest


def test_content_hash_of_missing_file_is_a_project_error(tmp_path):
    with pytest.raises(ProjectError, match="not found"):
        content_hash(tmp_path / "gone.mp4")


# ------------------------------------------------------------------------ round trip


def test_round_trip_preserves_every_field(tmp_path):
    project = full_project(tmp_path)
    path = tmp_path / "film.zvs"
    save_project(project, path)
    assert load_project(path) == project

    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert "a café at night" in text  # UTF-8, not \u escapes
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["format"] == FORMAT
    assert data["schema_version"] == CURRENT_SCHEMA_VERSION
    assert data["clip"]["path"] == "media/clip.mp4"
    assert data["keyframes"][1]["painted_image"] == "paint/key10.png"
    assert data["settings"]["loras"][0]["path"] == "loras/ink.safetensors"


def test_saving_twice_gives_identical_bytes(tmp_path):
    project = full_project(tmp_path)
    save_project(project, tmp_path / "a.zvs")
    save_project(load_project(tmp_path / "a.zvs"), tmp_path / "b.zvs")
    assert (tmp_path / "a.zvs").read_bytes() == (tmp_path / "b.zvs").read_bytes()


def test_project_moved_with_its_clip_finds_the_clip(tmp_path):
    project = full_project(tmp_path / "old")
    save_project(project, tmp_path / "old" / "film.zvs")
    shutil.move(tmp_path / "old", tmp_path / "new" / "place")

    loaded = load_project(tmp_path / "new" / "place" / "film.zvs")
    new_root = tmp_path / "new" / "place"
    assert loaded.clip.path == str(new_root / "media" / "clip.mp4")
    assert os.path.isfile(loaded.clip.path)
    assert loaded.clip.content_hash == project.clip.content_hash
    assert loaded.key_at(10).painted_image == str(new_root / "paint" / "key10.png")
    assert loaded.settings.loras[0].path == str(new_root / "loras" / "ink.safetensors")


def test_clip_near_the_project_is_stored_relative(tmp_path):
    clip = make_file(tmp_path / "footage" / "clip.mp4")
    data = project_to_dict(Project(ClipRef(clip)), tmp_path / "projects" / "film")
    assert data["clip"]["path"] == "../../footage/clip.mp4"


def test_clip_elsewhere_keeps_its_absolute_path(tmp_path):
    clip = make_file(tmp_path / "library" / "clip.mp4")
    project_dir = tmp_path / "a" / "b" / "c" / "d"
    project_dir.mkdir(parents=True)
    save_project(Project(ClipRef(clip)), project_dir / "film.zvs")
    assert json.loads((project_dir / "film.zvs").read_text())["clip"]["path"] == clip

    shutil.move(project_dir, tmp_path / "moved")
    assert load_project(tmp_path / "moved" / "film.zvs").clip.path == clip


def test_missing_optional_fields_take_defaults(tmp_path):
    path = save_json(tmp_path / "p.zvs", v1(settings={"prompt": "hi", "output": {}}))
    assert load_project(path) == Project(settings=RenderSettings(prompt="hi"))
    assert project_from_dict(v1(), tmp_path) == Project()


# ------------------------------------------------------------------------ migration


def test_migrates_the_pre_release_format(tmp_path):
    loaded = load_project(FIXTURES / "project_v0.zvs")
    assert loaded.schema_version == CURRENT_SCHEMA_VERSION
    assert loaded.clip == ClipRef(str(FIXTURES / "clip.mp4"), "")  # "" = not yet hashed
    assert loaded.keyframes == [
        KeyFrame(0),
        KeyFrame(5, prompt="a fox in the snow"),
        KeyFrame(10),
        KeyFrame(20),
    ]
    assert loaded.settings == RenderSettings(
        style="pencil", prompt="a watercolour landscape", key_interval=10
    )
    assert loaded.frame_range is None

    save_project(loaded, tmp_path / "now.zvs")
    assert json.loads((tmp_path / "now.zvs").read_text())["schema_version"] == 1


def test_every_old_version_has_a_migration():
    assert sorted(MIGRATIONS) == list(range(CURRENT_SCHEMA_VERSION))


def test_v0_problems_are_reported_after_migration(tmp_path):
    path = save_json(tmp_path / "old.zvs", {"video": "c.mp4", "keys": [3, "x"], "every": 0})
    message = load_error(path)
    assert "keyframes[1]: expected an object, got 'x'" in message
    assert "settings.key_interval: must be at least 1, got 0" in message


# --------------------------------------------------------------------- atomic saving


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("fail_at", ["fsync", "backup", "replace", "interrupt"])
def test_crash_while_saving_leaves_the_old_file_untouched(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "film.zvs"
    save_project(Project(keyframes=[KeyFrame(1)]), path)
    save_project(Project(keyframes=[KeyFrame(2)]), path)  # now there is a .bak too
    before = snapshot(tmp_path)

    real_replace = os.replace

    def fsync(fd):
        raise KeyboardInterrupt if fail_at == "interrupt" else OSError(errno.EIO, "I/O error")

    def replace_file(src, dst):
        failing = str(path) + (".bak" if fail_at == "backup" else "")
        if str(dst) == failing:
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    if fail_at in ("fsync", "interrupt"):
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(os, "replace", replace_file)

    expected = KeyboardInterrupt if fail_at == "interrupt" else ProjectError
    with pytest.raises(expected):
        save_project(Project(keyframes=[KeyFrame(3)]), path)
    monkeypatch.undo()

    if fail_at == "replace":  # the backup was refreshed (with the same content) before
        before[path.name + ".bak"] = before[path.name]
    assert snapshot(tmp_path) == before  # byte-identical, and no temp file left over
    assert load_project(path).keyframes == [KeyFrame(2)]


def test_backup_holds_the_previous_version(tmp_path):
    path = tmp_path / "film.zvs"
    first, second = Project(keyframes=[KeyFrame(1)]), Project(keyframes=[KeyFrame(2)])
    save_project(first, path)
    assert not (tmp_path / "film.zvs.bak").exists()
    first_bytes = path.read_bytes()
    save_project(second, path)
    assert (tmp_path / "film.zvs.bak").read_bytes() == first_bytes
    assert load_project(tmp_path / "film.zvs.bak") == first
    assert load_project(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.zvs", "film.zvs.bak"]


def test_disk_full_is_a_clear_error_and_keeps_the_original(tmp_path, monkeypatch):
    path = tmp_path / "film.zvs"
    save_project(Project(keyframes=[KeyFrame(1)]), path)
    original = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ProjectError) as info:
        save_project(Project(keyframes=[KeyFrame(2)]), path)
    monkeypatch.undo()
    assert info.value.message == f"could not save project to {path}: {os.strerror(errno.ENOSPC)}"
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["film.zvs"]


def test_failed_first_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ProjectError, match="No space left"):
        save_project(Project(), tmp_path / "film.zvs")
    assert list(tmp_path.iterdir()) == []


def test_saving_into_a_missing_folder_is_a_project_error(tmp_path):
    with pytest.raises(ProjectError, match=r"could not save project to .*nowhere"):
        save_project(Project(), tmp_path / "nowhere" / "film.zvs")


def test_an_invalid_project_is_not_saved(tmp_path):
    project = Project(keyframes=[KeyFrame(1)])
    project.keyframes.append(KeyFrame(1))  # bypasses set_key
    project.settings = "oops"  # type: ignore[assignment]
    with pytest.raises(ProjectError) as info:
        save_project(project, tmp_path / "film.zvs")
    assert "keyframes[1].frame: duplicate 1" in info.value.message
    assert "settings: expected an object, got 'oops'" in info.value.message
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    assert load_error(tmp_path / "no.zvs") == f"project file not found: {tmp_path / 'no.zvs'}"


def test_broken_json_names_line_and_column(tmp_path):
    path = tmp_path / "p.zvs"
    path.write_text('{\n  "format": "zvstudio-project",\n  "schema_version" 1\n}\n')
    message = load_error(path)
    assert message.startswith(f"{path} is not a valid project file: broken JSON at line 3, column")
    assert "Expecting ':' delimiter" in message


def test_broken_json_hints_at_the_backup(tmp_path):
    path = tmp_path / "p.zvs"
    save_project(Project(), path)
    save_project(Project(), path)
    path.write_text("")
    with pytest.raises(ProjectError) as info:
        load_project(path)
    assert "the file is empty" in info.value.message
    assert info.value.hint == f"the previous version is kept in {path}.bak"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], "expected a JSON object at the top level, got a list"),
        ({"format": "krita", "schema_version": 1}, "its \"format\" is 'krita'"),
        ({"schema_version": 1}, 'its "format" is missing'),
        ({"hello": 1}, 'its "format" is missing'),
        (v1(schema_version="1"), "invalid schema_version: expected a whole number"),
        (v1(schema_version=True), "invalid schema_version: expected a whole number"),
    ],
)
def test_not_a_project(tmp_path, data, expected):
    assert expected in load_error(save_json(tmp_path / "p.zvs", data))


def test_newer_version(tmp_path):
    path = save_json(tmp_path / "p.zvs", v1(schema_version=7))
    assert load_error(path) == (
        f"{path} was saved by a newer zvstudio (project version 7; this version reads up to 1); "
        "update zvstudio"
    )


def test_all_problems_are_reported_at_once_with_paths(tmp_path):
    data = v1(
        clip={"content_hash": "md5:abc"},
        frame_range={"first": 10, "last": 5},
        keyframes=[{"frame": 0}, {"frame": 4, "seed": "abc"}],
        settings={"strength": 1.5, "renderer": "oil", "output": {"crf": 60}},
    )
    path = save_json(tmp_path / "p.zvs", data)
    assert load_error(path) == (
        f"{path} has 7 problems:\n"
        "  clip.path: missing required field\n"
        "  clip.content_hash: must be empty or 'b2:' followed by 32 hex digits, got 'md5:abc'\n"
        "  frame_range.last: must not be before first (10), got 5\n"
        "  keyframes[1].seed: expected an integer, got 'abc'\n"
        "  settings.renderer: must be one of 'stylize', 'diffusion', 'painted'; got 'oil'\n"
        "  settings.strength: must be between 0 and 1, got 1.5\n"
        "  settings.output.crf: must be between 0 and 51, got 60"
    )


def test_unknown_fields_are_problems(tmp_path):
    data = v1(colour="red", keyframes=[{"frame": 1, "promt": "x"}], settings={"foo": 1})
    message = load_error(save_json(tmp_path / "p.zvs", data))
    assert message.startswith(f"{tmp_path / 'p.zvs'} has 3 problems:")
    for line in ("colour: unknown field", "keyframes[0].promt: unknown field"):
        assert f"\n  {line}" in message
    assert "settings.foo: unknown field" in message


def test_duplicate_key_frames_are_problems_even_beside_broken_keys(tmp_path):
    keys = [{"frame": 5}, {"frame": 9, "strength": "x"}, {"frame": 5}]
    message = load_error(save_json(tmp_path / "p.zvs", v1(keyframes=keys)))
    assert "keyframes[1].strength: expected a number, got 'x'" in message
    assert "keyframes[2].frame: duplicate 5 (item 0 has it too)" in message


def test_keys_given_twice_in_one_object_are_problems(tmp_path):
    path = tmp_path / "p.zvs"
    path.write_text(
        '{"format": "zvstudio-project", "schema_version": 1, "settings": {"seed": 1, "seed": 2}}'
    )
    assert "settings.seed: given more than once" in load_error(path)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"seed": True}, "settings.seed: expected an integer, got true"),
        ({"steps": False}, "settings.steps: expected an integer, got false"),
        ({"strength": True}, "settings.strength: expected a number, got true"),
        ({"key_interval": 10.0}, "settings.key_interval: expected an integer, got 10.0"),
        ({"output": {"audio": 1}}, "settings.output.audio: expected true or false, got 1"),
        ({"style": None}, "settings.style: expected a string, got null"),
        ({"loras": [{"path": ""}]}, "settings.loras[0].path: must not be empty"),
        ({"output": []}, "settings.output: expected an object, got a list"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, settings, expected):
    message = load_error(save_json(tmp_path / "p.zvs", v1(settings=settings)))
    assert message == f"{tmp_path / 'p.zvs'} has 1 problem:\n  {expected}"


def test_non_finite_numbers_are_rejected(tmp_path):
    path = tmp_path / "p.zvs"
    path.write_text(
        '{"format": "zvstudio-project", "schema_version": 1, "settings": {"guidance_scale": NaN}}'
    )
    assert "settings.guidance_scale: must be a finite number, got nan" in load_error(path)


def test_whole_numbers_load_as_floats(tmp_path):
    loaded = project_from_dict(v1(settings={"strength": 1, "guidance_scale": 7}), tmp_path)
    assert loaded.settings.strength == 1.0
    assert isinstance(loaded.settings.guidance_scale, float)


def test_loaded_keys_are_sorted(tmp_path):
    loaded = project_from_dict(v1(keyframes=[{"frame": 9}, {"frame": 2}]), tmp_path)
    assert [k.frame for k in loaded.keyframes] == [2, 9]


def test_replace_validates_too():
    with pytest.raises(ProjectError, match="key_interval: must be at least 1"):
        replace(RenderSettings(), key_interval=0)


def test_the_project_package_imports_no_qt():
    code = (
        "import sys, zvstudio.project\n"
        "qt = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6')]\n"
        "assert not qt, qt\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------- cross-frame constraints

CONSTRAINTS_AWAY_FROM_DEFAULTS = {
    "cross_frame_layers": "decoder_loose",
    "shape_fusion": False,
    "shape_fusion_start": 0.7,
    "shape_fusion_end": 0.95,
    "pixel_fusion_start": 0.3,
    "pixel_fusion_end": 0.6,
    "pixel_fusion_weight": 0.5,
    "pixel_fusion_detail": 0.9,
    "pixel_fusion_mode": "two_pass",
    "adain": False,
    "colour_correction": True,
    "adain_start": 0.1,
    "adain_end": 0.4,
}


def test_constraint_settings_round_trip(tmp_path):
    settings = RenderSettings(renderer="diffusion", **CONSTRAINTS_AWAY_FROM_DEFAULTS)
    path = tmp_path / "film.zvs"
    save_project(Project(settings=settings), path)
    data = json.loads(path.read_text(encoding="utf-8"))["settings"]
    assert {k: data[k] for k in CONSTRAINTS_AWAY_FROM_DEFAULTS} == CONSTRAINTS_AWAY_FROM_DEFAULTS
    assert load_project(path).settings == settings


def test_files_without_constraint_settings_load_with_the_defaults(tmp_path):
    loaded = project_from_dict(v1(settings={"renderer": "diffusion"}), tmp_path).settings
    assert (loaded.cross_frame_layers, loaded.pixel_fusion_weight) == ("decoder", 1.0)
    assert [loaded.constraint_range(n) for n in ("shape_fusion", "pixel_fusion", "adain")] == [
        (0.9, 1.0),
        (0.5, 0.8),
        (0.0, 0.2),
    ]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"cross_frame_layers": "encoder"}, "settings.cross_frame_layers: must be one of"),
        ({"shape_fusion": 1}, "settings.shape_fusion: expected true or false, got 1"),
        ({"adain_end": 1.5}, "settings.adain_end: must be between 0 and 1, got 1.5"),
        ({"pixel_fusion_weight": -0.1}, "settings.pixel_fusion_weight: must be between 0 and 1"),
        ({"pixel_fusion_mode": "fast"}, "settings.pixel_fusion_mode: must be one of"),
        (
            {"pixel_fusion_start": 0.8, "pixel_fusion_end": 0.5},
            "settings.pixel_fusion_end: must be after pixel_fusion_start (0.8), got 0.5",
        ),
        ({"adain_start": 0.2}, "settings.adain_end: must be after adain_start (0.2), got 0.2"),
    ],
)
def test_bad_constraint_settings_are_rejected(tmp_path, settings, expected):
    assert expected in load_error(save_json(tmp_path / "p.zvs", v1(settings=settings)))


PROPAGATION_AWAY_FROM_DEFAULTS = {
    "synthesis": "patch",
    "flow_preset": "medium",
    "blend": "histogram",
    "poisson": True,
}


def test_propagation_settings_round_trip_and_default(tmp_path):
    settings = RenderSettings(**PROPAGATION_AWAY_FROM_DEFAULTS)
    path = tmp_path / "film.zvs"
    save_project(Project(settings=settings), path)
    data = json.loads(path.read_text(encoding="utf-8"))["settings"]
    assert {k: data[k] for k in PROPAGATION_AWAY_FROM_DEFAULTS} == PROPAGATION_AWAY_FROM_DEFAULTS
    assert load_project(path).settings == settings
    # Files written before these settings existed propagate as they always did.
    loaded = project_from_dict(v1(settings={"renderer": "stylize"}), tmp_path).settings
    assert (loaded.synthesis, loaded.flow_preset, loaded.blend, loaded.poisson) == (
        "flow",
        "fine",
        "soft",
        False,
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"synthesis": "ebsynth"}, "settings.synthesis: must be one of 'flow', 'patch'"),
        ({"flow_preset": "best"}, "settings.flow_preset: must be one of"),
        ({"blend": "average"}, "settings.blend: must be one of"),
        ({"poisson": "yes"}, "settings.poisson: expected true or false"),
    ],
)
def test_bad_propagation_settings_are_rejected(tmp_path, settings, expected):
    assert expected in load_error(save_json(tmp_path / "p.zvs", v1(settings=settings)))


def test_style_parameters_round_trip(tmp_path):
    params = {"colors": 6, "line_threshold": 2.5, "outlines": False, "filter": "normconv"}
    path = tmp_path / "film.zvs"
    save_project(Project(settings=RenderSettings(style="cartoon", style_params=params)), path)
    assert json.loads(path.read_text(encoding="utf-8"))["settings"]["style_params"] == params
    assert load_project(path).settings.style_params == params
    assert project_from_dict(v1(settings={}), tmp_path).settings.style_params == {}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([6], "settings.style_params: expected an object of parameter values, got a list"),
        ({"colors": None}, "colors must be a number, a word or true/false, got null"),
        ({"colors": [1, 2]}, "colors must be a number, a word or true/false, got a list"),
        ({"": 1}, "parameter names must be non-empty strings"),
    ],
)
def test_bad_style_parameters_are_rejected(tmp_path, params, expected):
    assert expected in load_error(
        save_json(tmp_path / "p.zvs", v1(settings={"style_params": params}))
    )
    with pytest.raises(ProjectError):
        RenderSettings(style_params=params)


def test_constraint_settings_are_checked_in_memory_too():
    with pytest.raises(ProjectError, match="shape_fusion_end: must be after shape_fusion_start"):
        replace(RenderSettings(), shape_fusion_start=1.0)
    with pytest.raises(ValueError, match="unknown constraint"):
        RenderSettings().constraint_range("cross_frame")
    assert replace(RenderSettings(), adain=False).constraint_range("adain") is None


def diffusion_key_settings(tmp_path: Path, settings: RenderSettings):
    from zvstudio.engine.request import request_from_project

    clip = ClipRef(make_file(tmp_path / "clip.mp4"))
    settings = replace(settings, renderer="diffusion", model="m.safetensors", controlnet=None)
    request = request_from_project(Project(clip, settings=settings), tmp_path / "o.mp4")
    return request.renderer.diffusion.settings


def test_default_constraint_settings_are_the_samplers(tmp_path):
    from zvstudio.diffusion.sampler import KeySettings

    assert diffusion_key_settings(tmp_path, RenderSettings()) == KeySettings(
        controlnet_scale=RenderSettings().controlnet_scale
    )


def test_pixel_fusion_modes_are_the_samplers():
    from zvstudio.diffusion import sampler
    from zvstudio.project import model

    assert model.PIXEL_FUSION_MODES == sampler.PIXEL_FUSION_MODES


def test_propagation_choices_are_the_engines():
    from zvstudio.flow import DIS_PRESETS
    from zvstudio.project import model
    from zvstudio.propagate import segment

    assert model.SYNTHESIS_MODES == segment.SYNTHESIS_MODES
    assert model.BLEND_MODES == segment.BLEND_MODES
    assert tuple(DIS_PRESETS) == model.FLOW_PRESETS


def test_constraint_settings_reach_the_sampler(tmp_path):
    from zvstudio.diffusion.constraints import ConstraintSchedule

    settings = RenderSettings(**CONSTRAINTS_AWAY_FROM_DEFAULTS)
    key_settings = diffusion_key_settings(tmp_path, settings)
    assert key_settings.cross_frame_layers == "decoder_loose"
    assert key_settings.pixel_fusion_weight == 0.5
    assert key_settings.pixel_fusion_detail == 0.9
    assert key_settings.pixel_fusion_mode == "two_pass"
    assert key_settings.colour_correction is True
    assert key_settings.schedule == ConstraintSchedule(
        cross_frame=(0.0, 1.0), shape_fusion=None, pixel_fusion=(0.3, 0.6), adain=None
    )
    off = diffusion_key_settings(tmp_path, replace(settings, cross_frame_layers="off"))
    assert off.cross_frame_layers == "off" and off.schedule.cross_frame is None


def test_the_key_size_round_trips_reaches_the_sampler_and_defaults_to_512(tmp_path):
    settings = RenderSettings(renderer="diffusion", key_size=768)
    path = tmp_path / "film.zvs"
    save_project(Project(settings=settings), path)
    assert json.loads(path.read_text(encoding="utf-8"))["settings"]["key_size"] == 768
    assert load_project(path).settings == settings
    assert diffusion_key_settings(tmp_path, settings).key_size == 768
    older = project_from_dict(v1(settings={"renderer": "diffusion"}), tmp_path).settings
    assert older.key_size == 512 == DEFAULT_KEY_SIZE
    bad = save_json(tmp_path / "p.zvs", v1(settings={"key_size": -64}))
    assert "settings.key_size: must be" in load_error(bad)


def test_the_render_size_round_trips_and_reaches_the_request(tmp_path):
    from zvstudio.engine.request import request_from_project

    settings = RenderSettings(short_side=720)
    path = tmp_path / "film.zvs"
    clip = make_file(tmp_path / "clip.mp4")
    save_project(Project(ClipRef.from_file(clip), settings=settings), path)
    loaded = load_project(path)
    assert loaded.settings.short_side == 720
    assert request_from_project(loaded, tmp_path / "out.mp4").short_side == 720
    older = project_from_dict(v1(settings={}), tmp_path).settings
    assert older.short_side == 0  # files from before: the clip's size
    bad = save_json(tmp_path / "p.zvs", v1(settings={"short_side": 8}))
    assert "settings.short_side: must be 0 (the clip's size) or at least 16" in load_error(bad)
