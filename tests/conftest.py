"""Shared fixtures: a real tiny llama built once per machine, a fresh studio per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# scripts/test preloads the chosen BLAS into this process; the processes the tests start
# (servers, CLIs, workers) choose theirs as they would for a user
os.environ.pop("LD_PRELOAD", None)

from core.models.toy import build_toy_llama  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.helpers import colour_rows, write_jsonl  # noqa: E402

TOY_MODEL_VERSION = "toy-llama-v1"  # bump when build_toy_llama changes


@pytest.fixture(scope="session")
def toy_model(request) -> Path:
    """A ~180k-parameter llama with a locally trained tokenizer, cached across runs."""
    folder = request.config.cache.mkdir(TOY_MODEL_VERSION) / "toy"
    if not (folder / "model.safetensors").is_file():
        build_toy_llama(folder)
    return folder


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "studio"
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    return Settings.from_env(home).ensure()


@pytest.fixture
def colour_dataset(tmp_path) -> Path:
    return write_jsonl(tmp_path / "colours.jsonl", colour_rows())


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, toy_model) -> Path:
    """A real adapter folder, trained once per session on the toy model by the service."""
    from core.params import TrainingParams
    from core.train.service import TrainingService

    home = tmp_path_factory.mktemp("adapter-studio")
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    # trained enough that it answers with words (earlier, the toy model only says </s>)
    params = TrainingParams(learning_rate=1e-2, epochs=3, lora_layers=-1)
    run = TrainingService(Settings.from_env(home)).start(toy_model, data, params, name="Colours")
    final = run.wait(timeout=300)
    assert final.type == "complete", final
    return run.adapter_path


CHROMIUM = os.environ.get("LORA_STUDIO_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/test does it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def browser_page(browser):
    """Open pages on a URL (the Train tab shown); all closed after the test."""
    pages = []

    def open_page(url: str):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Train").wait_for()
        pages.append(page)
        return page

    yield open_page
    for page in pages:
        page.close()
