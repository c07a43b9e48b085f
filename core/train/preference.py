"""Preference training: DPO and ORPO as losses of the one training loop.

A preference row is a prompt with a chosen and a rejected answer. Its batch holds the chosen
answers in its first half and the rejected ones in its second, so both go through the model
in one call, and the losses are computed from each answer's log-probability: the sum over
its own tokens, never the prompt's (the papers' definition).

- DPO (Rafailov et al., 2023) compares the adapter's log-probabilities with the base's. The
  base is the model with the adapter doing nothing, which is what a freshly made adapter does
  (LoRA's B, and DoRA's change of direction, start at zero): so the base's log-probabilities
  are computed once per row by the same model before training (``reference_logps``), kept,
  and each step runs the adapter only. No second model is held in memory.
- ORPO (Hong et al., 2024) needs no reference: the chosen answer's negative log-likelihood
  (per token) plus beta times the log-sigmoid of the log-odds ratio of the two answers'
  per-token probabilities.

Each loss returns ``(loss, pairs, sums)``: the mean over the batch's pairs, the pairs it is a
mean of (the loop weights gradients and reports by it), and the sums of the figures the loop
reports (reward accuracy, margin, ...), which it divides by the pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core import protocol
from core.data.check import DatasetError, Problem
from core.data.scan import Dataset
from core.data.tokens import preference_rows
from core.params import TrainingParams
from core.train.batches import batch_order, padded
from core.train.loop import HEARTBEAT_SECONDS
from core.train.loss import Loss, target_window, token_entropy

# the figures a method reports beside the loss, in the protocol's names
FIGURES = {
    "dpo": ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"),
    "orpo": (
        "reward_accuracy",
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
        "log_odds_ratio",
        "nll",
    ),
}


@dataclass
class PreferenceSet:
    """Tokenized preference rows: (chosen tokens, rejected tokens, offset of the answers),
    and, for DPO, each answer's log-probability under the base (one row per pair)."""

    items: list[tuple[list[int], list[int], int]]
    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def sequences(self) -> Iterator[tuple[list[int], int]]:
        """Every answer as mlx-lm's (tokens, offset) item."""
        for chosen, rejected, offset in self.items:
            yield chosen, offset
            yield rejected, offset

    def length(self, index: int) -> int:
        chosen, rejected, _ = self.items[index]
        return max(len(chosen), len(rejected))


def tokenized(dataset: Dataset, tokenizer, max_seq_length: int) -> tuple[PreferenceSet, ...]:
    """The training and validation splits' pairs, tokenized; refused when a prompt leaves
    its answers no room."""
    sets = {
        f"the {name} split": PreferenceSet(preference_rows(rows, tokenizer))
        for name, rows in (("training", dataset.train), ("validation", dataset.valid))
    }
    check_room(sets, max_seq_length)
    return tuple(sets.values())


def check_room(sets: dict[str, PreferenceSet], max_seq_length: int) -> None:
    """Every row's answers must start within ``max_seq_length``: a prompt that fills it
    leaves nothing to compare."""
    problems = []
    for name, rows in sets.items():
        crowded = [offset for _, _, offset in rows.items if offset >= max_seq_length]
        if crowded:
            problems.append(
                Problem(
                    name,
                    None,
                    f"{len(crowded)} preference row(s) leave their answers no room within "
                    f"max_seq_length = {max_seq_length} (the longest prompt: "
                    f"{max(crowded)} tokens)",
                    "raise --max-seq-length or shorten those prompts",
                )
            )
    if problems:
        raise DatasetError(problems)


def pack(
    dataset: PreferenceSet, indices: list[int], max_seq_length: int
) -> tuple[mx.array, mx.array, mx.array]:
    """One batch: the chosen answers of ``indices`` then their rejected ones, padded to the
    loop's width rounding; (offset, length) per sequence; the reference log-probabilities."""
    rows = [dataset.items[i] for i in indices]
    sequences = [r[0] for r in rows] + [r[1] for r in rows]
    batch, lengths = padded(sequences, [r[2] for r in rows] * 2, max_seq_length)
    reference = dataset.reference[indices] if len(dataset.reference) else np.zeros((len(rows), 2))
    return (
        batch,
        lengths,
        mx.array(np.concatenate([reference[:, 0], reference[:, 1]]).astype(np.float32)),
    )


def iterate_pairs(
    dataset: PreferenceSet,
    batch_size: int,
    max_seq_length: int,
    seed: int | None = None,
    comm_group=None,
    start: int = 0,
) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
    """``batches.sft_batches`` for pairs: by the longer answer, from the ``start``-th batch."""
    for indices in batch_order(len(dataset), dataset.length, batch_size, seed, comm_group)[start:]:
        yield pack(dataset, indices, max_seq_length)


def sequence_logps(per_token: Callable, batch: mx.array, lengths: mx.array):
    """Each answer's summed log-probability over its own tokens, and their count.

    The per-token functions keep mlx-lm's SFT mask (``default_loss``: target j counts when
    ``offset <= j + 1 <= length``), whose last target is the one after the row's last token:
    padding, p(pad | answer + EOS). The papers sum over the answer's own tokens, so the
    length is taken one shorter here (docs/formats.md, "What the losses count")."""
    entropy, counted = per_token(batch, lengths - mx.array([0, 1]))
    counted = counted.astype(mx.float32)
    return -(entropy.astype(mx.float32) * counted).sum(axis=-1), counted.sum(axis=-1)


def _figures(chosen: mx.array, rejected: mx.array, tokens: mx.array, **more) -> dict:
    """Sums over the batch's pairs of what is reported (the loop divides by the pairs)."""
    sums = {
        "tokens": tokens,
        "reward_accuracy": (chosen > rejected).astype(mx.float32).sum(),
        "reward_margin": (chosen - rejected).sum(),
        "chosen_reward": chosen.sum(),
        "rejected_reward": rejected.sum(),
    }
    return sums | {name: value.sum() for name, value in more.items()}


def dpo_loss(per_token: Callable, beta: float, kind: str) -> Callable:
    """DPO's loss on the implicit rewards beta * (log pi(y|x) - log pi_ref(y|x)):
    ``sigmoid``, -log sigmoid(chosen - rejected); ``ipo``, (h - 1 / (2 beta))^2 with h the
    difference of the log-ratios (Azar et al., 2023)."""

    def loss(model, batch, lengths, reference):
        logps, counts = sequence_logps(per_token, batch, lengths)
        pairs = logps.shape[0] // 2
        ratios = logps - reference
        difference = ratios[:pairs] - ratios[pairs:]
        if kind == "ipo":
            losses = (difference - 1 / (2 * beta)) ** 2
        else:
            losses = -nn.log_sigmoid(beta * difference)
        chosen, rejected = beta * ratios[:pairs], beta * ratios[pairs:]
        return losses.mean(), mx.array(pairs), _figures(chosen, rejected, counts.sum())

    return loss


def orpo_loss(per_token: Callable, beta: float) -> Callable:
    """ORPO's loss: the chosen answer's per-token negative log-likelihood plus beta times
    -log sigmoid of the log-odds ratio, odds being p / (1 - p) of the per-token mean
    probability. Its rewards are beta times those mean log-probabilities."""

    def loss(model, batch, lengths, reference):
        logps, counts = sequence_logps(per_token, batch, lengths)
        pairs = logps.shape[0] // 2
        mean = logps / mx.maximum(counts, 1)
        # log(1 - p) near p = 1 is -inf; the mean stays below 0 by a float's width
        log_odds = mean - mx.log1p(-mx.exp(mx.minimum(mean, -1e-6)))
        ratio = log_odds[:pairs] - log_odds[pairs:]
        nll = -mean[:pairs]
        losses = nll - beta * nn.log_sigmoid(ratio)
        chosen, rejected = beta * mean[:pairs], beta * mean[pairs:]
        sums = _figures(chosen, rejected, counts.sum(), log_odds_ratio=ratio, nll=nll)
        return losses.mean(), mx.array(pairs), sums

    return loss


def choose_loss(
    model: nn.Module, params: TrainingParams, *datasets: PreferenceSet
) -> tuple[Loss, Callable]:
    """The method's loss, and the per-token function it is built on (the reference pass
    uses it too). Call it once the LoRA layers are in place."""
    window = max(target_window(d.sequences(), params.max_seq_length) for d in datasets)
    name, per_token = token_entropy(model, window)
    if params.method == "dpo":
        fn = dpo_loss(per_token, params.beta, params.dpo_loss)
    else:
        fn = orpo_loss(per_token, params.beta)
    return Loss(name, fn, FIGURES[params.method]), per_token


def reference_logps(
    model: nn.Module,
    dataset: PreferenceSet,
    per_token: Callable,
    *,
    batch_size: int,
    max_seq_length: int,
    tick: Callable[[int, int], None] = lambda done, total: None,
) -> np.ndarray:
    """The log-probability of each row's chosen and rejected answer under ``model`` as it
    is now: call it before training (and before a checkpoint is loaded), while the adapter
    does nothing. ``tick(batches done, batches)`` after each batch."""
    model.eval()
    # compiled as validation is: at step 0 both then give the very same floats, so the
    # rewards start at exactly 0 and no pair counts as won by rounding
    logps_of = mx.compile(partial(sequence_logps, per_token), inputs=[model.state])
    order = sorted(range(len(dataset)), key=dataset.length)
    starts = range(0, len(order), batch_size)
    found = np.zeros((len(dataset), 2), np.float32)
    for done, start in enumerate(starts, start=1):
        indices = order[start : start + batch_size]
        batch, lengths, _ = pack(dataset, indices, max_seq_length)
        logps, _ = logps_of(batch, lengths)
        values = np.array(logps)
        found[indices, 0], found[indices, 1] = values[: len(indices)], values[len(indices) :]
        tick(done, len(starts))
    model.train()
    return found


def add_reference(
    model: nn.Module,
    per_token: Callable,
    sets: tuple[PreferenceSet, ...],
    params: TrainingParams,
    batch_size: int,
    emit: Callable[[protocol._Message], None],
) -> None:
    """DPO's reference: each row's answers under the base, kept in its set (see
    ``reference_logps``); an activity line every few seconds while it runs."""
    said = time.monotonic()

    def tick(done: int, total: int) -> None:
        nonlocal said
        if time.monotonic() - said >= HEARTBEAT_SECONDS:
            emit(
                protocol.Activity(
                    phase="reference", step=0, total_steps=0, batch=done, batches=total
                )
            )
            said = time.monotonic()

    for rows in sets:
        rows.reference = reference_logps(
            model,
            rows,
            per_token,
            batch_size=batch_size,
            max_seq_length=params.max_seq_length,
            tick=tick,
        )
