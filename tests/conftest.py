from __future__ import annotations

import os

import pytest

from zvstudio.bench import shared_clips


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's proxies and caches out of the user's cache folder."""
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def pytest_configure(config):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


SHARED_CLIPS = shared_clips()
needs_shared_clips = pytest.mark.skipif(
    not SHARED_CLIPS, reason="../shared/clips is absent (real footage is optional)"
)
