"""Tool-calling rows: chat rows with ``tools`` (JSON schemas, the OpenAI format
``{"type": "function", "function": {"name", "parameters", ...}}`` or the bare function), assistant
turns with ``tool_calls`` and ``tool`` turns with the results, as mlx-lm and the OpenAI API
write them.

Checked line by line (``tool_problems``): a declared tool has a name, a call names a declared
tool, its arguments are a JSON object (or a string that parses as one). Rendered by the base's
own chat template (``supports_tools`` refuses a template that ignores them, before a run
starts). Trained on every assistant turn: a row becomes one example per assistant turn, the
conversation before it masked (``training_rows``), so the loss falls on the calls and the
answers and never on the tools' schemas, the user's turns or the tools' results. Arguments given
as JSON strings are parsed into objects first, as the templates expect.
"""

from __future__ import annotations

import json
from typing import Any

PROBE_TOOL = "studio_probe_tool"  # a name no template writes unless it renders the tools


def has_tools(row: dict[str, Any]) -> bool:
    messages = row.get("messages")
    calls = isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("tool_calls") for m in messages
    )
    return bool(row.get("tools")) or calls


def _function(entry: Any) -> dict | None:
    """The function of a tool or a call: ``{"function": {...}}`` or the bare object."""
    if not isinstance(entry, dict):
        return None
    inner = entry.get("function", entry)
    return inner if isinstance(inner, dict) else None


def _arguments(value: Any) -> dict | None:
    """A call's arguments as an object: given as one, or as a JSON string of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def tool_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with a chat row's tools and calls (empty: nothing)."""
    tools, found = row.get("tools"), []
    if tools is not None and not isinstance(tools, list):
        return ['"tools" must be a list of JSON schemas']
    declared = set()
    for number, tool in enumerate(tools or [], start=1):
        name = (_function(tool) or {}).get("name")
        if not isinstance(name, str) or not name:
            found.append(f"tool {number} has no name (give it a function with a name)")
        declared.add(name)
    for index, message in enumerate(row.get("messages") or [], start=1):
        if isinstance(message, dict) and message.get("tool_calls") is not None:
            found += _call_problems(index, message, declared, tools is not None)
    return found


def _call_problems(index: int, message: dict, declared: set, any_tools: bool) -> list[str]:
    calls, found = message["tool_calls"], []
    if message.get("role") != "assistant":
        return [f"message {index} ({message.get('role')}) has tool_calls: only assistants call"]
    if not isinstance(calls, list) or not calls:
        return [f"message {index}: tool_calls must be a non-empty list"]
    for number, call in enumerate(calls, start=1):
        function = _function(call) or {}
        name = function.get("name")
        where = f"message {index}, call {number}"
        if not any_tools:
            found.append(f"{where} calls {name!r}, but the row declares no tools")
        elif name not in declared:
            found.append(f"{where} calls {name!r}, which the row's tools do not declare")
        if _arguments(function.get("arguments", {})) is None:
            found.append(f"{where}: its arguments are not a JSON object")
    return found


def normalized(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every call's arguments as an object (what chat templates render)."""
    messages = []
    for message in row["messages"]:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(_function(call))
                function["arguments"] = _arguments(function.get("arguments", {}))
                calls.append({"type": "function", "function": function})
            message = {**message, "tool_calls": calls, "content": message.get("content") or ""}
        messages.append(message)
    return {**row, "messages": messages}


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as trained: a tool-calling row as one row per assistant turn (the
    conversation up to that turn: mlx-lm's chat dataset then trains that turn alone); any
    other row as it is."""
    out = []
    for row in rows:
        if "messages" not in row or not has_tools(row):
            out.append(row)
            continue
        row = normalized(row)
        messages = row["messages"]
        for end, message in enumerate(messages, start=1):
            if message.get("role") == "assistant":
                out.append({**row, "messages": messages[:end]})
    return out


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes the tools it is given (many ignore
    them: their rows would train on calls to tools the model was never shown)."""
    tool = {"type": "function", "function": {"name": PROBE_TOOL, "parameters": {}}}
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=[tool], tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that fails on tools does not support them
        return False
    return PROBE_TOOL in text


def calls_of(message: dict) -> list[dict]:
    """An assistant turn's calls as ``{"name", "arguments"}`` objects (what is compared)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = _function(call) or {}
        calls.append(
            {"name": function.get("name"), "arguments": _arguments(function.get("arguments", {}))}
        )
    return calls


def calls_in(text: str) -> list[dict]:
    """The calls a model wrote: each JSON object in ``text`` with a ``name`` (inside
    ``<tool_call>`` tags or not), as ``{"name", "arguments"}``, in order."""
    decoder, found, start = json.JSONDecoder(), [], text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict) and "name" in value:
            found.append(
                {"name": value["name"], "arguments": _arguments(value.get("arguments", {}))}
            )
        start = text.find("{", end)
    return found
