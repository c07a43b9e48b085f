"""The page in real headless Chromium, against the real `lora-studio` server.

Screenshots of each tab go to test-artifacts/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import (
    colour_rows,
    fill_number,
    lora_studio,
    lora_studio_server,
    pick,
    write_jsonl,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pirate-colours.jsonl"


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, toy_model):
    home = tmp_path_factory.mktemp("page-studio")
    shutil.copytree(toy_model, home / "models" / "toy")
    with lora_studio_server(home) as (_, url, _log):
        yield url


@pytest.fixture
def page(browser, studio_url) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(studio_url)
    page.get_by_role("tab", name="Train").wait_for()
    # the only model is preselected and the form fitted to it: wait until that has happened
    expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
    yield page
    page.close()


def chat_through_the_api(url: str, model: str) -> str:
    """A greedy reply from ``model`` through the studio's /v1 (200 or the test fails)."""
    import httpx

    question = [{"role": "user", "content": "What colour is the sky?"}]
    body = {"model": model, "messages": question, "max_tokens": 8, "temperature": 0}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"].strip()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_only_model_is_preselected_and_a_dropped_dataset_is_checked_at_once(page, tmp_path):
    expect(page.get_by_label("Base model", exact=True).first).to_have_value("toy", timeout=20000)
    expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4")  # fitted to it
    data = write_jsonl(tmp_path / "first.jsonl", colour_rows(20))
    page.locator("input[type=file]").first.set_input_files(str(data))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("chat format, 20 examples (16 train / 4 validation)")
    expect(summary).to_contain_text("Tokens per example")  # the model was there to count them
    expect(page.get_by_role("button", name="Start training")).to_be_enabled(timeout=20000)
    expect(page.locator("#ls-why")).to_contain_text("Memory: needs about 0.1")
    shot(page, "train-preselected")


def test_a_broken_dataset_shows_its_line_numbers(page, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\nnot json\n{"text": ""}\n')
    page.locator("input[type=file]").first.set_input_files(str(bad))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("broken.jsonl: 2 problem(s)", timeout=20000)
    expect(summary).to_contain_text("line 3: not valid JSON")
    expect(summary).to_contain_text('line 4: "text" is empty')
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    shot(page, "train-broken-dataset")


def test_train_watch_it_learn_then_chat_with_the_adapter(page, tmp_path):
    pick(page, "Base model", "toy")
    expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4")  # the model has 4
    page.locator("input[type=file]").first.set_input_files(str(EXAMPLE))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("chat", timeout=20000)
    expect(summary).to_contain_text("120")
    expect(page.locator(".ls-trained").first).to_be_visible()  # trained vs masked preview
    fill_number(page, "Learning rate", "0.02")
    fill_number(page, "Epochs", "10")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    shot(page, "train-ready")
    start.click()

    progress = page.locator("#ls-progress-text")
    train_line = page.locator("#ls-loss-chart polyline.ls-train")
    seen, plotted = set(), set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if progress.count():
            seen.add(progress.inner_text().split("·")[0].strip())
        if train_line.count():
            plotted.add(int(train_line.get_attribute("data-points")))
        if page.locator("#ls-status").inner_text().startswith("Done"):
            break
        time.sleep(0.05)
    assert "100%" in seen and len(seen) >= 3, seen  # the bar moved through several values
    assert len(plotted) >= 3, plotted  # and the loss curve grew while training ran
    validation_points = page.locator("#ls-loss-chart polyline.ls-validation")
    assert int(validation_points.get_attribute("data-points")) == 11  # before + 10 epoch ends
    # the model's answers to validation prompts at each validation, the newest first
    samples = page.locator("#ls-loss-chart #ls-samples details")
    expect(samples).to_have_count(11)
    steps = [int(s.get_attribute("data-step")) for s in samples.all()]
    assert steps == sorted(steps, reverse=True) and steps[-1] == 0
    expect(samples.first.locator(".ls-sample-answer")).to_have_count(3)
    expect(page.locator("#ls-result")).to_contain_text("lora/")
    adapter_id = page.locator("#ls-result code").first.inner_text()
    shot(page, "train-done")

    page.get_by_role("tab", name="Adapters").click()
    expect(page.locator("#ls-adapters")).to_contain_text("pirate-colours.jsonl", timeout=10000)
    pick(page, "Adapter", f"Trained on pirate-colours.jsonl ({adapter_id[5:13]})")
    expect(page.locator("#ls-adapter-curve polyline.ls-train")).to_be_visible()
    shot(page, "adapters")
    status = page.locator("#ls-export-status")
    page.get_by_label("Ollama (GGUF + Modelfile)").check()
    page.get_by_role("button", name="Export", exact=True).click()
    expect(status).to_contain_text("ollama create NAME -f", timeout=60000)
    page.get_by_label("PEFT (transformers, vLLM)").check()
    page.get_by_role("button", name="Export", exact=True).click()
    expect(status).to_contain_text("Done", timeout=60000)
    expect(status).to_contain_text(".zip")
    shot(page, "adapters-export")

    page.get_by_role("tab", name="Chat").click()  # no reload: the picker refreshed by itself
    pick(page, "Model", "Trained on pirate-colours.jsonl (LoRA on toy)")
    page.get_by_text("Sampling and system prompt", exact=True).first.click()
    temperature = page.locator("#ls-temperature input[type=number]")
    temperature.fill("0")  # greedy: the same seeded run gives the same (long) reply every time
    temperature.press("Enter")
    page.locator("#ls-msg textarea").fill("What colour is the sky?")
    # every text the chat shows, recorded by the page itself as it changes: no polling race
    page.evaluate(
        """() => {
            window.lsReplyLengths = [];
            const chat = document.querySelector('#ls-chat');
            new MutationObserver(() => {
                const bots = chat.querySelectorAll('.message.bot, [data-testid=bot]');
                const last = bots[bots.length - 1];
                if (last) window.lsReplyLengths.push(last.innerText.trim().length);
            }).observe(chat, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#ls-chat .message.bot, #ls-chat [data-testid=bot]").last
    expect(reply).not_to_be_empty(timeout=60000)
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=60000)
    expect(reply).not_to_contain_text("⚠️")  # the chat writes errors into the reply
    lengths = set(page.evaluate("window.lsReplyLengths")) - {0}
    assert len(lengths) >= 2, lengths  # it streamed in pieces
    shot(page, "chat")
    assert adapter_id.startswith("lora/")


def test_reloading_during_a_run_shows_the_run(browser, studio_url, tmp_path):
    """...and a page open before the run started (another browser) follows it by itself."""
    data = write_jsonl(tmp_path / "long.jsonl", colour_rows(64))
    other = browser.new_page(viewport={"width": 1400, "height": 1100})
    other.goto(studio_url)
    expect(other.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(studio_url)
    pick(page, "Base model", "toy")
    page.locator("input[type=file]").first.set_input_files(str(data))
    fill_number(page, "Epochs", "400")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    start.click()
    expect(page.locator("#ls-progress-text")).to_contain_text("step", timeout=60000)
    expect(other.locator("#ls-progress-text")).to_contain_text("step", timeout=30000)
    page.reload()
    expect(page.locator("#ls-progress-text")).to_contain_text("step", timeout=30000)
    expect(page.locator("#ls-status")).to_contain_text("Training")
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#ls-status")).to_contain_text("Stopped", timeout=60000)
    expect(other.locator("#ls-status")).to_contain_text("Stopped", timeout=30000)
    other.close()
    stopped = page.locator("#ls-runs tr[data-state=stopped]", has_text="long.jsonl")
    expect(stopped).to_have_count(1, timeout=30000)
    pick(page, "Run", "Trained on long.jsonl")
    page.get_by_role("button", name="Discard", exact=True).click()
    expect(page.locator("#ls-runs-message")).to_contain_text("tick the box")
    expect(stopped).to_have_count(1)  # nothing is discarded unconfirmed
    page.get_by_label("Yes, discard this run and its checkpoints").check()
    page.get_by_role("button", name="Discard", exact=True).click()
    expect(page.locator("#ls-runs-message")).to_contain_text("Discarded")
    expect(stopped).to_have_count(0)
    page.close()


def test_alpha_follows_rank_until_it_is_edited(page, tmp_path):
    page.locator("input[type=file]").first.set_input_files(
        str(write_jsonl(tmp_path / "alpha.jsonl", colour_rows(20)))
    )
    why = page.locator("#ls-why")
    fill_number(page, "Rank (1-256)", "16")
    expect(page.get_by_label("Alpha (2 x rank)")).to_have_value("32")
    expect(why).to_contain_text("rank 16, alpha 32", timeout=20000)
    fill_number(page, "Alpha (2 x rank)", "5")
    fill_number(page, "Rank (1-256)", "4")
    # the check ran after both edits (it reads the form as the events left it)
    expect(why).to_contain_text("rank 4, alpha 5", timeout=20000)
    expect(page.get_by_label("Alpha (2 x rank)")).to_have_value("5")


def loss_steps(page: Page, series: str) -> list[float]:
    """The x coordinates of a series in the loss chart (its points, in drawing order)."""
    points = page.locator(f"#ls-loss-chart polyline.ls-{series}").get_attribute("points")
    return [float(pair.split(",")[0]) for pair in points.split()]


def test_stop_reload_resume_completes_with_one_continuous_chart(browser, studio_url, tmp_path):
    data = write_jsonl(tmp_path / "durable.jsonl", colour_rows(64))
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(studio_url)
    pick(page, "Base model", "toy")
    page.locator("input[type=file]").first.set_input_files(str(data))
    fill_number(page, "Epochs", "25")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    start.click()
    expect(page.locator("#ls-progress-text")).to_contain_text("step", timeout=60000)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#ls-status")).to_contain_text("Stopped", timeout=60000)

    page.reload()
    runs = page.locator("#ls-runs tr[data-state=stopped]", has_text="durable.jsonl")
    expect(runs).to_have_count(1, timeout=30000)
    shot(page, "train-runs-stopped")
    run_id = runs.get_attribute("data-run")
    pick(page, "Run", "durable.jsonl")
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=180000)
    expect(page.locator("#ls-result")).to_contain_text(run_id)
    expect(page.locator("#ls-runs")).not_to_contain_text("durable.jsonl")
    # one curve from step 1 to the end: 25 epochs x 12 steps, a report every 6 steps
    train = page.locator("#ls-loss-chart polyline.ls-train")
    assert int(train.get_attribute("data-points")) == 50
    xs = loss_steps(page, "train")
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    expect(page.locator("#ls-loss-chart .ls-kept")).to_have_count(1)
    shot(page, "train-resumed-done")
    page.close()


def test_two_local_processes_from_the_hosts_setting_train_an_adapter_that_chats(
    page, studio_url, tmp_path
):
    data = write_jsonl(tmp_path / "ranks.jsonl", colour_rows(64))
    page.locator("input[type=file]").first.set_input_files(str(data))
    expect(page.locator("#ls-dataset-summary")).to_contain_text("64 examples", timeout=20000)
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("N processes on this machine").check()
    fill_number(page, "Processes (N)", "3")
    expect(page.locator("#ls-why")).to_contain_text("3 ranks share each batch", timeout=20000)
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    fill_number(page, "Processes (N)", "2")
    expect(page.locator("#ls-why")).to_contain_text("2 ranks share each batch", timeout=20000)
    page.get_by_role("button", name="Check hosts").click()
    report = page.locator("#ls-hosts-report")
    expect(report).to_contain_text("All hosts are ready", timeout=60000)
    expect(report).to_contain_text("rank 1 (this machine): ok")
    fill_number(page, "Learning rate", "0.02")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    start.click()
    expect(page.locator("#ls-progress-text")).to_contain_text("2 ranks", timeout=60000)
    expect(page.locator("#ls-progress-text")).to_contain_text("(largest rank)")
    shot(page, "train-two-ranks")
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=180000)
    adapter_id = page.locator("#ls-result code").first.inner_text()

    assert chat_through_the_api(studio_url, adapter_id)


def test_quantize_the_base_train_on_it_and_chat_through_the_api(page, studio_url, tmp_path):
    page.get_by_text("Quantize this base (QLoRA: less memory)").click()
    page.get_by_role("button", name="Quantize", exact=True).click()
    expect(page.locator("#ls-quantize-status")).to_contain_text("Made toy-4bit", timeout=60000)
    expect(page.get_by_label("Base model", exact=True).first).to_have_value("toy-4bit")
    data = write_jsonl(tmp_path / "qlora.jsonl", colour_rows(32))
    page.locator("input[type=file]").first.set_input_files(str(data))
    expect(page.locator("#ls-why")).to_contain_text("4-bit quantized", timeout=20000)
    expect(page.locator("#ls-why")).to_contain_text("30x slower")
    fill_number(page, "Learning rate", "0.02")
    fill_number(page, "Epochs", "1")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    shot(page, "train-quantized-base")
    start.click()
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=180000)
    adapter_id = page.locator("#ls-result code").first.inner_text()
    assert chat_through_the_api(studio_url, adapter_id)


def test_a_run_that_would_not_fit_keeps_start_disabled_and_says_what_fits(
    browser, toy_model, tmp_path, monkeypatch
):
    """The budget (LORA_STUDIO_MEMORY_GB) sits between the page's run at batch 4 and at
    batch 1; the page says so, keeps Start disabled, and batch 1 enables it."""
    home = tmp_path / "small-studio"
    shutil.copytree(toy_model, home / "models" / "toy")
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(24))
    flags = ("--model", "toy", "--data", str(data), "--lora-layers", "4", "--json")
    done = lora_studio("plan", *flags, home=home)
    parts = json.loads(done.stdout)["parts_gb"]
    budget = sum(parts.values()) - (parts["activations_gb"] + parts["loss_gb"]) / 2
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", f"{budget:.4f}")
    with lora_studio_server(home) as (_, url, _log):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
        page.locator("input[type=file]").first.set_input_files(str(data))
        why = page.locator("#ls-why")
        expect(why).to_contain_text("too much: Start is disabled", timeout=20000)
        expect(why).to_contain_text("What would make it fit")
        # the change in the page's words: its fields' labels, not the CLI's flags
        steps = "Gradient accumulation steps (batches per optimizer step) = 4"
        expect(why).to_contain_text(f"Batch size = 1 {steps}")
        expect(why).not_to_contain_text("--batch-size")
        start = page.get_by_role("button", name="Start training")
        expect(start).to_be_disabled()
        shot(page, "train-memory-plan-refused")
        fill_number(page, "Batch size", "1")
        expect(why).to_contain_text("Memory: needs about", timeout=20000)
        expect(start).to_be_enabled()
        page.close()


def progress_gaps(page: Page, seconds: float) -> list[float]:
    """Seconds between the changes of the progress line, watched for ``seconds``."""
    line = page.locator("#ls-progress-text")
    changes, last = [time.monotonic()], line.inner_text()
    deadline = changes[0] + seconds
    while time.monotonic() < deadline:
        now = line.inner_text()
        if now != last:
            changes.append(time.monotonic())
            last = now
        time.sleep(0.2)
    changes.append(time.monotonic())
    return [round(b - a, 2) for a, b in zip(changes, changes[1:], strict=False)]


def test_the_first_hour_walk_has_no_stumble(browser, toy_model, tmp_path, monkeypatch):
    """The quick start as a new user walks it, on steps slowed to 2.5 s (a busy CPU's
    pace): a bad number gets one message, the line moves every few seconds, a second Start
    is impossible, Stop picks the run to resume, and the Adapters and Chat tabs open on it."""
    import re

    from gradio_client import Client

    home = tmp_path / "first-hour-studio"
    shutil.copytree(toy_model, home / "models" / "toy")
    data = write_jsonl(tmp_path / "first-hour.jsonl", colour_rows(32))
    monkeypatch.setenv("LORA_STUDIO_STEP_DELAY", "2.5")
    with lora_studio_server(home) as (_, url, log):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        expect(page.get_by_label("LoRA layers (-1: all)")).to_have_value("4", timeout=20000)
        page.locator("input[type=file]").first.set_input_files(str(data))
        start, why = page.get_by_role("button", name="Start training"), page.locator("#ls-why")
        expect(start).to_be_enabled(timeout=20000)

        fill_number(page, "Rank (1-256)", "0")  # the studio's own check, not the component's
        expect(why).to_contain_text("rank = 0 is out of range: allowed 1 <= rank <= 256")
        expect(why).not_to_contain_text("Ready")
        expect(start).to_be_disabled()
        expect(page.get_by_text("less than minimum")).to_have_count(0)
        shot(page, "train-rank-out-of-range")
        fill_number(page, "Rank (1-256)", "8")
        fill_number(page, "Epochs", "2")
        expect(start).to_be_enabled(timeout=20000)
        start.click()
        line = page.locator("#ls-progress-text")
        expect(line).to_contain_text("step 1/", timeout=60000)

        gaps = progress_gaps(page, 12)  # reports come every 6 steps (15 s) here
        assert max(gaps) <= 5.0, gaps
        expect(start).to_be_disabled()
        expect(why).to_contain_text("A training is running")
        other = browser.new_page(viewport={"width": 1400, "height": 1100})
        other.goto(url)
        expect(other.locator("#ls-progress-text")).to_contain_text("step", timeout=10000)
        expect(other.get_by_role("button", name="Start training")).to_be_disabled()
        other.close()
        refused = Client(url, verbose=False).predict(
            base_model="toy",
            dataset_path=str(data),
            dataset_name="x",
            adapter_name="x",
            lora_layers=4,
            api_name="/train",
        )
        assert "already running" in refused[2] and "Stop" in refused[2], refused[2]
        expect(line).to_contain_text("step")  # this page's view stays on the run
        expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled()

        page.get_by_role("button", name="Stop", exact=True).click()
        expect(page.locator("#ls-status")).to_contain_text("Stopped", timeout=60000)
        expect(line).not_to_contain_text("ETA")
        run_picker = page.get_by_label("Run", exact=True)
        expect(run_picker).to_have_value(re.compile("first-hour.jsonl · stopped"))
        expect(page.locator("#ls-runs")).not_to_contain_text("stopped at step")  # no "error"
        shot(page, "train-stopped-run-picked")
        page.get_by_role("button", name="Resume", exact=True).click()
        expect(page.locator("#ls-status")).to_contain_text("Done", timeout=120000)
        name = "Trained on first-hour.jsonl"

        page.get_by_role("tab", name="Adapters").click()
        adapters = page.locator("#ls-adapters")
        expect(adapters).to_contain_text("first-hour.jsonl", timeout=10000)
        adapters.locator("[role=gridcell]").filter(has_text=name).first.click()
        expect(page.get_by_label("Adapter", exact=True)).to_have_value(re.compile(name))
        status = page.locator("#ls-export-status")
        names = []
        formats = {
            "Studio .zip (LoRA Studio, mlx-lm)": ".zip",
            "PEFT (transformers, vLLM)": "-peft",
        }
        for fmt, suffix in formats.items():
            page.get_by_label(fmt).check()
            page.get_by_role("button", name="Export", exact=True).click()
            expect(status).to_contain_text(
                f"{suffix}.zip".replace(".zip.zip", ".zip"), timeout=60000
            )
            names.append(re.search(r"Done: (\S+)", status.inner_text()).group(1))
        download = page.locator("a[download]").last.get_attribute("download")
        assert names[0] != names[1] and download == names[1].strip("`"), (names, download)
        shot(page, "adapters-row-picked")

        fresh = browser.new_page(viewport={"width": 1400, "height": 1100})
        fresh.goto(url)
        fresh.get_by_role("tab", name="Chat").click()
        expect(fresh.locator("#ls-chat-model input")).to_have_value(
            f"{name} (LoRA on toy)", timeout=10000
        )
        shot(fresh, "chat-opens-on-the-newest-adapter")
        fresh.close()
        page.close()
        assert "Traceback" not in log.read_text()


def test_a_dropped_csv_is_mapped_previewed_saved_and_trained_on(page, tmp_path):
    """A spreadsheet export with columns the studio does not know: the page shows them, two
    are mapped, the preview shows the rows as trained (the answer bold), Save imports it, and
    the usual check and a run follow."""
    import csv

    source = tmp_path / "helpdesk.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ticket", "question", "reply"])
        writer.writerows(
            [i, f"What colour is sky {i}?", f"The sky is\n{'red' if i % 2 else 'blue'}."]
            for i in range(40)
        )
    page.locator("input[type=file]").first.set_input_files(str(source))
    note = page.locator("#ls-mapping-note")
    expect(note).to_contain_text("Its columns: ticket, question, reply", timeout=20000)
    pick(page, "prompt from", "question")
    pick(page, "completion from", "reply")
    shown = page.locator("#ls-mapping-preview")
    expect(shown.locator(".ls-trained").first).to_contain_text("The sky is", timeout=20000)
    expect(shown.locator(".ls-masked").first).to_contain_text("What colour is sky 0?")
    shot(page, "train-import-mapping")
    page.get_by_role("button", name="Save as dataset").click()
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("helpdesk.jsonl", timeout=20000)
    expect(summary).to_contain_text("completions format, 40 examples")
    fill_number(page, "Epochs", "1")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    start.click()
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=120000)
    expect(page.locator("#ls-result")).to_contain_text("lora/")


def test_a_dpo_run_from_the_preference_demo_set_charts_its_reward_accuracy(page, tmp_path):
    """The demo's preference set given to SFT is refused with the way out; DPO trains on it
    and the chart shows reward accuracy and margin beside the loss."""
    from core.models.demo import PREFERENCE_DATASET, preference_rows

    data = write_jsonl(tmp_path / PREFERENCE_DATASET, preference_rows())
    # the run of an earlier test may still be publishing: its end re-checks the form
    expect(page.locator("#ls-why")).not_to_contain_text("A training is running", timeout=60000)
    page.locator("input[type=file]").first.set_input_files(str(data))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("preference format, 140 examples", timeout=20000)
    # the way out in the page's words: the Method field's choices, not the CLI's flags
    expect(page.locator("#ls-why")).to_contain_text("Method = DPO: prefer the chosen answer")
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    beta = page.get_by_label("β (DPO: how far from the base; ORPO: weight of the odds ratio)")
    expect(beta).to_be_hidden()
    page.get_by_label("DPO: prefer the chosen answer").check()
    expect(beta).to_be_visible()
    expect(beta).to_have_value("0.1")
    preview = page.locator("#ls-examples")
    expect(preview.locator(".ls-chosen").first).to_contain_text("matey", timeout=20000)
    expect(preview.locator(".ls-rejected").first).to_contain_text(" is ")
    fill_number(page, "Epochs", "1")
    fill_number(page, "Learning rate", "0.002")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    shot(page, "train-dpo-ready")
    start.click()
    expect(page.locator("#ls-progress-text")).to_contain_text("reward accuracy", timeout=120000)
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=180000)
    accuracy = page.locator("#ls-loss-chart svg[aria-label='reward accuracy chart']")
    expect(accuracy.locator("polyline.ls-validation")).to_have_attribute("data-points", "2")
    margin = page.locator("#ls-loss-chart svg[aria-label='reward margin chart']")
    expect(margin.locator("polyline.ls-train")).to_be_visible()
    # each as wide as the loss chart, so its text reads at the loss chart's size
    loss_width = page.locator("#ls-loss-chart svg[aria-label='loss chart']").bounding_box()["width"]
    for chart in (accuracy, margin):
        assert chart.bounding_box()["width"] > 0.95 * loss_width
    shot(page, "train-dpo-done")


REWARDS_LABEL = "GRPO rewards: pick, or type regex:PATTERN, length:MIN-MAX; :WEIGHT after any"


def test_a_grpo_run_previews_its_rewards_then_charts_reward_and_kl(page, tmp_path):
    """Prompts without answers: SFT is refused with GRPO named; GRPO's panel appears with
    the method, the rewards are tried on the base's own answers, and the run charts its
    reward (train and held-out) beside the KL."""
    rows = [{"prompt": f"What colour is the sky number {i}?"} for i in range(60)]
    data = write_jsonl(tmp_path / "sky-prompts.jsonl", rows)
    expect(page.locator("#ls-why")).not_to_contain_text("A training is running", timeout=60000)
    page.locator("input[type=file]").first.set_input_files(str(data))
    summary = page.locator("#ls-dataset-summary")
    expect(summary).to_contain_text("prompts format, 60 examples", timeout=20000)
    expect(page.locator("#ls-why")).to_contain_text("GRPO")
    panel = page.get_by_text("GRPO: rewards and sampling")
    expect(panel).to_be_hidden()
    page.get_by_label("GRPO: answer prompts, learn from rewards").check()
    expect(panel).to_be_visible()
    rewards = page.get_by_label(REWARDS_LABEL)
    rewards.click()
    rewards.fill("regex:blue")
    rewards.press("Enter")
    fill_number(page, "GRPO: answers per prompt", "8")
    fill_number(page, "GRPO: longest answer (tokens)", "8")
    fill_number(page, "Learning rate", "0.03")
    fill_number(page, "Epochs", "2")
    page.get_by_role("button", name="Try the rewards on the base model's answers").click()
    preview = page.locator("#ls-reward-preview")
    expect(preview).to_contain_text("the base's answer", timeout=60000)
    expect(preview).to_contain_text("regex:blue")
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=20000)
    shot(page, "train-grpo-ready")
    start.click()
    # "KL": this run's progress (an earlier test's DPO run also said "reward" and "Done")
    expect(page.locator("#ls-progress-text")).to_contain_text("KL", timeout=120000)
    reward = page.locator("#ls-loss-chart svg[aria-label='reward chart']")
    validated = reward.locator("polyline.ls-validation")  # steps 0, 12 and 24
    expect(validated).to_have_attribute("data-points", "3", timeout=180000)
    expect(page.locator("#ls-status")).to_contain_text("Done", timeout=60000)
    expect(reward.locator("polyline.ls-train")).to_be_visible()
    kl = page.locator("#ls-loss-chart svg[aria-label='kl chart']")
    expect(kl.locator("polyline.ls-train")).to_be_visible()
    loss = page.locator("#ls-loss-chart svg[aria-label='loss chart']")
    expect(loss.locator("polyline.ls-validation")).to_have_count(0)  # minus the reward: not a loss
    expect(page.locator("#ls-samples .ls-sample-reward").first).to_contain_text("reward ")
    shot(page, "train-grpo-done")
