"""Tool-calling rows: each bad one named by its line, refused on a base whose template ignores
tools, and trained with the loss on the assistant's calls and answers only, checked token by
token against the template's own rendering (the qwen2 toy: ChatML with Qwen 2.5's tools)."""

from __future__ import annotations

import json

import pytest

from core.data.check import DatasetError
from core.data.scan import scan_dataset
from core.data.tokens import processed_rows
from core.errors import StudioError
from core.models.families import build_toy
from core.models.inspect import tokenizer
from core.params import TrainingParams
from core.train.service import TrainingService
from tests.helpers import lora_studio, write_jsonl

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def weather_row(city: str, degrees: int, as_string: bool = False) -> dict:
    arguments = {"city": city, "unit": "celsius"}
    call = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "arguments": json.dumps(arguments) if as_string else arguments,
        },
    }
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps({"degrees": degrees})},
            {"role": "assistant", "content": f"It is {degrees} degrees in {city}."},
        ],
    }


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build_toy("qwen2", tmp_path_factory.mktemp("qwen2") / "qwen2")


def test_each_bad_tool_row_is_named_by_its_line(tmp_path):
    good = weather_row("Oslo", 3)
    bad_calls = weather_row("Lima", 20)
    bad_calls["messages"][1]["tool_calls"][0]["function"]["name"] = "get_time"
    bad_arguments = weather_row("Rome", 25)
    bad_arguments["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city: Rome"
    no_tools = weather_row("Cairo", 30)
    del no_tools["tools"]
    nameless = weather_row("Kyiv", 1) | {"tools": [{"type": "function", "function": {}}]}
    user_calls = weather_row("Oslo", 3)
    user_calls["messages"][0]["tool_calls"] = user_calls["messages"][1]["tool_calls"]
    rows = [good, bad_calls, bad_arguments, no_tools, nameless, user_calls, good | {"tools": 3}]
    with pytest.raises(DatasetError) as refused:
        scan_dataset(write_jsonl(tmp_path / "tools.jsonl", rows), batch_size=1)
    said = {(p.line, p.message) for p in refused.value.problems}
    assert (2, "message 2, call 1 calls 'get_time', which the row's tools do not declare") in said
    assert (3, "message 2, call 1: its arguments are not a JSON object") in said
    assert (4, "message 2, call 1 calls 'get_weather', but the row declares no tools") in said
    assert (5, "tool 1 has no name (give it a function with a name)") in said
    assert (6, "message 1 (user) has tool_calls: only assistants call") in said
    assert (7, '"tools" must be a list of JSON schemas') in said
    assert 1 not in {line for line, _ in said}


def test_the_loss_falls_on_the_calls_and_the_answers_token_by_token(qwen):
    tok = tokenizer(qwen)
    row = weather_row("Oslo", 3, as_string=True)  # OpenAI's form: the arguments a string
    items = processed_rows([row], "chat", tok, mask_prompt=True)
    assert len(items) == 2  # one example per assistant turn
    parsed = weather_row("Oslo", 3)["messages"]  # the arguments as the template expects them
    call_turn = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": '
        '"celsius"}}\n</tool_call><|im_end|>\n'
    )
    for (tokens, offset), (prefix, trained) in zip(
        items,
        [(parsed[:1], call_turn), (parsed[:3], "It is 3 degrees in Oslo.<|im_end|>\n")],
        strict=True,
    ):
        shown = tok.apply_chat_template(prefix, tools=row["tools"], add_generation_prompt=True)
        assert tokens[:offset] == shown  # the tools, the user, the tool's result: masked
        assert tok.decode(tokens[offset:]) == trained  # the turn itself, every token of it
        assert "get_weather" in tok.decode(tokens[:offset])  # the schema was shown, untrained


def test_tool_rows_train_on_a_base_that_writes_tools_and_are_refused_on_one_that_does_not(
    tmp_path, qwen, toy_model, studio
):
    rows = [weather_row(city, n) for n, city in enumerate(["Oslo", "Lima", "Rome"] * 8)]
    data = write_jsonl(tmp_path / "weather.jsonl", rows)
    with pytest.raises(StudioError, match="chat template does not write tools"):
        TrainingService(studio).check(toy_model, data, TrainingParams(lora_layers=2))
    done = lora_studio(
        *("train", "--model", str(qwen), "--data", str(data), "--epochs", "1"),
        *("--lora-layers", "2", "--samples", "0"),
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    from mlx_lm import load

    adapter = next((tmp_path / "home" / "adapters").iterdir())
    load(str(qwen), adapter_path=str(adapter))


def test_a_call_is_scored_by_name_and_arguments_key_order_ignored(tmp_path, qwen):
    """The calls a model writes, against the reference turn's: the same names and arguments
    as JSON values count, whatever the key order or the text around them; the prompt is
    rendered with the row's tools."""
    from core.eval.cases import read_cases
    from core.eval.generation import prompt_tokens
    from core.eval.metrics import tool_call

    row = weather_row("Oslo", 3, as_string=True)
    row["messages"] = row["messages"][:2]  # the test: the call is the reference
    case = read_cases(write_jsonl(tmp_path / "test.jsonl", [row]))[0]
    assert case.calls == [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]
    said = '<tool_call>\n{"arguments": {"unit": "celsius", "city": "Oslo"}, "name": "get_weather"}'
    assert tool_call(said + "\n</tool_call>", case.calls) == 1.0
    arguments = json.dumps({"city": "Oslo", "unit": "celsius"})  # OpenAI's: a string
    openai = json.dumps({"name": "get_weather", "arguments": arguments})
    assert tool_call(openai, case.calls) == 1.0
    assert tool_call('{"name": "get_weather", "arguments": {"city": "Lima"}}', case.calls) == 0.0
    assert tool_call("It is sunny in Oslo.", case.calls) == 0.0
    shown = tokenizer(qwen).decode(prompt_tokens(tokenizer(qwen), case))
    assert '"name": "get_weather"' in shown and shown.endswith("<|im_start|>assistant\n")
    import shutil

    shutil.copytree(qwen, tmp_path / "home" / "models" / "qwen2")
    done = lora_studio(
        *("eval", "qwen2", "--data", str(tmp_path / "test.jsonl"), "--max-tokens", "8"),
        *("--metrics", "tool_call,exact_match", "--json"),
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["qwen2"]["tool_call"]["n"] == 1


def test_the_demos_tool_sample_is_checked_clean_and_trains_each_turn(tmp_path, qwen):
    from core.models.demo import tool_rows

    rows = tool_rows()
    scan = scan_dataset(write_jsonl(tmp_path / "tools.jsonl", rows), batch_size=4)
    assert scan.format == "chat" and scan.tool_rows == len(rows) == 32
    items = processed_rows(rows[:3], "chat", tokenizer(qwen), mask_prompt=True)
    assert len(items) == 6 and all(0 < offset < len(tokens) for tokens, offset in items)
