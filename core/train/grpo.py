"""GRPO: the model answers each prompt several times, the rewards say which answers beat their
group's mean, and the loss moves the adapter toward those (DeepSeekMath's group relative
policy optimization, with Dr. GRPO's and BNPO's normalisations as TRL defines them).

It is one more method of the one training loop. Its batches are rollouts: for each batch of
prompts, ``group_size`` answers per prompt drawn by mlx-lm's ``BatchGenerator`` from the
adapter as it is at that step, scored by the run's rewards (``core.train.rewards``), each
answer's advantage its reward's distance from its group's mean (divided by the group's
spread, except for ``dr_grpo``), and the base's log-probabilities of the answer's tokens (the
adapter switched off: the reference). Drawing uses MLX's global random state, which the
checkpoints keep, so a resumed run draws the very same answers.

Validation answers the held-out prompts greedily, once each: their mean reward is comparable
from one validation to the next, and minus it is the validation "loss" that keep-best and
early stopping minimise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_sampler

from core import protocol
from core.data.scan import Dataset
from core.data.tokens import prompt_ids
from core.params import TrainingParams
from core.train.batches import batch_order, padded
from core.train.loss import Loss, token_entropy
from core.train.rewards import Scorer

log = logging.getLogger(__name__)
ADVANTAGE_EPSILON = 1e-4  # added to a group's spread (TRL's), so one outlier stays finite
GREEDY_WIDTH = 32  # validation's greedy answers generated together (one each: no group)


@dataclass
class PromptSet:
    """Prompt rows, each as the model is asked it (chat template, generation prompt), the
    text the rewards see, and the row itself (what the rewards read)."""

    rows: list[dict]
    prompts: list[list[int]]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, index: int) -> int:
        return len(self.prompts[index])


def tokenized(dataset: Dataset, tokenizer) -> tuple[PromptSet, PromptSet]:
    """The training and validation splits' prompts."""

    asked = prompt_ids(tokenizer)

    def prompts(rows: list[dict]) -> PromptSet:
        ids = [asked(row) for row in rows]
        return PromptSet(rows, ids, [tokenizer.decode(i) for i in ids])

    return prompts(dataset.train), prompts(dataset.valid)


def _greedy_width(count: int, batch_size: int) -> int:
    """The widest multiple of the validation batch, up to ``GREEDY_WIDTH``, that validates
    the very rows the batch would (whole batches only, as mlx-lm's)."""
    covered = count // batch_size * batch_size
    widths = range(batch_size, max(GREEDY_WIDTH, batch_size) + 1, batch_size)
    return max(w for w in widths if count // w * w == covered)


def advantages(rewards: np.ndarray, group_size: int, scale: bool = True) -> np.ndarray:
    """Each answer's reward minus its group's mean (divided by the group's standard
    deviation when ``scale``); a group whose rewards are all equal gets 0 everywhere."""
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + ADVANTAGE_EPSILON)
    return centred.reshape(-1).astype(np.float32)


def grpo_loss(per_token: Callable, params: TrainingParams, names: list[str]) -> Callable:
    """``(model, batch, lengths, advantages, reference, stats) -> (loss, answers, sums)``.

    Per token: the clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with ``r`` the
    ratio to the policy that drew the answers (the same weights: one update per rollout, so
    ``r`` is 1 and its gradient is the log-probability's), plus ``beta`` times the KL to the
    reference, ``exp(ref - logp) - (ref - logp) - 1`` (the k3 estimator). Normalised per
    answer (grpo), over the batch's tokens (bnpo), or over answers x max completion tokens
    (dr_grpo)."""
    low, high = 1 - params.epsilon, 1 + params.epsilon

    def loss(model, batch, lengths, advantage, reference, stats):
        entropy, counted = per_token(batch, lengths)
        counted = counted.astype(mx.float32)
        logp = -entropy.astype(mx.float32)
        ratio = mx.exp(logp - mx.stop_gradient(logp))
        gain = advantage[:, None]
        surrogate = -mx.minimum(ratio * gain, mx.clip(ratio, low, high) * gain)
        log_ratio = reference - logp
        kl = mx.exp(log_ratio) - log_ratio - 1
        per = (surrogate + params.beta * kl) * counted
        tokens = counted.sum(axis=-1)
        answers = batch.shape[0]
        if params.grpo_loss == "grpo":
            value = (per.sum(axis=-1) / mx.maximum(tokens, 1)).mean()
        elif params.grpo_loss == "bnpo":
            value = per.sum() / mx.maximum(tokens.sum(), 1)
        else:
            value = per.sum() / (answers * params.max_completion_tokens)
        sums = _figures(stats, names)
        sums["kl"] = ((kl * counted).sum(axis=-1) / mx.maximum(tokens, 1)).sum()
        sums["tokens"] = tokens.sum()
        return value, mx.array(answers), sums

    return loss


def held_out_reward(names: list[str]) -> Callable:
    """Validation's "loss": minus the mean reward of the greedy answers (lower is better,
    as keep-best and early stopping want), with the rewards reported as figures."""

    def loss(model, batch, lengths, advantage, reference, stats):
        sums = _figures(stats, names)
        return -stats[:, 0].mean(), mx.array(stats.shape[0]), sums

    return loss


def _figures(stats: mx.array, names: list[str]) -> dict:
    """Sums over the answers of: the reward, each reward, the answer's length, whether its
    group had no signal (all rewards equal)."""
    sums = {"reward": stats[:, 0].sum()}
    for column, name in enumerate(names, start=1):
        sums[f"rewards.{name}"] = stats[:, column].sum()
    sums["completion_length"] = stats[:, -2].sum()
    sums["no_signal"] = stats[:, -1].sum()
    return sums


def choose_loss(
    model: nn.Module, params: TrainingParams, names: list[str]
) -> tuple[Loss, Callable]:
    """GRPO's loss, and the per-token function the rollouts' reference pass uses too."""
    name, per_token = token_entropy(model, params.max_completion_tokens + 1)
    fn = grpo_loss(per_token, params, names)
    return Loss(name, fn, validation=held_out_reward(names)), per_token


@contextlib.contextmanager
def adapter_off(model: nn.Module):
    """The base itself: every LoRA layer's scale set to 0 for the block (its output is then
    exactly the frozen layer's)."""
    layers = [m for m in model.modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]
    scales = [m.scale for m in layers]
    for layer in layers:
        layer.scale = 0.0
    try:
        yield
    finally:
        for layer, scale in zip(layers, scales, strict=True):
            layer.scale = scale


class Rollouts:
    """GRPO's batch strategy for the loop: ``batches.sft_batches``'s signature; each batch
    is drawn, scored and referenced when the loop asks for it (so with the weights of that
    step). With a ``seed`` it trains (``group_size`` sampled answers a prompt); without, it
    validates (one greedy answer a prompt)."""

    def __init__(self, model, tokenizer, params: TrainingParams, scorer: Scorer, per_token, emit):
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.scorer, self.per_token, self.emit = scorer, per_token, emit
        self.sampler = make_sampler(temp=params.temperature, top_p=params.top_p)
        self.said: dict[str, int] = {}  # the failure count last said, per reward

    def __call__(
        self,
        dataset: PromptSet,
        batch_size: int,
        max_seq_length: int,
        seed: int | None = None,
        comm_group=None,
        start: int = 0,
    ) -> Iterator[tuple]:
        group = self.params.group_size if seed is not None else 1
        if seed is None:  # one greedy answer a prompt: batch generation serves more at once
            batch_size = _greedy_width(len(dataset), batch_size)
        order = batch_order(len(dataset), dataset.length, batch_size, seed, comm_group)
        for indices in order[start:]:
            yield self.rollout(dataset, indices, group, greedy=seed is None)

    def rollout(self, dataset: PromptSet, indices: list[int], group: int, greedy: bool) -> tuple:
        """One batch: the prompts' answers, their advantages, the reference and the figures."""
        asked = [i for i in indices for _ in range(group)]
        answers = self.generate([dataset.prompts[i] for i in asked], greedy)
        texts = [self.tokenizer.decode(a) for a in answers]
        scored = [
            self.scorer.score(dataset.texts[i], text, dataset.rows[i])
            for i, text in zip(asked, texts, strict=True)
        ]
        self.say_failures()
        rewards = np.array([total for total, _ in scored], np.float32)
        sequences = [dataset.prompts[i] + a for i, a in zip(asked, answers, strict=True)]
        offsets = [len(dataset.prompts[i]) for i in asked]
        batch, lengths = padded(sequences, offsets, self.params.max_seq_length)
        lengths = lengths - mx.array([0, 1])  # the answer's own tokens (preference's rule)
        quiet = rewards.reshape(-1, group).std(axis=1) == 0
        stats = np.column_stack(
            [
                rewards,
                np.array([values for _, values in scored], np.float32).reshape(len(asked), -1),
                np.array([len(a) for a in answers], np.float32),
                np.repeat(quiet, group).astype(np.float32),
            ]
        )
        scale = self.params.grpo_loss != "dr_grpo"
        gains = advantages(rewards, group, scale) if group > 1 else np.zeros_like(rewards)
        reference = self.reference(batch, lengths) if not greedy else mx.zeros((1, 1))
        return batch, lengths, mx.array(gains), reference, mx.array(stats)

    def say_failures(self) -> None:
        """A reward's failures, said when they start and at 10, 100, 1000...: once, not
        once per answer."""
        for name, count in self.scorer.failures.items():
            said = self.said.get(name, 0)
            if said == 0 or len(str(count)) > len(str(said)):
                self.said[name] = count
                first = self.scorer.first_failure[name]
                self.emit(
                    protocol.Notice(
                        message=f"reward {first}; it failed on {count} answer(s) so far, "
                        "each scored 0 by it"
                    )
                )

    def reference(self, batch: mx.array, lengths: mx.array) -> mx.array:
        """The base's log-probability of each counted token (the adapter switched off)."""
        with adapter_off(self.model):
            entropy, _ = self.per_token(batch, lengths)
            logp = -entropy.astype(mx.float32)
            mx.eval(logp)
        return logp

    def generate(self, prompts: list[list[int]], greedy: bool) -> list[list[int]]:
        """Each prompt's answer tokens, its end-of-turn token included when it stopped
        there (the answer must learn to stop): mlx-lm's ``BatchGenerator``."""
        self.model.eval()
        generator = BatchGenerator(
            self.model,
            max_tokens=self.params.max_completion_tokens,
            stop_tokens=[[t] for t in self.tokenizer.eos_token_ids],
            sampler=make_sampler(temp=0.0) if greedy else self.sampler,
        )
        try:
            uids = generator.insert(prompts, [self.params.max_completion_tokens] * len(prompts))
            answers = {uid: [] for uid in uids}
            while responses := generator.next_generated():
                for response in responses:
                    answers[response.uid].append(response.token)
        finally:
            generator.close()
            self.model.train()
        return [answers[uid] for uid in uids]
