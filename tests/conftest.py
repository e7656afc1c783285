from __future__ import annotations

import os
import socket

import pytest

from zvstudio.bench import shared_clips


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Prove that no test reaches the network, and keep any real HF cache out of them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's proxies, caches and settings out of the user's folders."""
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("ZVSTUDIO_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def _no_local_annotators(monkeypatch):
    """Annotators backed by the user's model files (depth, HED) are not looked for unless a
    test asks (`refresh_local_annotators`), and whatever a test registers is forgotten."""
    from zvstudio.diffusion import annotators, library

    monkeypatch.setattr(annotators, "_annotators", dict(annotators._annotators))
    monkeypatch.setattr(annotators, "_local_models_checked", True)
    monkeypatch.setattr(library, "_app_folders", (None, ()))  # the editor's, once applied


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (tiny tensors: ~20x faster than two threads fighting
    over a busy 2-core machine), then restore the count."""
    import torch  # here, not at the top: most tests never need torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


SHARED_CLIPS = shared_clips()
needs_shared_clips = pytest.mark.skipif(
    not SHARED_CLIPS, reason="../shared/clips is absent (real footage is optional)"
)
