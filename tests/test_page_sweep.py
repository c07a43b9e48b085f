"""The Train tab's "Try several settings" in real headless Chromium, against the real
`lora-studio` server: a bad line refused, a sweep stopped and resumed from the page, its
trials ranked on the held-out rows with their intervals and curves."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

from tests.helpers import colour_rows, fill_number, lora_studio_server, write_jsonl
from tests.test_page import shot

TEST_SPLIT = (
    "Share held out of training and validation, to evaluate the adapter on once published (0: none)"
)


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, toy_model):
    home = tmp_path_factory.mktemp("sweep-studio")
    shutil.copytree(toy_model, home / "models" / "toy")
    with lora_studio_server(home) as (_, url, _log):
        yield url


@pytest.mark.slow
def test_a_sweep_from_the_page_stops_resumes_and_ranks_its_trials(browser, studio_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(studio_url)
    page.get_by_role("tab", name="Train").wait_for()
    expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(64))
    page.locator("input[type=file]").first.set_input_files(str(data))
    expect(page.locator("#ls-dataset-summary")).to_contain_text("64 examples", timeout=20000)
    fill_number(page, "Learning rate", "0.01")
    fill_number(page, "Epochs", "2")
    page.get_by_text("Advanced", exact=True).click()
    fill_number(page, TEST_SPLIT, "0.2")
    page.get_by_text("Try several settings (a sweep)").click()
    vary = page.get_by_label("Settings to vary")
    status = page.locator("#ls-sweep-status")

    vary.fill("colour = 1, 2")  # not a field: refused before anything runs
    page.get_by_role("button", name="Start the sweep").click()
    expect(status).to_contain_text("--vary colour: unknown field", timeout=20000)

    vary.fill("rank = 2, 4, 8")
    page.get_by_role("button", name="Start the sweep").click()
    expect(status).to_contain_text("trial 0 (", timeout=60000)
    page.get_by_role("button", name="Stop the sweep").click()
    expect(status).to_contain_text("(stopped)", timeout=120000)

    picker = page.get_by_label("Sweeps", exact=True)
    picker.click()
    page.get_by_role("option").filter(has_text="stopped").first.click()
    page.get_by_role("button", name="Resume the sweep").click()
    expect(status).to_contain_text("3 of 3 trials done (complete)", timeout=240000)
    expect(status).to_contain_text("best: trial")
    expect(page.locator("#ls-sweep-trials tr[data-state]")).to_have_count(3)
    # complete ones ranked first (a clearly worse one may have been pruned: then it is last)
    trials = page.locator("#ls-sweep-trials tr[data-state='complete']")
    expect(trials.first.locator("td").first).to_have_text("1")
    expect(page.locator("#ls-sweep-trials")).to_contain_text("loss on the held-out rows")
    expect(trials.first.locator("td").nth(4)).to_contain_text("[")  # its 95% interval
    curves = page.locator("#ls-sweep-chart svg polyline")
    expect(curves).to_have_count(3)
    shot(page, "train-sweep-done")
    page.close()
