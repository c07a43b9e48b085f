"""The page's events without a browser (gradio_client), and how the app is launched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from core.train.runs import RunRecord
from tests.helpers import colour_rows, lora_studio_server, write_jsonl


@pytest.fixture(scope="module")
def served(tmp_path_factory, toy_model):
    home = tmp_path_factory.mktemp("client-studio")
    shutil.copytree(toy_model, home / "models" / "toy")
    with lora_studio_server(home) as (_, url, _log):
        yield home, Client(url, verbose=False)


def train_job(client, home, epochs=1):
    """/train through gradio_client, the form's fields as named parameters (the rest default)."""
    data = write_jsonl(home / f"colours-{epochs}.jsonl", colour_rows())
    return client.submit(
        base_model="toy",
        dataset_path=str(data),
        dataset_name=data.name,
        adapter_name="via client",
        rank=8,
        learning_rate=0.01,
        epochs=epochs,
        lora_layers=-1,
        keys=["self_attn.q_proj", "self_attn.v_proj"],
        api_name="/train",
    )


def test_train_through_the_api_with_named_parameters_followed_to_the_end(served):
    home, client = served
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in api["/train"]["parameters"]]
    assert names[:4] == ["base_model", "dataset_path", "dataset_name", "adapter_name"]
    assert {"rank", "alpha", "learning_rate", "epochs", "batch_size", "early_stop"} <= set(names)
    assert {"/check_dataset", "/train", "/stop", "/resume", "/chat"} <= set(api)
    assert not any(name.startswith("/lambda") or "param_" in str(api[name]) for name in api)

    job = train_job(client, home, epochs=2)
    shown = [update[0] for update in job]  # every progress view, as the run streamed it
    outputs = job.result(timeout=180)
    assert outputs[2].startswith("Done"), outputs[2]
    assert "100%" in shown[-1] and any("step" in bar and "100%" not in bar for bar in shown)


def test_check_dataset_needs_no_model_for_format_count_and_problems(served, tmp_path):
    _, client = served
    good = write_jsonl(tmp_path / "good.jsonl", colour_rows(20))
    summary, _, _, why = client.predict(  # and Start's state, which the client does not get
        base_model=None,
        dataset_path=str(good),
        dataset_name="good.jsonl",
        api_name="/check_dataset",
    )
    assert "**chat** format, **20** examples (16 train / 4 validation)" in summary
    assert why == "Pick a base model."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    summary, *_ = client.predict(
        base_model=None, dataset_path=str(bad), dataset_name="bad.jsonl", api_name="/check_dataset"
    )
    assert "1 problem(s)" in summary and "line 2" in summary


@pytest.fixture(scope="module")
def trained(served):
    """An adapter trained through the page's train event; (its id, refresh before, after)."""
    home, client = served
    before = client.predict(api_name="/refresh")
    outputs = train_job(client, home).result(timeout=180)
    assert outputs[2].startswith("Done"), outputs[2]
    adapter_id = re.search(r"lora/[0-9a-f-]{36}", outputs[3]).group(0)
    after = until(lambda: client.predict(api_name="/refresh"), lambda r: adapter_id in str(r))
    return adapter_id, before, after


def until(get, holds, timeout=30.0):
    """``get()`` once ``holds`` of it (polling the real thing, not sleeping a fixed time)."""
    deadline = time.monotonic() + timeout
    while not holds(value := get()):
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        time.sleep(0.05)
    return value


def test_refresh_start_and_the_new_adapter_in_the_pickers(trained):
    adapter_id, before, after = trained
    chat_choices = [choice[1] for choice in after[1]["choices"]]
    assert adapter_id in chat_choices
    assert before != after


def test_compare_answers_with_the_adapter_and_its_base(served, trained):
    _, client = served
    adapter_id = trained[0]
    history, base_history, _ = client.predict(
        "What colour is the sky?", [], [], adapter_id, True, "", 0.0, 1.0, 8, api_name="/chat"
    )
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert [m["role"] for m in base_history] == ["user", "assistant"]
    alone, _, _ = client.predict(
        "What colour is the sky?", [], [], "toy", False, "", 0.0, 1.0, 8, api_name="/chat"
    )
    assert base_history[-1]["content"] == alone[-1]["content"]  # the right side is the base
    assert text_of(alone[-1]) == mlx_lm_reply(served[0], "What colour is the sky?", 8)


def test_an_unavailable_adapter_shows_its_reason_in_the_chat(served, trained):
    home, client = served
    adapter_id = trained[0]
    weights = home / "adapters" / adapter_id.removeprefix("lora/") / "adapters.safetensors"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(b"corrupt")
        history, _, _ = until(
            lambda: client.predict(
                "hi", [], [], adapter_id, False, "", 0.0, 1.0, 8, api_name="/chat"
            ),
            lambda answer: "unreadable" in str(answer[0][-1]["content"]),  # the watcher saw it
        )
        reply = str(history[-1]["content"])
        assert "adapter unavailable" in reply and "unreadable" in reply
    finally:
        weights.write_bytes(saved)


def test_stop_stops_a_run_started_from_the_client(served):
    home, client = served
    job = train_job(client, home, epochs=500)
    until(job.outputs, lambda outputs: any("step" in (update[0] or "") for update in outputs))
    client.predict(api_name="/stop")
    outputs = job.result(timeout=60)
    assert outputs[2].startswith("Stopped")
    assert any("stopped" in str(o) for o in outputs[3:])  # the runs table lists it
    stopped = [RunRecord.read(p) for p in (home / "runs").iterdir() if p.is_dir()]
    assert [r.state for r in stopped] == ["stopped"]


def test_chat_event_streams_a_reply(served):
    _, client = served
    history, _, box = client.predict(
        "hello", [], [], "toy", False, "", 0.0, 1.0, 8, api_name="/chat"
    )
    assert history[-1]["role"] == "assistant" and box == ""
    assert text_of(history[-1]) == mlx_lm_reply(served[0], "hello", 8)


def text_of(message: dict) -> str:
    """A chat message's text (Gradio may give it as a list of parts)."""
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


def mlx_lm_reply(home: Path, text: str, max_tokens: int) -> str:
    """mlx-lm's own greedy reply of the toy model (the page's chat must give the same)."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(home / "models" / "toy"))
    messages = [{"role": "user", "content": text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens)


def run_cli(*args, env_extra=None, timeout=30):
    env = {**os.environ, **(env_extra or {})}
    env.pop("LORA_STUDIO_AUTH", None)
    return subprocess.run(
        [sys.executable, "-m", "webapp", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_lan_mode_refuses_to_start_without_credentials(tmp_path):
    result = run_cli("--lan", env_extra={"LORA_STUDIO_HOME": str(tmp_path)})
    assert result.returncode == 2 and "--auth" in result.stderr
    bad = run_cli("--auth", "nopassword", env_extra={"LORA_STUDIO_HOME": str(tmp_path)})
    assert bad.returncode == 2 and "user:password" in bad.stderr


def test_every_door_beyond_loopback_needs_credentials(tmp_path):
    env = {"LORA_STUDIO_HOME": str(tmp_path)}
    for args in (("--host", "0.0.0.0"), ("--host", "::"), ("--share",), ("--lan",)):
        refused = run_cli(*args, env_extra=env)
        assert refused.returncode == 2 and "--auth user:password" in refused.stderr, args
    api_only = run_cli("serve", "--host", "0.0.0.0", env_extra=env)
    assert api_only.returncode == 2 and "--api-key" in api_only.stderr


@pytest.mark.parametrize("door", [("--lan",), ("--host", "0.0.0.0")])
def test_credentials_protect_the_page_and_the_api(tmp_path, toy_model, door):
    shutil.copytree(toy_model, tmp_path / "models" / "toy")
    with lora_studio_server(tmp_path, "--auth", "ann:secret", *door) as (_, url, log):
        assert httpx.get(f"{url}/config").status_code in (401, 403)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        ok = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer secret"})
        assert ok.status_code == 200
        login = httpx.post(f"{url}/login", data={"username": "ann", "password": "secret"})
        assert login.status_code == 200
        assert "on your network: http://" in log.read_text()


def test_share_needs_credentials_fails_fast_offline_and_the_local_link_works(tmp_path, toy_model):
    shutil.copytree(toy_model, tmp_path / "models" / "toy")
    args = ("--share", "--auth", "ann:secret")
    with lora_studio_server(tmp_path, *args, timeout=60) as (_, url, log):
        assert "Share link unavailable" in log.read_text()
        with httpx.Client(base_url=url) as browser:
            assert browser.get("/config").status_code in (401, 403)
            browser.post("/login", data={"username": "ann", "password": "secret"})
            assert "Share link unavailable" in browser.get("/config").text


def test_a_studio_open_to_the_network_reads_datasets_only_under_its_roots(
    tmp_path, toy_model, monkeypatch
):
    """Through the API of the real server (tests/test_access.py tries every input in-process):
    absolute, symlinked, ``..`` and ``~`` paths to a file outside the roots."""
    home = tmp_path / "home"
    shutil.copytree(toy_model, home / "models" / "toy")
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_jsonl(allowed / "ok.jsonl", colour_rows(20))
    secret = write_jsonl(outside / "secret.jsonl", colour_rows(20))
    (allowed / "link.jsonl").symlink_to(secret)
    monkeypatch.setenv("HOME", str(outside))  # the server's ~ holds the secret
    os.environ["LORA_STUDIO_DATA_ROOTS"] = str(allowed)
    try:
        server = lora_studio_server(home, "--host", "0.0.0.0", "--auth", "ann:secret")
        with server as (_, url, _log):
            client = Client(url, auth=("ann", "secret"), verbose=False)

            def check(path: Path):
                return client.predict(
                    base_model="toy",
                    dataset_path=str(path),
                    dataset_name=path.name,
                    lora_layers=-1,
                    api_name="/check_dataset",
                )

            hostile_paths = (secret, allowed / "link.jsonl", allowed / ".." / "outside" / "x")
            for hostile in (*hostile_paths, Path("~/secret.jsonl")):
                summary, _, _, why = check(hostile)
                assert "outside the folders datasets may be read from" in why, hostile
                assert str(allowed) in why and "sky" not in summary
            summary, _, _, why = check(allowed / "ok.jsonl")
            assert "20** examples" in summary, why
            job = client.submit(
                base_model="toy",
                dataset_path=str(secret),
                dataset_name="secret.jsonl",
                adapter_name="x",
                api_name="/train",
            )
            assert "outside the folders" in job.result(timeout=60)[2]
    finally:
        del os.environ["LORA_STUDIO_DATA_ROOTS"]
