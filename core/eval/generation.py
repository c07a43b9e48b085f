"""A model's answers to evaluation rows, and the reference answers' loss under it: on the
engine's thread, with the base the chats use (so five adapters of one base cost one load).

Answers come from mlx-lm's ``batch_generate``, which serves several rows at once; greedy by
default (temperature 0), so they are mlx-lm's greedy answers for the same prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.eval.cases import Case
from core.serve.engine import InferenceEngine


@dataclass(frozen=True)
class Sampling:
    """How answers are generated (``lora-studio eval``'s flags)."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8  # rows generated together (1: one row at a time)


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    reference_loss: float | None  # mean NLL per reference token; None without a reference


def answer(
    engine: InferenceEngine,
    model_id: str,
    cases: list[Case],
    sampling: Sampling,
    with_loss: bool = True,
    with_text: bool = True,
) -> list[Answer]:
    """``model_id``'s answer to each case, in order, and (``with_loss``) the reference's
    loss under it (the cases in one engine call: call it with a batch's worth for progress
    between calls). Without ``with_text`` nothing is generated: the loss alone was asked."""

    def work(model, tokenizer) -> list[Answer]:
        if not with_text:
            return [Answer("", 0, reference_loss(model, tokenizer, c)) for c in cases]
        prompts = [prompt_tokens(tokenizer, case) for case in cases]
        texts, counts = [], []
        for start in range(0, len(prompts), sampling.batch_size):
            chunk = prompts[start : start + sampling.batch_size]
            made = _generate(model, tokenizer, chunk, sampling, seed=sampling.seed + start)
            texts += made[0]
            counts += made[1]
        losses = [reference_loss(model, tokenizer, c) if with_loss else None for c in cases]
        return [Answer(t, n, loss) for t, n, loss in zip(texts, counts, losses, strict=True)]

    return engine.with_model(model_id, work)


def prompt_tokens(tokenizer, case: Case) -> list[int]:
    return tokenizer.apply_chat_template(
        case.messages, tools=case.tools, add_generation_prompt=True
    )


def _generate(model, tokenizer, prompts: list[list[int]], sampling: Sampling, seed: int):
    """(texts, token counts) of one batch: mlx-lm's batch generation."""
    import mlx.core as mx
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    result = batch_generate(
        model,
        tokenizer,
        prompts,
        max_tokens=sampling.max_tokens,
        sampler=make_sampler(temp=sampling.temperature),
        return_token_ids=True,
    )
    return [text.strip() for text in result.texts], [len(ids) for ids in result.token_ids]


def reference_loss(model, tokenizer, case: Case) -> float | None:
    """Mean negative log-likelihood per token of the reference answer after the prompt (the
    tokens SFT would train on with the prompt masked)."""
    import mlx.core as mx
    import mlx.nn as nn

    if case.reference is None:
        return None
    turn = {"role": "assistant", "content": case.reference}
    tokens = tokenizer.apply_chat_template([*case.messages, turn])
    offset = len(prompt_tokens(tokenizer, case))
    if offset >= len(tokens):
        return None
    inputs = mx.array(tokens[:-1])[None]
    targets = mx.array(tokens[1:])[None]
    losses = nn.losses.cross_entropy(model(inputs)[:, offset - 1 :], targets[:, offset - 1 :])
    return float(losses.astype(mx.float32).mean().item())


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 700.0))
