"""Known shapes of training data, and the mapping from a source's columns to the studio's rows.

A source in a known shape is mapped without being asked: OpenAI messages, prompt/completion,
text, Alpaca (instruction, input, output), ShareGPT (conversations of from/value, its role
names mapped) and TRL preference rows (prompt, chosen, rejected; or chosen and rejected
conversations). Anything else needs a mapping of the studio's fields to its columns
(``prompt=question``). The studio's rows are those ``core.data.check`` validates, and the
preference rows of DPO and ORPO: ``{"prompt", "chosen", "rejected"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import StudioError

# the studio's fields a column can be mapped to, by the shape of the rows they make
FIELDS = {
    "completions": ("prompt", "completion", "system"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "system"),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES |= {"bot": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


class RowProblem(ValueError):
    """One record that cannot become a row (the import skips it, with the reason)."""


@dataclass(frozen=True)
class Mapping:
    """How records become rows: a known ``shape``, or ``fields`` mapped to columns."""

    shape: str  # messages, sharegpt, alpaca, trl, completions, text, preference
    fields: dict[str, str] = field(default_factory=dict)  # studio field -> source column
    system: str | None = None  # a system prompt for every row (--system)

    def describe(self) -> str:
        if not self.fields:
            return f"{self.shape} (a known shape)"
        return ", ".join(f"{target}={column}" for target, column in self.fields.items())

    def convert(self, values: dict[str, Any]) -> dict:
        """The studio row for one record; RowProblem when it cannot be one."""
        row = _CONVERTERS[self.shape](self, values)
        return _with_system(row, self.system) if self.system else row


def known_shape(columns: list[str]) -> str | None:
    """The known shape a record with these columns has, if any."""
    have = set(columns)
    if {"chosen", "rejected"} <= have:
        return "trl"
    if "messages" in have:
        return "messages"
    if "conversations" in have:
        return "sharegpt"
    if {"prompt", "completion"} <= have:
        return "completions"
    if {"instruction", "output"} <= have:
        return "alpaca"
    if "text" in have:
        return "text"
    return None


def mapping_for(
    columns: list[str], pairs: list[str], shape: str = "sft", system: str | None = None
) -> Mapping:
    """The mapping of an import: the known shape of ``columns``, or ``pairs`` (FIELD=COLUMN,
    from --map) checked against the columns that exist."""
    if not pairs:
        found = known_shape(columns)
        if found is None or (shape == "preference") != (found == "trl"):
            raise StudioError(
                f"the columns ({', '.join(columns[:12])}) are in no known "
                f"{'preference' if shape == 'preference' else 'training'} shape",
                hint="map them, e.g. --map prompt=question --map completion=answer"
                + (" --map chosen=good --map rejected=bad" if shape == "preference" else ""),
            )
        return Mapping(found, system=system)
    fields = dict(_pair(p) for p in pairs)
    missing = sorted({c for c in fields.values() if c not in columns})
    if missing:
        raise StudioError(
            f"no column {', '.join(missing)} in the source",
            hint=f"the columns are: {', '.join(columns)}",
        )
    return Mapping(_shape_of(fields, shape), fields, system)


def _pair(text: str) -> tuple[str, str]:
    target, sep, column = text.partition("=")
    known = sorted({f for fields in FIELDS.values() for f in fields})
    if not sep or target not in known or not column:
        raise StudioError(f"--map {text}: write FIELD=COLUMN, FIELD one of {', '.join(known)}")
    return target, column


def _shape_of(fields: dict[str, str], shape: str) -> str:
    """The rows a mapping makes, from the fields it names."""
    kind = "text" if "text" in fields else "completions"
    if shape == "preference":
        kind = "preference"
    needed = [f for f in FIELDS[kind] if f != "system" and f not in fields]
    extra = [f for f in fields if f not in FIELDS[kind]]
    if needed or extra:
        raise StudioError(
            f"a {kind} row needs {', '.join(f for f in FIELDS[kind] if f != 'system')}"
            + (f"; {', '.join(extra)} has no place in it" if extra else ""),
            hint="map each of them to a column with --map FIELD=COLUMN",
        )
    return kind


def _text(values: dict, column: str) -> str:
    """A column's value as text. A cell that is empty, a number or a nested value is its
    row's problem (the row is skipped with the reason, the import goes on); a column of
    them leaves no row, and the import's refusal quotes the first reason."""
    value = values.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(f"{column!r} is empty")
    if isinstance(value, int | float):  # bool is an int too
        raise RowProblem(f"{column!r} holds a number ({value!r}), not text: map a text column")
    if not isinstance(value, str):
        raise RowProblem(
            f"{column!r} holds a {type(value).__name__}, not text: map a text column "
            "(nested columns map to nothing)"
        )
    return value


def _mapped(mapping: Mapping, values: dict) -> dict:
    fields = mapping.fields
    if mapping.shape == "text":
        return {"text": _text(values, fields["text"])}
    if mapping.shape == "preference":
        row = {k: _text(values, fields[k]) for k in ("prompt", "chosen", "rejected")}
    else:
        row = {k: _text(values, fields[k]) for k in ("prompt", "completion")}
    if "system" in fields and values.get(fields["system"]):
        row = _with_system(row, _text(values, fields["system"]))
    return row


def _messages(mapping: Mapping, values: dict) -> dict:
    messages = values.get("messages")
    if not isinstance(messages, list):
        raise RowProblem('"messages" is not a list')
    row = {"messages": messages}
    if values.get("tools"):
        row["tools"] = values["tools"]
    return row


def _sharegpt(mapping: Mapping, values: dict) -> dict:
    turns = values.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowProblem('"conversations" is not a non-empty list')
    messages = []
    for number, turn in enumerate(turns, start=1):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES:
            raise RowProblem(f"turn {number} is from {speaker!r}, not one of human, gpt, system")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
    if values.get("system"):  # some dumps keep the system prompt beside the turns
        messages.insert(0, {"role": "system", "content": values["system"]})
    return {"messages": messages}


def _alpaca(mapping: Mapping, values: dict) -> dict:
    prompt, extra = _text(values, "instruction"), values.get("input")
    if isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return {"prompt": prompt, "completion": _text(values, "output")}


def _trl(mapping: Mapping, values: dict) -> dict:
    """TRL's preference rows: standard (three texts), or conversational (message lists:
    the prompt as the turns both answers share, or a "prompt" list of its own)."""
    if isinstance(values.get("chosen"), list):
        row = {"chosen": values["chosen"], "rejected": values.get("rejected")}
        if isinstance(values.get("prompt"), list):
            row = {"prompt": values["prompt"], **row}
        return row
    return {k: _text(values, k) for k in ("prompt", "chosen", "rejected")}


def _completions(mapping: Mapping, values: dict) -> dict:
    return {"prompt": _text(values, "prompt"), "completion": _text(values, "completion")}


def _plain_text(mapping: Mapping, values: dict) -> dict:
    return {"text": _text(values, "text")}


_CONVERTERS = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "trl": _trl,
    "completions": lambda m, v: _mapped(m, v) if m.fields else _completions(m, v),
    "text": lambda m, v: _mapped(m, v) if m.fields else _plain_text(m, v),
    "preference": _mapped,
}


def _with_system(row: dict, system: str) -> dict:
    """A row that starts with ``system``: completions become a chat (the only format whose
    rows carry a system prompt); a chat gets it first unless it has one."""
    if "messages" in row:
        messages = row["messages"]
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            return row
        return {**row, "messages": [{"role": "system", "content": system}, *messages]}
    if "completion" in row:
        return {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ]
        }
    if "chosen" in row:
        return {**row, "system": system}
    return row  # text rows have no roles
