"""The fault suite: the real studio (the `lora-studio` server, its training worker, watchdog,
Chromium) under kills, full disks, load and hostile input.

Each case asserts that the server still answers, that no partial adapter is ever listed, that
every error names its cause and that nothing already published is lost. docs/reliability.md
records the figures; `pytest -m faults -s` prints them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.helpers import (
    colour_rows,
    lora_studio_server,
    processes_mentioning,
    small_filesystem,
    write_jsonl,
)

pytestmark = pytest.mark.faults

FIGURES: dict[str, object] = {}  # printed at the end of the module (docs/reliability.md)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nfault suite figures:", json.dumps(FIGURES, indent=2))


@pytest.fixture
def home(tmp_path, toy_model, trained_adapter) -> Path:
    """A studio with the toy base and one published adapter (which must never be lost)."""
    home = tmp_path / "home"
    shutil.copytree(toy_model, home / "models" / "toy")
    shutil.copytree(trained_adapter, home / "adapters" / trained_adapter.name)
    return home


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: what 'nothing was lost' is checked against."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def listed_adapters(url: str) -> set[str]:
    response = httpx.get(f"{url}/v1/models", timeout=10)
    assert response.status_code == 200
    return {m["id"] for m in response.json()["data"] if m["id"].startswith("lora/")}


def runs_json(home: Path) -> list[dict]:
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "webapp", "runs", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start_run(client: Client, data: Path, epochs: int):
    return client.submit(
        base_model="toy",
        dataset_path=str(data),
        dataset_name=data.name,
        adapter_name=f"fault {epochs}",
        epochs=epochs,
        lora_layers=-1,
        learning_rate=5e-3,
        save_every=7,
        api_name="/train",
    )


def step_of(view) -> int:
    found = re.search(r"step (\d+)/", str(view[0] or ""))
    return int(found.group(1)) if found else 0


def wait_for_step(job, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = max((step_of(view) for view in job.outputs()), default=0)
        if reached >= step:
            return reached
        time.sleep(0.05)
    pytest.fail(f"the run never reached step {step}")


def worker_pids(home: Path) -> list[int]:
    return [pid for pid in processes_mentioning(str(home / "runs")) if pid != os.getpid()]


def wait_until_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still alive"
        time.sleep(0.05)


def test_sigkill_of_the_worker_at_five_random_steps(home):
    kept = fingerprint(home / "adapters")
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    # kill points anywhere: mid-epoch (14 steps), at and between checkpoints (every 7)
    steps = sorted(random.Random(11).sample(range(8, 120), 5))
    with lora_studio_server(home) as (_, url, _log):
        client = Client(url, verbose=False)
        before = listed_adapters(url)
        for step in steps:
            job = start_run(client, data, epochs=10)  # 140 steps: past every kill point
            wait_for_step(job, step)
            for pid in worker_pids(home):
                os.kill(pid, signal.SIGKILL)
            status = job.result(timeout=60)[2]
            assert "SIGKILL" in status, status  # the error names its cause
            assert listed_adapters(url) == before  # no partial adapter, ever
        runs = runs_json(home)
        assert sorted(r["state"] for r in runs) == ["interrupted"] * 5
        assert all(r["checkpoint_step"] is not None for r in runs)

        resumed = client.submit(runs[0]["id"], api_name="/resume").result(timeout=300)
        assert resumed[2].startswith("Done"), resumed[2]
        expected = before | {f"lora/{runs[0]['id']}"}
        deadline = time.monotonic() + 30
        while listed_adapters(url) != expected:  # the watcher lists it by itself
            assert time.monotonic() < deadline, listed_adapters(url)
            time.sleep(0.05)
    assert {k: v for k, v in fingerprint(home / "adapters").items() if k in kept} == kept
    FIGURES["worker SIGKILLs"] = {"kill steps": steps, "resumed and published": 1}


def test_sigkill_of_the_studio_during_a_run(home):
    kept = fingerprint(home / "adapters")
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    with lora_studio_server(home) as (server, url, _log):
        job = start_run(Client(url, verbose=False), data, epochs=200)
        wait_for_step(job, 30)
        workers = worker_pids(home)
        server.kill()  # the studio dies without a word
        server.wait()
    wait_until_gone(workers)  # the worker noticed, checkpointed and stopped
    with lora_studio_server(home) as (_, url, _log):
        (run,) = runs_json(home)
        assert run["state"] == "interrupted" and run["checkpoint_step"] >= 28
        assert listed_adapters(url) == {f"lora/{name}" for name in {Path(k).parts[0] for k in kept}}
    assert fingerprint(home / "adapters") == kept
    FIGURES["studio SIGKILL"] = {"checkpoint kept": run["checkpoint_step"]}


def test_a_full_disk_during_an_upload_is_refused_clearly(home, browser_page, tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", colour_rows(20000))  # about 2.5 MB
    with small_filesystem(tmp_path / "small-datasets", "1m") as datasets:
        os.environ["LORA_STUDIO_DATASETS"] = str(datasets)
        try:
            with lora_studio_server(home) as (_, url, _log):
                page = browser_page(url)
                page.locator("input[type=file]").first.set_input_files(str(big))
                page.get_by_text("could not be stored").first.wait_for(timeout=30000)
                assert [p.name for p in datasets.iterdir()] == []  # no partial file
                assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
        finally:
            del os.environ["LORA_STUDIO_DATASETS"]
    FIGURES["full disk during an upload"] = "refused with the reason, nothing left behind"


def chat_request(url: str, index: int, results: list) -> None:
    """One API client: streamed or not, some hanging up early; records how it went."""
    body = {
        "model": "toy",
        "messages": [{"role": "user", "content": f"Request {index}: what colour is the sky?"}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": index % 2 == 0,
    }
    hang_up = index % 5 == 0
    started = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
            for _ in response.iter_lines():
                if hang_up:
                    break
            outcome = "hung up" if hang_up else response.status_code
    except httpx.HTTPError as exc:
        outcome = f"error: {type(exc).__name__}"
    results.append((index, outcome, time.monotonic() - started))


def test_two_browsers_and_twenty_api_clients_during_a_run(home, browser_page):
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    with lora_studio_server(home) as (_, url, _log):
        client = Client(url, verbose=False)
        job = start_run(client, data, epochs=40)
        pages = [browser_page(url), browser_page(url)]
        for page in pages:
            page.locator("#ls-progress-text").filter(has_text="step").wait_for(timeout=60000)
        results: list = []
        threads = [threading.Thread(target=chat_request, args=(url, i, results)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a request hung"
        outcomes = sorted(str(outcome) for _, outcome, _ in results)
        assert outcomes == sorted(["hung up"] * 4 + ["200"] * 16), outcomes
        final = job.result(timeout=300)
        assert final[2].startswith("Done"), final[2]
        for page in pages:
            page.locator("#ls-status").filter(has_text="Done").wait_for(timeout=30000)
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
    FIGURES["concurrency"] = {
        "browsers": 2,
        "api requests": len(results),
        "hung up by the client": 4,
        "slowest seconds": round(max(seconds for *_, seconds in results), 1),
    }


HOSTILE_IDS = [
    "..",
    "../toy",
    "lora/../../etc/passwd",
    "lora/..%2F..%2Fetc",
    "/etc/passwd",
    "toy\x00",
    "x" * 10_000,
    "lora/" + "é" * 100,
    "モデル/../../x",
    "",
]


OK_BODY = {"model": "toy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
HUGE_TEXT = "a" * 10_000_000
WRONG_TYPES = (5, 1.5, True, [], {}, ["x"], {"a": 1})
OPTIONAL = (
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "repetition_penalty",
    "n",
)
# wrong-looking values that a client may rightly send (JSON's true is 1, a 1.5 temperature is
# in range): usable, so a 200 is right for them
USABLE = {
    ("stream", "True"),
    ("stream_options", "{}"),
    ("stream_options", "{'a': 1}"),
    ("stop", "[]"),
    ("stop", "['x']"),
    ("temperature", "1.5"),
    ("repetition_penalty", "5"),
    ("repetition_penalty", "1.5"),
    ("content", "[]"),
    *((name, "True") for name in ("temperature", "top_p", "repetition_penalty", "n")),
    *((name, value) for name in ("max_tokens", "max_completion_tokens") for value in ("5", "True")),
}


def _encoded(value) -> bytes:
    return json.dumps(value).encode()


def _with(**fields) -> bytes:
    return _encoded({**OK_BODY, **fields})


def _saying(**message) -> bytes:
    return _with(messages=[message])


def _usable(name: str, value) -> bool:
    return (name, repr(value)) in USABLE


def parser_limits() -> list[tuple[str, bytes, bool]]:
    """JSON that the parser itself cannot take, or takes into values nothing can use."""
    head = _encoded(OK_BODY)[:-1]
    return [
        ("not json", b"{not json", True),
        ("empty", b"", True),
        ("trailing garbage", _encoded(OK_BODY) + b" x", True),
        ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000, True),
        ("objects 100k deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, True),
        ("an integer of 5000 digits", head + b', "n": ' + b"9" * 5000 + b"}", True),
        ("NaN temperature", head + b', "temperature": NaN}', True),
        ("Infinity top_p", head + b', "top_p": Infinity}', True),
        ("1e999 temperature", head + b', "temperature": 1e999}', True),
        ("a list", b"[1, 2, 3]", True),
        ("a string", b'"hello"', True),
        ("null", b"null", True),
    ]


def encodings() -> list[tuple[str, bytes, bool]]:
    """Bodies that are not UTF-8, and text that no tokenizer can encode."""
    latin = '{"model": "toy", "messages": [{"role": "user", "content": "caf\u00e9"}]}'
    return [
        ("latin-1 bytes", latin.encode("latin-1"), True),
        ("a lone byte 0xff", latin.encode("utf-8").replace(b"\xc3\xa9", b"\xff"), True),
        ("utf-16", json.dumps(OK_BODY).encode("utf-16"), True),
        ("a UTF-8 BOM", b"\xef\xbb\xbf" + _encoded(OK_BODY), True),
        ("a lone surrogate", _saying(role="user", content="\ud800"), True),
        ("a lone surrogate in stop", _with(stop=["\udfff"]), True),
    ]


def every_field() -> list[tuple[str, bytes, bool]]:
    """Every field of the request and of a message: missing, null, each wrong type, empty,
    huge. Missing or null is usable for an optional field; the rest must be refused."""
    cases = []
    for name in ("model", "messages", *OPTIONAL):
        required = name in ("model", "messages")
        without = {k: v for k, v in OK_BODY.items() if k != name}
        cases.append((f"{name} missing", _encoded(without), required))
        cases.append((f"{name} null", _with(**{name: None}), required))
        for wrong in WRONG_TYPES:
            cases.append((f"{name} = {wrong!r}", _with(**{name: wrong}), not _usable(name, wrong)))
        cases.append((f"{name} empty", _with(**{name: ""}), True))
        huge = HUGE_TEXT if name in ("model", "stop") else 10**30
        cases.append((f"{name} huge", _with(**{name: huge}), True))
    message = OK_BODY["messages"][0]
    for name in ("role", "content"):
        without = {k: v for k, v in message.items() if k != name}
        cases.append((f"message {name} missing", _saying(**without), name == "role"))
        cases.append((f"message {name} null", _saying(**{**message, name: None}), name == "role"))
        for wrong in WRONG_TYPES:
            body = _saying(**{**message, name: wrong})
            cases.append((f"message {name} = {wrong!r}", body, not _usable(name, wrong)))
        cases.append((f"message {name} empty", _saying(**{**message, name: ""}), name == "role"))
        cases.append((f"message {name} huge", _saying(**{**message, name: HUGE_TEXT}), True))
    image = [{"type": "image_url", "image_url": "x"}]
    cases += [
        ("message role unknown", _saying(role="root", content="x"), True),
        ("content part not text", _saying(role="user", content=image), True),
        ("messages a string", _with(messages="hi"), True),
        ("messages empty list", _with(messages=[]), True),
        ("stop list of 9", _with(stop=["x"] * 9), True),
    ]
    cases += [(f"model {m[:20]!r}", _with(model=m), True) for m in HOSTILE_IDS]
    return cases


def hostile_bodies() -> list[tuple[str, bytes, bool]]:
    """(name, body, must be refused): by classes, not by examples."""
    return parser_limits() + encodings() + every_field()


def test_a_hostile_corpus_gets_4xx_in_openais_shape(home):
    key_cases = [{"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}, {}]
    tried = 0
    with lora_studio_server(home, "--api-key", "the-key") as (_, url, _log):
        good = {"Authorization": "Bearer the-key", "Content-Type": "application/json"}
        for name, body, refused in hostile_bodies():
            response = httpx.post(
                f"{url}/v1/chat/completions", content=body, headers=good, timeout=60
            )
            code = response.status_code
            if refused or code >= 400:
                assert 400 <= code < 500, (name, code, response.text[:300])
                error = response.json()["error"]
                assert error["message"] and error["type"], name
            elif response.headers["content-type"].startswith("text/event-stream"):
                assert code == 200 and response.text.endswith("data: [DONE]\n\n"), name
            else:  # usable after all: a real completion
                assert code == 200, (name, code)
                assert response.json()["choices"][0]["message"]["role"] == "assistant"
            tried += 1
        for headers in key_cases:
            for path in ("/v1/models", "/v1/chat/completions"):
                response = httpx.request(
                    "GET" if path.endswith("models") else "POST",
                    f"{url}{path}",
                    headers=headers,
                    content=b"{}",
                    timeout=30,
                )
                assert response.status_code == 401 and "error" in response.json()
                tried += 1
        assert httpx.get(f"{url}/v1/models", headers=good, timeout=10).status_code == 200
        tried += hostile_page_events(Client(url, verbose=False))
    FIGURES["hostile corpus"] = {"requests and events tried": tried, "5xx": 0}


def hostile_page_events(client: Client) -> int:
    """The page's API: hostile paths, ids and values get a message, never a crash."""
    tried = 0
    for value in [*HOSTILE_IDS, "/dev/zero", "/proc/self/environ"]:
        summary, _, _, why = client.predict(
            base_model="toy", dataset_path=value, dataset_name="x", api_name="/check_dataset"
        )
        refused = "problem(s)" in summary or why.startswith("**Error:**")
        assert refused or (value == "" and why == "Add a dataset."), (value, summary, why)
        status = client.predict(value, api_name="/resume")[2]
        assert "Error" in status and ("not a run id" in status or "pick a run" in status), value
        tried += 2
    train = {"base_model": "toy", "dataset_path": "/nowhere.jsonl", "dataset_name": "x"}
    train |= {"adapter_name": "x", "api_name": "/train"}
    # out of range: the studio's own check names the field (the components set no range)
    out_of_range = (("learning_rate", 1e9), ("dropout", 1), ("batch_size", 5000))
    for field, value in (*out_of_range, ("epochs", -3), ("rank", 0)):
        status = client.submit(**train, **{field: value}).result(timeout=60)[2]
        assert "Error" in status and field in status, (field, status)
        tried += 1
    # values of the wrong type are refused by Gradio itself, with the component's rule
    refused_by_gradio = (
        ("rank", "abc", "float | None"),
        ("keep", "x", "choices"),
    )
    for field, value, rule in refused_by_gradio:
        with pytest.raises(AppError, match=re.escape(rule)):
            client.submit(**train, **{field: value}).result(timeout=60)
        tried += 1
    return tried
