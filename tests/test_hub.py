"""Hugging Face downloads fail fast and cleanly when the hub cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from core.errors import StudioError
from core.models.hub import download_model
from tests.helpers import free_port

DOWNLOAD = """
import sys
from pathlib import Path
from core.errors import StudioError
from core.models.hub import download_model
try:
    download_model("org/model", Path(sys.argv[1]), progress=lambda _: None)
except StudioError as exc:
    print(exc.message)
    print(exc.hint)
    sys.exit(3)
"""


def test_offline_mode_fails_fast_and_leaves_nothing(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: no test may reach a hub
    with pytest.raises(StudioError, match="could not download org/model") as caught:
        download_model("org/model", tmp_path, progress=lambda _: None)
    assert "unreachable" in caught.value.hint
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_hub_fails_fast_and_leaves_nothing(tmp_path):
    """A fresh process, online mode (huggingface_hub reads HF_HUB_OFFLINE once, at import),
    the hub's address a local port where nothing listens: connections are refused at once."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", DOWNLOAD, str(tmp_path / "models")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "could not download org/model" in done.stdout and "unreachable" in done.stdout
    assert time.monotonic() - started < 60  # not a hang on retries
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc", "no-slash", "org/../x", "/abs/path", ""])
def test_repo_ids_are_checked(tmp_path, bad):
    with pytest.raises(StudioError, match="not a Hugging Face repo id"):
        download_model(bad, tmp_path, progress=lambda _: None)
