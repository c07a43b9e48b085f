"""The Evaluate tab and the comparison of runs, in real headless Chromium against the real
`lora-studio` server: a base and two adapters of the toy llama."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from playwright.sync_api import expect

from core.adapters.store import AdapterMetadata
from tests.helpers import lora_studio, lora_studio_server, pick, studio_with_toy, write_jsonl
from tests.test_page import shot

ROWS = [
    {"prompt": f"What colour is the sky number {i}?", "completion": "The sky is blue."}
    for i in range(6)
]


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, toy_model, trained_adapter):
    """A studio with the toy base, the colour adapter, and a copy of it named otherwise
    whose metadata says it was trained at another learning rate."""
    home = tmp_path_factory.mktemp("eval-page-studio")
    settings = studio_with_toy(home, toy_model)
    shutil.copytree(trained_adapter, settings.adapters / trained_adapter.name)
    twin = settings.adapters / str(uuid.uuid4())
    shutil.copytree(trained_adapter, twin)
    meta = AdapterMetadata.read(twin)
    meta.adapterName, meta.learningRate = "Twin", 0.5
    meta.write(twin)
    write_jsonl(twin / "test.jsonl", ROWS)  # as a run with a test split publishes it
    with lora_studio_server(home) as (_, url, _log):
        yield url, home, trained_adapter.name, twin.name


def test_evaluate_two_models_then_compare_the_adapters(browser, studio_url, tmp_path):
    url, _, adapter_id, twin_id = studio_url
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    models = "Models (the first is the baseline the others are compared with)"
    pick(page, models, "toy")
    pick(page, models, "Colours (LoRA on toy)")
    data = write_jsonl(tmp_path / "held-out.jsonl", ROWS)
    page.locator("#ls-eval-data input[type=file]").set_input_files(str(data))
    expect(page.get_by_text("held-out.jsonl").first).to_be_visible(timeout=20000)
    page.get_by_role("button", name="Evaluate", exact=True).click()
    status = page.locator("#ls-eval-status")
    expect(status).to_contain_text("Done: 6 rows", timeout=120000)
    summary = page.locator("#ls-eval-summary")
    expect(summary.locator("th", has_text="rouge_l")).to_be_visible()
    # models by their names, and the result in words before the table
    expect(
        summary.locator("td", has_text=f"Colours (LoRA on toy) ({adapter_id[:8]})")
    ).to_be_visible()
    expect(summary.locator(".ls-verdict").first).to_contain_text("Colours (LoRA on toy)")
    rows = page.locator("#ls-eval-rows")
    expect(rows).to_contain_text("What colour is the sky number 0?", timeout=20000)
    expect(rows).to_contain_text("difference")
    shot(page, "evaluate")

    page.get_by_role("tab", name="Adapters").click()
    page.get_by_text("Compare adapters (runs side by side)").click()
    pick(page, "Adapters to compare", f"Colours ({adapter_id[:8]})")
    pick(page, "Adapters to compare", f"Twin ({twin_id[:8]})")
    chart = page.locator("#ls-compare-chart polyline")
    expect(chart).to_have_count(2, timeout=20000)
    params = page.locator("#ls-compare-params")
    expect(params.locator("tr.ls-differs")).to_contain_text("learningRate (differs)")
    expect(params).not_to_contain_text("rank (differs)")
    scores = page.locator("#ls-compare-scores")
    expect(scores).to_contain_text("held-out.jsonl")
    shot(page, "adapters-compare")
    page.close()


def test_the_evaluation_is_the_clis_too(studio_url):
    """What the page ran is listed by `lora-studio evals` (the same folder)."""
    _, home, _, _ = studio_url
    done = lora_studio("evals", "--json", home=home)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert any(spec["state"] == "complete" and spec["rows_total"] == 6 for spec in listed)


def test_an_adapters_test_rows_pick_it_and_its_base(browser, studio_url):
    url, _, _, twin_id = studio_url
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.get_by_role("tab", name="Evaluate").click()
    label = "...or an adapter's test rows (picks the adapter and its base)"
    pick(page, label, f"Twin ({twin_id[:8]})")
    expect(page.get_by_text("Twin (LoRA on toy)").first).to_be_visible(timeout=20000)
    page.get_by_role("button", name="Evaluate", exact=True).click()
    expect(page.locator("#ls-eval-status")).to_contain_text("Done: 6 rows", timeout=120000)
    summary = page.locator("#ls-eval-summary")
    expect(summary.locator("td", has_text="toy").first).to_be_visible()
    expect(summary).to_contain_text(f"Twin (LoRA on toy) ({twin_id[:8]})")
    page.close()


def test_two_adapters_merged_in_the_page_open_the_evaluate_tab_with_their_parts(
    browser, studio_url
):
    """Adapters tab, Merge: a bad density is refused in the page's words, then the merge is
    made, listed, and its Evaluate button picks the merge and both parts."""
    url, home, adapter_id, twin_id = studio_url
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.get_by_role("tab", name="Adapters").click()
    page.get_by_text("Merge adapters", exact=True).click()
    pick(page, "Adapters to merge (two or more, of one base)", f"Colours ({adapter_id[:8]})")
    pick(page, "Adapters to merge (two or more, of one base)", f"Twin ({twin_id[:8]})")
    page.locator("#ls-merge-method label").get_by_text("ties", exact=True).click()
    page.get_by_label("Density (ties, dare: the share kept)").fill("0")
    page.locator("#ls-merge-name textarea, #ls-merge-name input").first.fill("Both")
    page.get_by_role("button", name="Merge", exact=True).click()
    status = page.locator("#ls-merge-status")
    expect(status).to_contain_text("density 0.0", timeout=20000)
    page.get_by_label("Density (ties, dare: the share kept)").fill("0.5")
    page.get_by_role("button", name="Merge", exact=True).click()
    expect(status).to_contain_text("Merged 2 adapters (ties) into Both", timeout=30000)
    merged = [
        a
        for a in json.loads(lora_studio("adapters", "list", "--json", home=home).stdout)
        if a["name"] == "Both"
    ]
    assert len(merged) == 1
    expect(page.locator("#ls-adapters")).to_contain_text("Both", timeout=20000)
    page.get_by_role("button", name="Evaluate the merge against its parts").click()
    models = page.get_by_label("Models (the first is the baseline the others are compared with)")
    field = models.locator("xpath=ancestor::div[contains(@class,'block')]").first
    expect(field).to_contain_text("Both", timeout=20000)
    expect(field).to_contain_text("Twin")
    shot(page, "adapters-merge")
    page.close()
