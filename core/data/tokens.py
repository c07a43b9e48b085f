"""Token statistics and the masked preview: a dataset as the trainer will see it, tokenized by
mlx-lm's own dataset classes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from core.data.check import preference_pair
from core.data.prompts import question_and_answer
from core.data.tools import training_rows


@dataclass(frozen=True)
class TokenStats:
    examples: int
    min_tokens: int
    median_tokens: float
    max_tokens: int
    over_max_length: int
    trained_tokens: int
    lengths: list[int]


def processed_rows(
    rows: list[dict], fmt: str, tokenizer: Any, mask_prompt: bool
) -> list[tuple[list[int], int]]:
    """(tokens, offset of the first trained token) per row, from mlx-lm's own dataset
    classes (chat template, prompt masking), so the numbers match training exactly. A
    preference row gives two: its chosen answer's, then its rejected answer's."""
    from mlx_lm.tuner.datasets import create_dataset

    if fmt == "preference":
        return [
            (tokens, offset)
            for chosen, rejected, offset in preference_rows(rows, tokenizer)
            for tokens in (chosen, rejected)
        ]

    if fmt == "prompts":  # GRPO's: the prompt as asked, all of it before the answer
        return [(ids, len(ids)) for ids in map(prompt_ids(tokenizer), rows)]
    config = SimpleNamespace(mask_prompt=mask_prompt and fmt != "text")
    rows = training_rows(rows)  # a tool-calling row: one example per assistant turn
    processed = create_dataset(rows, tokenizer, config)
    return [processed.process(row) for row in rows]


def prompt_ids(tokenizer: Any):
    """``row -> token ids`` of a prompt row as the model is asked it (chat template and
    generation prompt): what GRPO answers."""

    def ids(row: dict) -> list[int]:
        messages, _ = question_and_answer(row)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    return ids


def preference_rows(rows: list[dict], tokenizer: Any) -> list[tuple[list[int], list[int], int]]:
    """(chosen tokens, rejected tokens, offset of the answers) per preference row: each
    answer after the prompt as mlx-lm's chat dataset tokenizes a conversation with its
    prompt masked, so the answers are all that is trained on."""
    from mlx_lm.tuner.datasets import ChatDataset

    chat = ChatDataset([], tokenizer, mask_prompt=True)
    items = []
    for row in rows:
        pair = preference_pair(row)
        answers = [
            chat.process({"messages": [*pair.prompt, {"role": "assistant", "content": text}]})
            for text in (pair.chosen, pair.rejected)
        ]
        (chosen, offset), (rejected, _) = answers
        items.append((chosen, rejected, offset))
    return items


def token_statistics(items: list[tuple[list[int], int]], *, max_seq_length: int) -> TokenStats:
    """Token counts as the trainer will see them, from rows tokenized by ``processed_rows``."""
    lengths, trained = [], 0
    for tokens, offset in items:
        lengths.append(len(tokens))
        trained += max(0, min(len(tokens), max_seq_length) - offset)
    return TokenStats(
        examples=len(items),
        min_tokens=min(lengths),
        median_tokens=statistics.median(lengths),
        max_tokens=max(lengths),
        over_max_length=sum(n > max_seq_length for n in lengths),
        trained_tokens=trained,
        lengths=lengths,
    )


def preview(items: list[tuple[list[int], int]], tokenizer: Any) -> list[tuple[str, str]]:
    """For each tokenized row: (the text masked from the loss, the text trained on), as the
    model sees them after its chat template."""
    return [
        (tokenizer.decode(tokens[:offset]), tokenizer.decode(tokens[offset:]))
        for tokens, offset in items
    ]
