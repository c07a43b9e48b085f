"""Samples while training: at each validation, the model's greedy answers to a few fixed
prompts of the validation split, so a person sees what the loss means ("it says Arr now").

The prompts are the first ``--samples`` validation rows that ask something (a text row asks
nothing), the same for the whole run, resumed sessions included. A GRPO run's samples carry
the reward its rewards give each answer. The answers come from
mlx-lm's batch generation with the adapter as it is at that step, dropout off; their time is
reported with them and never counted as training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import mlx.nn as nn

from core import protocol
from core.data.prompts import question_and_answer


class Sampler:
    """Generates a run's samples: call it with the step."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        rows: list[dict],
        count: int,
        tokens: int,
        score: Callable[[str, str, dict], float] | None = None,
    ):
        self.model, self.tokenizer, self.tokens = model, tokenizer, tokens
        self.score = score  # GRPO's: (prompt text, answer, row) -> the answer's reward
        self.prompts: list[tuple[str, list[int]]] = []
        self.rows: list[dict] = []
        for row in rows:
            if len(self.prompts) >= count:
                break
            try:
                messages, _ = question_and_answer(row)
            except ValueError:
                continue
            shown = next(
                (m["content"] for m in reversed(messages) if m.get("role") == "user"),
                messages[-1]["content"],
            )
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            self.prompts.append((shown, ids))
            self.rows.append(row)

    def __call__(self, step: int) -> protocol.Samples | None:
        from mlx_lm.generate import batch_generate

        if not self.prompts:
            return None
        started = time.perf_counter()
        self.model.eval()
        try:
            result = batch_generate(
                self.model, self.tokenizer, [ids for _, ids in self.prompts], max_tokens=self.tokens
            )
        finally:
            self.model.train()
        answers = [
            protocol.Sample(prompt=shown, answer=text.strip(), reward=self._reward(ids, text, row))
            for (shown, ids), text, row in zip(self.prompts, result.texts, self.rows, strict=True)
        ]
        return protocol.Samples(
            step=step, samples=answers, seconds=round(time.perf_counter() - started, 3)
        )

    def _reward(self, ids: list[int], text: str, row: dict) -> float | None:
        return self.score(self.tokenizer.decode(ids), text, row) if self.score else None
