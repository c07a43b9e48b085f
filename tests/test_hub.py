"""Hugging Face downloads fail fast and cleanly when the hub cannot be reached."""

from __future__ import annotations

import time

import pytest

from core.errors import StudioError
from core.hub import download_model
from tests.helpers import free_port


@pytest.mark.parametrize("offline_env", ["HF_HUB_OFFLINE", "HF_ENDPOINT"])
def test_offline_download_fails_fast_and_leaves_nothing(tmp_path, monkeypatch, offline_env):
    if offline_env == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a hub address where nothing listens: the network is unreachable
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(StudioError, match="could not download org/model") as caught:
        download_model("org/model", tmp_path, progress=lambda _: None)
    assert time.monotonic() - started < 15
    assert "unreachable" in caught.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc", "no-slash", "org/../x", "/abs/path", ""])
def test_repo_ids_are_checked(tmp_path, bad):
    with pytest.raises(StudioError, match="not a Hugging Face repo id"):
        download_model(bad, tmp_path, progress=lambda _: None)
