"""The OpenAI-compatible API on a real server on 127.0.0.1, driven by the openai package."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from core.serve.api import MAX_BODY_BYTES, create_app
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from tests.helpers import free_port, lora_studio_server

KEY = "test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_model, trained_adapter):
    from core.settings import Settings

    settings = Settings.from_env(tmp_path_factory.mktemp("api-studio")).ensure()
    shutil.copytree(toy_model, settings.models / "toy")
    shutil.copytree(trained_adapter, settings.adapters / trained_adapter.name)
    registry = ModelRegistry(settings, hub=settings.home / "no-hub").start()
    engine = InferenceEngine(registry)
    port = free_port()
    config = uvicorn.Config(create_app(registry, engine, api_key=KEY), port=port, log_level="error")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", f"lora/{trained_adapter.name}", settings, engine
    uv.should_exit = True
    thread.join(timeout=10)
    engine.close()
    registry.stop()


@pytest.fixture
def client(server):
    url, *_ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def test_models_are_listed_with_the_device_that_answers(client, server):
    _, adapter, *_ = server
    listed = client.models.list()
    assert {m.id for m in listed} == {"toy", adapter}
    assert listed.model_extra["device"].startswith("cpu")  # mlx[cpu] here
    assert ", cpu)" not in listed.model_extra["device"]  # said once
    names = {m.id: m.model_extra["name"] for m in listed}
    assert names["toy"] == "toy" and names[adapter] == "Colours (LoRA on toy)"


def test_streamed_chat_from_an_adapter(client, server):
    _, adapter, *_ = server
    stream = client.chat.completions.create(
        model=adapter,
        messages=[{"role": "user", "content": "What colour is the sky?"}],
        stream=True,
        temperature=0,
        max_tokens=10,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10
    whole = client.chat.completions.create(
        model=adapter,
        messages=[{"role": "user", "content": "What colour is the sky?"}],
        temperature=0,
        max_tokens=10,
    )
    assert whole.choices[0].message.content == text
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 10


def post(url, body, headers=None, timeout=30):
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=timeout)


def chat_body(**overrides) -> str:
    return json.dumps(
        {
            "model": "toy",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            **overrides,
        }
    )


@pytest.mark.parametrize(
    "body, status, kind",
    [
        ("{not json", 400, "invalid_request_error"),
        (chat_body(max_tokens=-5), 400, "invalid_request_error"),
        (chat_body(temperature=7), 400, "invalid_request_error"),
        (chat_body(messages=[]), 400, "invalid_request_error"),
        (chat_body(messages=[{"role": "wizard", "content": "x"}]), 400, "invalid_request_error"),
        (chat_body(model="no-such-model"), 404, "model_not_found"),
        (chat_body(model="lora/../../etc/passwd"), 404, "is not an adapter id"),
        (chat_body(model="../toy"), 404, "is not a model id"),
        (chat_body(model="toy\x00"), 404, "is not a model id"),
        ("x" * (MAX_BODY_BYTES + 1), 413, "invalid_request_error"),
    ],
)
def test_hostile_requests_get_the_right_4xx(server, body, status, kind):
    url, *_ = server
    response = post(url, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == kind or kind in error["message"]
    assert post(url, chat_body()).status_code == 200  # and the server keeps serving


def test_a_wrong_key_is_refused(server):
    url, *_ = server
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert post(url, chat_body(), headers={"Authorization": "Bearer nope"}).status_code == 401


def test_an_unavailable_adapter_answers_409_with_the_reason(server):
    url, adapter, settings, _ = server
    broken = settings.adapters / str(uuid.uuid4())
    shutil.copytree(settings.adapters / adapter.removeprefix("lora/"), broken)
    meta = json.loads((broken / "metadata.json").read_text())
    meta.update(baseModelId="gone", baseModelPath="/nowhere/gone")
    (broken / "metadata.json").write_text(json.dumps(meta))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = post(url, chat_body(model=f"lora/{broken.name}"))
        if response.status_code != 404:
            break
        time.sleep(0.05)
    assert response.status_code == 409
    assert "base model gone not found" in response.json()["error"]["message"]
    assert post(url, chat_body(model=adapter)).status_code == 200


def test_lora_studio_serve_runs_the_api_with_the_fast_blas(tmp_path, toy_model):
    from core.machine.blas_choice import choose_blas

    shutil.copytree(toy_model, tmp_path / "models" / "toy")
    with lora_studio_server(tmp_path, "serve") as (process, url, log):
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["toy"]
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        fast = choose_blas().name
        if fast != "stock":
            assert {"mkl": "libmkl_rt", "openblas": "libopenblas"}[fast] in maps
    assert "127.0.0.1" in log.read_text()


LONG = dict(model="toy", temperature=0, max_tokens=4000)  # the toy base never stops by itself


def generated_while(engine, action) -> int:
    """Tokens the engine generated during ``action`` and until it is free again."""
    before = engine.stats["generated_tokens"]
    action()
    engine.call(lambda: None)  # queued behind whatever is still generating
    return engine.stats["generated_tokens"] - before


def test_a_client_that_goes_away_stops_its_generation(server):
    url, *_, engine = server

    def ask_and_leave():
        with pytest.raises(httpx.ReadTimeout):
            post(url, chat_body(**LONG), timeout=1.0)

    assert generated_while(engine, ask_and_leave) < 3000


def test_a_stream_closed_early_stops_its_generation(server):
    url, *_, engine = server

    def read_a_little_and_leave():
        body = chat_body(**LONG, stream=True)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        with httpx.stream("POST", f"{url}/v1/chat/completions", content=body, headers=headers) as r:
            assert next(r.iter_lines()).startswith("data:")

    assert generated_while(engine, read_a_little_and_leave) < 3000


def test_max_tokens_is_bounded_by_the_context_length(server):
    url, *_ = server
    response = post(url, chat_body(model="toy", max_tokens=5000))
    assert response.status_code == 400
    assert "context length of toy (4096)" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "max_tokens"


def test_messages_the_chat_template_refuses_get_a_400(server):
    """A model whose template raises on roles out of order (as many do, through
    raise_exception): the caller's input, answered with 400, never a 5xx."""
    url, _, settings, _ = server
    strict = settings.models / "strict"
    if not strict.exists():
        shutil.copytree(settings.models / "toy", strict)
        (strict / "chat_template.jinja").write_text(
            "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == "
            "messages[loop.index0 - 1]['role'] %}{{ raise_exception('roles must alternate') }}"
            "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
        )
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 10
    while "strict" not in httpx.get(f"{url}/v1/models", headers=headers).text:
        assert time.monotonic() < deadline, "the registry never listed the new model"
        time.sleep(0.1)
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    body = {"model": "strict", "messages": twice, "max_tokens": 2}
    refused = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert refused.status_code == 400, refused.text
    assert "roles must alternate" in refused.json()["error"]["message"]
    body["messages"] = twice[:1]
    assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code == 200


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "messages, param, said",
    [
        ([{"role": "user"}], "messages.[0].content", "Missing required parameter"),
        ([{"role": "system", "content": None}], "messages.[0].content", "'messages[0].content'"),
        ([{"role": "developer"}], "messages.[0].content", "Missing required parameter"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant"}],
            "messages.[1].content",
            "needs content or tool_calls",
        ),
        (
            [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}],
            "messages.[1].tool_call_id",
            "Missing required parameter: 'messages[1].tool_call_id'",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "tool", "content": "42", "tool_call_id": "call_9"},
            ],
            "messages.[1].tool_call_id",
            "must be a response to a preceding message with 'tool_calls'",
        ),
        (
            [{"role": "user", "content": "x", "tool_call_id": "call_1"}],
            "messages.[0].tool_call_id",
            "Unrecognized parameter",
        ),
    ],
)
def test_each_roles_required_fields_are_checked_as_openai_does(server, messages, param, said):
    """OpenAI's API reference: system, developer, user and tool messages need content; an
    assistant's needs content or tool_calls; a tool message needs the tool_call_id of a call
    made before it. A 400 names the field, as OpenAI's does (its param and message)."""
    url, *_ = server
    response = post(url, chat_body(messages=messages))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and said in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_tool_call_and_its_answer_are_accepted(server):
    url, *_ = server
    messages = [
        {"role": "user", "content": "What is 6 x 7?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    response = post(url, chat_body(messages=messages))
    assert response.status_code == 200, response.text
