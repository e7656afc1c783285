"""Application settings: JSON round trip, atomic writes, recovery from bad files, validation."""

from __future__ import annotations

import json
import os
import re

import pytest

from zvstudio import diskcache
from zvstudio.appsettings import (
    MAX_RECENT,
    OFFLOAD_CHOICES,
    SETTINGS_VERSION,
    AppSettings,
    apply_settings,
    load_settings,
    save_settings,
    settings_path,
)
from zvstudio.errors import ZvsError
from zvstudio.paths import cache_root, config_root


def custom() -> AppSettings:
    return AppSettings(
        model_folders=["/models/a1111", "/data/loras"],
        models_dir="/models/zvs",
        allow_pickle=True,
        device="cuda:1",
        precision="bf16",
        memory_limit_gb=12.5,
        offload="model",
        cache_dir="/fast/cache",
        cache_limit_gb=50.0,
        autosave_minutes=0,
        recent_projects=["/p/b.zvs", "/p/a.zvs"],
    )


def test_defaults_when_there_is_no_file():
    settings = load_settings()
    assert settings == AppSettings()
    assert settings.load_warning is None
    assert (settings.device, settings.cache_limit_gb, settings.autosave_minutes) == ("auto", 10, 3)
    assert not settings_path().exists()  # loading alone writes nothing


def test_round_trip_in_the_config_folder():
    save_settings(custom())
    assert settings_path() == config_root() / "settings.json"
    assert settings_path().is_file()
    data = json.loads(settings_path().read_text())
    assert data["version"] == SETTINGS_VERSION
    assert "load_warning" not in data
    assert load_settings() == custom()


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "deeper" / "settings.json"
    save_settings(AppSettings(device="cpu"), target)
    save_settings(custom(), target)
    assert os.listdir(target.parent) == ["settings.json"]
    assert load_settings(target) == custom()


def test_failed_save_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "settings.json"
    save_settings(AppSettings(device="cpu"), target)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ZvsError, match="No space left"):
        save_settings(custom(), target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["settings.json"]
    assert load_settings(target).device == "cpu"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"device": "gpu9"}', "device"),
        ('{"cache_limit_gb": -1}', "cache_limit_gb"),
        ('{"colour": "blue"}', "unknown settings: colour"),
        ('{"version": 99}', "newer zvstudio"),
        ('{"recent_projects": "a.zvs"}', "recent_projects"),
    ],
)
def test_a_bad_file_gives_defaults_and_is_kept(content, why):
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    settings = load_settings()
    assert settings == AppSettings()
    assert why in settings.load_warning
    bad = path.with_name("settings.json.bad")
    assert bad.read_text() == content
    assert not path.exists()
    save_settings(settings)  # saving the defaults leaves the bad file alone
    assert bad.read_text() == content


def test_undecodable_file_gives_defaults(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    settings = load_settings(path)
    assert settings == AppSettings()
    assert "cannot read" in settings.load_warning
    assert (tmp_path / "settings.json.bad").exists()


def test_recent_projects_newest_first_without_duplicates(tmp_path):
    settings = AppSettings()
    for name in ("a", "b", "c", "a"):
        settings.add_recent(tmp_path / f"{name}.zvs")
    assert settings.recent_projects == [str(tmp_path / f"{n}.zvs") for n in ("a", "c", "b")]
    for i in range(MAX_RECENT + 5):
        settings.add_recent(tmp_path / f"p{i}.zvs")
    assert len(settings.recent_projects) == MAX_RECENT
    assert settings.recent_projects[0] == str(tmp_path / f"p{MAX_RECENT + 4}.zvs")
    assert str(tmp_path / "a.zvs") not in settings.recent_projects


def test_recent_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = AppSettings()
    settings.add_recent("film.zvs")
    settings.add_recent(tmp_path / "film.zvs")
    assert settings.recent_projects == [str(tmp_path / "film.zvs")]


def test_apply_points_the_engine_at_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ZVSTUDIO_CACHE_LIMIT_GB", raising=False)
    apply_settings(AppSettings(cache_dir=str(tmp_path / "big"), cache_limit_gb=2.5))
    assert cache_root() == tmp_path / "big"
    assert diskcache.cache_limit() == int(2.5 * (1 << 30))


def test_apply_without_cache_dir_keeps_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path / "from-env"))
    apply_settings(AppSettings(cache_limit_gb=1))
    assert cache_root() == tmp_path / "from-env"
    assert diskcache.cache_limit() == 1 << 30


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"offload": "disk"}, "offload"),
        ({"memory_limit_gb": 0}, "memory_limit_gb"),
        ({"memory_limit_gb": float("nan")}, "memory_limit_gb"),
        ({"cache_limit_gb": 0}, "cache_limit_gb"),
        ({"autosave_minutes": -1}, "autosave_minutes"),
        ({"autosave_minutes": 1.5}, "autosave_minutes"),
        ({"allow_pickle": 1}, "allow_pickle"),
        ({"cache_dir": ""}, "cache_dir"),
        ({"model_folders": ["/ok", ""]}, "model_folders[1]"),
        ({"recent_projects": [f"/{i}.zvs" for i in range(MAX_RECENT + 1)]}, "recent_projects"),
        ({"version": 0}, "version"),
    ],
)
def test_invalid_values_are_rejected(changes, field):
    with pytest.raises(ZvsError, match=f"invalid settings: {re.escape(field)}"):
        AppSettings(**changes)


def test_save_rechecks_values_changed_in_place():
    settings = AppSettings()
    settings.autosave_minutes = 999
    with pytest.raises(ZvsError, match="autosave_minutes: must be between 0 and 120"):
        save_settings(settings)
    assert not settings_path().exists()


def test_valid_device_spellings():
    for device in ("auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"):
        assert AppSettings(device=device).device == device


def test_offload_choices_match_the_engine():
    from zvstudio.engine.device import OFFLOAD_MODES

    assert ("auto", *OFFLOAD_MODES) == OFFLOAD_CHOICES
