"""The frozen layers' outputs, computed once per batch of rows and kept.

LoRA on the last N layers (the studio's default: 8) leaves the layers before them frozen, so
a row's hidden state after them never changes during a run. A training step still runs the
whole model forward (the backward pass stops at the first adapted layer): on the demo model,
8 of 30 layers adapted, 22 layers of every step's forward pass are the same work done again
at each epoch and each validation. ``FrozenRows`` runs them the first time a batch is met
and keeps the result; later steps and validations start at the first adapted layer. A batch
always holds the same rows (``batches.batch_order`` only reorders whole batches), so a kept
block is reused exactly. Same numbers as the whole model (tested); it costs one hidden
vector per token of the data (37 MB for the demo set), which the memory plan counts.

It needs a model built the common way, ``model.model`` with ``embed_tokens``, ``layers``
called as ``layer(h, mask, cache=None)`` and ``norm``, which a probe checks against the model
itself; any other, and a run that adapts every layer, trains the whole model each step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask

from core.machine.memory import available_memory_gb
from core.train.batches import row, sft_batch, sft_order
from core.train.loss import COMPLETION, Loss, completion_loss, head_entropy, split, target_window

# the kept outputs may take at most this share of the memory the machine has free
MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class Stack:
    """A model's body cut before its first adapted layer."""

    body: nn.Module
    first: int

    def before(self, inputs: mx.array) -> mx.array:
        """The frozen layers' output (the hidden state the first adapted layer takes)."""
        hidden = self.body.embed_tokens(inputs)
        return self._through(self.body.layers[: self.first], hidden)

    def after(self, hidden: mx.array) -> mx.array:
        """The body's output from the frozen layers' output."""
        return self.body.norm(self._through(self.body.layers[self.first :], hidden))

    @staticmethod
    def _through(layers, hidden: mx.array) -> mx.array:
        mask = create_attention_mask(hidden, None)
        for layer in layers:
            hidden = layer(hidden, mask, cache=None)
        return hidden


def _trains(module: nn.Module) -> bool:
    return bool(tree_flatten(module.trainable_parameters()))


def cut(model: nn.Module) -> Stack | None:
    """``model``'s body cut before its first adapted layer, when the cut is exact and leaves
    frozen layers before it; else None. Call it once the LoRA layers are in place."""
    body = getattr(model, "model", None)
    if not all(hasattr(body, part) for part in ("embed_tokens", "layers", "norm")):
        return None
    first = next((i for i, layer in enumerate(body.layers) if _trains(layer)), 0)
    if first == 0 or _trains(body.embed_tokens):
        return None
    if any(getattr(layer, "use_sliding", False) for layer in body.layers):
        return None  # layers with their own masks
    stack = Stack(body, first)
    probe = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    training = model.training
    model.eval()  # no dropout: both sides must see the same adapter
    try:
        whole, parts = body(probe), stack.after(stack.before(probe))
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    finally:
        model.train(training)
    if whole.shape != parts.shape or not mx.allclose(whole, parts, rtol=1e-4, atol=1e-4):
        return None
    return stack


@dataclass
class FrozenRows:
    """The loop's SFT batches with the frozen layers' output of each: ``(batch, lengths,
    hidden)``, ``hidden`` computed the first time the batch is met and kept."""

    stack: Stack
    _kept: dict[tuple[int, tuple[int, ...]], mx.array] = field(default_factory=dict)

    def __post_init__(self):
        self._before = mx.compile(self.stack.before)

    def batches(
        self,
        *,
        dataset,
        batch_size: int,
        max_seq_length: int,
        seed: int | None = None,
        comm_group=None,
        start: int = 0,
    ) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
        """``batches.sft_batches``, each with its kept hidden states."""
        for indices in sft_order(dataset, batch_size, seed, comm_group)[start:]:
            batch, lengths = sft_batch(dataset, indices, max_seq_length)
            key = (id(dataset), tuple(indices))
            if key not in self._kept:
                self._kept[key] = self._before(batch[:, :-1])
                mx.eval(self._kept[key])
            yield batch, lengths, self._kept[key]


def kept_bytes(model: nn.Module, datasets: Iterable, max_seq_length: int) -> int:
    """What the kept outputs of ``datasets`` will take (their tokens, padding aside)."""
    norm = model.model.norm.weight  # float even in a quantized model: the hidden width and type
    tokens = sum(
        min(len(row(data, i)[0]), max_seq_length) for data in datasets for i in range(len(data))
    )
    return tokens * norm.shape[-1] * norm.itemsize


def frozen_loss(model: nn.Module, *datasets, max_seq_length: int) -> tuple[Loss, FrozenRows] | None:
    """The completion-only loss from kept frozen outputs, and the batches that carry them;
    None when the model does not cut, when the outputs would take more than MEMORY_SHARE of
    the memory free, or with LORA_STUDIO_FROZEN=0 (to measure without them)."""
    if os.environ.get("LORA_STUDIO_FROZEN") == "0":
        return None
    stack, parts = cut(model), split(model)
    if stack is None or parts is None:
        return None
    free_gb = available_memory_gb()
    if free_gb and kept_bytes(model, datasets, max_seq_length) > MEMORY_SHARE * free_gb * 1e9:
        return None
    window = max(target_window(data, max_seq_length) for data in datasets)
    body = lambda inputs, hidden: stack.after(hidden)  # noqa: E731 - the loss's body
    fn = completion_loss(window, body, head_entropy(parts[1]))
    return Loss(COMPLETION, fn), FrozenRows(stack)
