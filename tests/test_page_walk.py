"""The frictions a new user's walk through the page found, in real headless Chromium against
the real `lora-studio` server (and a real `lora-studio train` in another process). The
server's runs are paced (LORA_STUDIO_STEP_DELAY) and its chat too (LORA_STUDIO_TOKEN_DELAY,
a real model's 50 tokens/s), so a test sees them while they go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import (
    colour_preferences,
    colour_rows,
    fill_number,
    lora_studio_server,
    pick,
    studio_with_toy,
    write_jsonl,
)
from tests.test_page import shot

PACED = {"LORA_STUDIO_STEP_DELAY": "0.05", "LORA_STUDIO_TOKEN_DELAY": "0.02"}


@pytest.fixture(scope="module")
def paced(tmp_path_factory, toy_model):
    """A studio with the toy model whose runs and chats are paced: (home, url, log)."""
    home = tmp_path_factory.mktemp("walk-studio")
    studio_with_toy(home, toy_model)
    before = {key: os.environ.get(key) for key in PACED}
    os.environ.update(PACED)
    try:
        with lora_studio_server(home) as (_, url, log):
            yield home, url, log
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def page(browser, paced) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(paced[1])
    page.get_by_role("tab", name="Train").wait_for()
    expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
    yield page
    page.close()


def long_greedy_chat(page: Page) -> None:
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("Sampling and system prompt", exact=True).first.click()
    tokens = page.locator("#ls-max-tokens input[type=number]")
    tokens.fill("4096")
    tokens.press("Tab")
    expect(page.locator("#ls-max-tokens input[type=range]")).to_have_value("4096")
    temperature = page.locator("#ls-temperature input[type=number]")
    temperature.fill("0")
    temperature.press("Tab")


def test_a_message_typed_while_a_reply_streams_is_kept_and_stop_ends_the_reply(page):
    long_greedy_chat(page)
    box, send = page.locator("#ls-msg textarea"), page.locator("#ls-send")
    stop = page.locator("#ls-chat-stop")
    send.click()  # nothing typed: said, not ignored
    expect(page.get_by_text("Type a message first.").first).to_be_visible(timeout=10000)
    box.fill("Tell me a long story about the sky")
    send.click()
    expect(send).to_be_disabled(timeout=20000)
    expect(stop).to_be_visible()
    chat = page.locator("#ls-chat")
    expect(chat).to_contain_text("Tell me a long story", timeout=20000)
    box.fill("And the sea?")
    box.press("Enter")  # while the reply streams: ignored, and the text stays in the box
    time.sleep(1.5)
    expect(box).to_have_value("And the sea?")
    assert chat.get_by_text("And the sea?").count() == 0
    shot(page, "chat-replying")
    stop.click()
    expect(send).to_be_enabled(timeout=20000)
    expect(stop).to_be_hidden()
    send.click()  # the kept message goes now
    expect(chat).to_contain_text("And the sea?", timeout=20000)
    expect(send).to_be_disabled(timeout=20000)
    page.locator("#ls-chat-clear").click()  # stops the reply too
    expect(send).to_be_enabled(timeout=20000)
    expect(chat).not_to_contain_text("And the sea?")


def test_a_run_started_from_the_cli_shows_in_an_open_page_and_stops_from_it(page, paced):
    home, _, _ = paced
    data = write_jsonl(home / "cli-colours.jsonl", colour_rows(64))
    env = {**os.environ, "LORA_STUDIO_HOME": str(home), **PACED}
    env.pop("LD_PRELOAD", None)
    args = ["--model", "toy", "--data", str(data), "--epochs", "200", "--lora-layers", "-1"]
    cli = subprocess.Popen(
        [sys.executable, "-m", "webapp", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        progress = page.locator("#ls-progress-text")
        expect(progress).to_contain_text("step", timeout=60000)
        expect(page.locator("#ls-why")).to_contain_text("A training is running")
        expect(page.get_by_role("button", name="Start training")).to_be_disabled()
        expect(page.locator("#ls-runs")).to_contain_text("running")
        shot(page, "cli-run-in-page")
        page.get_by_role("button", name="Stop", exact=True).click()
        _, err = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert "stopped at step" in err, err[-2000:]
    expect(page.locator("#ls-status")).to_contain_text("Stopped", timeout=30000)
    expect(page.locator("#ls-runs")).to_contain_text("stopped", timeout=30000)


def test_a_bad_value_shows_during_a_run_and_best_loss_is_listed(page, paced, tmp_path):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(64))
    page.locator("input[type=file]").first.set_input_files(str(data))
    fill_number(page, "Epochs", "200")
    page.get_by_text("Advanced", exact=True).first.click()
    fill_number(page, "Validate every N steps (0: each epoch)", "4")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=30000)
    start.click()
    expect(page.locator("#ls-progress-text")).to_contain_text(
        "starting", timeout=5000
    )  # said at once, before the run's first event
    expect(page.locator("#ls-progress-text")).to_contain_text("step", timeout=60000)
    fill_number(page, "Rank (1-256)", "0")
    why = page.locator("#ls-why")
    expect(why).to_contain_text("rank", timeout=20000)
    time.sleep(3)  # progress events keep coming: the message stays
    expect(why).to_contain_text("rank")
    expect(page.locator("#ls-runs")).not_to_contain_text("- </td>", timeout=30000)
    best = page.locator("#ls-runs td").nth(5)
    expect(best).not_to_have_text("-", timeout=30000)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#ls-status")).to_contain_text("Stopped", timeout=60000)


def test_one_dataset_in_play_and_refusals_in_the_pages_words(page, tmp_path):
    upload = page.locator("input[type=file]").first
    first = write_jsonl(tmp_path / "first.jsonl", colour_rows(20))
    upload.set_input_files(str(first))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("first.jsonl", timeout=20000)
    second = write_jsonl(tmp_path / "second.jsonl", colour_rows(24))
    path_box = page.get_by_label("...or a path on the server, or a Hugging Face dataset")
    path_box.fill(str(second))
    path_box.press("Enter")
    expect(summary).to_contain_text("second.jsonl", timeout=20000)
    expect(page.get_by_text("first.jsonl")).to_have_count(0)  # the upload box was emptied
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(300))
    page.locator("input[type=file]").first.set_input_files(str(binary))
    expect(page.get_by_text("photo.csv was not taken").first).to_be_visible(timeout=20000)
    expect(page.get_by_text("photo.csv", exact=True)).to_have_count(0)
    expect(summary).to_contain_text("second.jsonl")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(20))
    path_box.fill(str(prefs))
    path_box.press("Enter")
    why = page.locator("#ls-why")
    expect(why).to_contain_text("Method", timeout=20000)
    expect(why).not_to_contain_text("--method")
    shot(page, "refusal-in-page-words")


def test_an_import_preview_error_reads_as_text_not_markdown(page, tmp_path):
    source = tmp_path / "qa.csv"
    source.write_text("question,answer\nWhat colour?,Blue.\n")
    path_box = page.get_by_label("...or a path on the server, or a Hugging Face dataset")
    path_box.fill(str(source))
    path_box.press("Enter")
    expect(page.locator("#ls-mapping-note")).to_contain_text("question", timeout=20000)
    pick(page, "prompt from", "question")
    preview = page.locator("#ls-mapping-preview")
    expect(preview).to_contain_text("Error:", timeout=20000)
    expect(preview).not_to_contain_text("**Error:**")
    expect(preview.locator("b", has_text="Error:")).to_be_visible()


def test_a_studio_with_a_model_hides_the_demo_offer(page):
    expect(page.get_by_text("No model yet? Get the demo model")).to_be_hidden()


def test_a_studio_with_no_model_greets_without_an_error(browser, tmp_path):
    home = tmp_path / "empty"
    home.mkdir()
    with lora_studio_server(home) as (_, url, log):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Train").wait_for()
        expect(page.get_by_text("No model yet? Get the demo model")).to_be_visible(timeout=20000)
        time.sleep(3)  # the load events have run
        assert page.get_by_text("is not a model id").count() == 0
        assert page.locator(".toast-body").count() == 0
        page.get_by_role("tab", name="Adapters").click()
        expect(page.get_by_text("No adapters yet").first).to_be_visible()
        shot(page, "first-screen")
        page.close()
        assert "is not a model id" not in Path(log).read_text()
