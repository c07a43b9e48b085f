"""A row as a question and its answer: what a model is asked (the conversation so far) and the
answer the row gives, for evaluations and for the samples a run generates while training.

Completions ask their prompt and answer their completion; a chat asks the turns before its
last assistant turn and answers with that turn (a chat that ends on a user turn asks it all
and has no answer, as does a prompt alone: GRPO's rows); a preference row asks its prompt
and answers with its chosen answer. A text row asks nothing.
"""

from __future__ import annotations

from typing import Any

from core.data.check import preference_pair, row_format


def question_and_answer(row: dict[str, Any]) -> tuple[list[dict], str | None]:
    """(messages to answer, the row's answer or None); ValueError saying why a row cannot
    be asked (a text row, malformed fields)."""
    fmt = row_format(row)
    if fmt == "text":
        raise ValueError(
            "a text row has no prompt to answer: an evaluation needs prompts (and answers "
            "to compare with)"
        )
    if fmt == "prompts" and "messages" not in row:
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError('"prompt" must be a non-empty string')
        return [{"role": "user", "content": prompt}], None
    if fmt == "completions":
        prompt, answer = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError('"prompt" must be a non-empty string')
        given = answer if isinstance(answer, str) and answer.strip() else None
        return [{"role": "user", "content": prompt}], given
    if fmt == "preference":
        pair = preference_pair(row)
        return pair.prompt, pair.chosen
    if fmt in ("chat", "prompts"):
        return _chat(row.get("messages"))
    raise ValueError(f"no known fields (found {sorted(row)[:5]})")


def _chat(messages: Any) -> tuple[list[dict], str | None]:
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list')
    if any(not isinstance(m, dict) or not isinstance(m.get("content"), str) for m in messages):
        raise ValueError('each message needs a "role" and a string "content"')
    if messages[-1].get("role") == "assistant":
        if len(messages) == 1:
            raise ValueError("the conversation is one assistant turn: there is no prompt")
        return messages[:-1], messages[-1]["content"]
    return messages, None
