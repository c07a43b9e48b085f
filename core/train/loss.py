"""The training loss, computed only where it counts.

mlx-lm's ``default_loss`` projects every position of every row onto the vocabulary and then
multiplies the positions the loss does not count (the prompt, with ``mask_prompt``, and the
padding) by zero. With a 49,152-word vocabulary that projection and its softmax are most of a
step's work, and most of it is thrown away. ``completion_loss`` runs the transformer body,
gathers the hidden states at each row's targets (a fixed-width window from its first target,
so compiled steps keep static shapes) and applies the head and the cross-entropy there only.
The loss, and so the gradients, are the same as ``default_loss``'s to float tolerance.

It needs the model in two parts, the body (``model.model``) and the head (``lm_head``, or the
tied embedding's ``as_linear``), which is how mlx-lm's families are built; a model that is not
(or whose head does more, like a logit soft-cap) is detected by comparing the two parts with
the whole model on a probe, and trains with ``default_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner import trainer

DEFAULT, COMPLETION = "default", "completion_only"


@dataclass(frozen=True)
class Loss:
    """A loss for the training loop, and its name for the ``start`` event.

    ``fn(model, *batch)`` returns mlx-lm's ``(loss, tokens)``, or ``(loss, weight, sums)``
    for a loss that reports more: the loop averages by ``weight`` and reports each of
    ``figures`` as its sum divided by the weight (``sums["tokens"]`` counts the tokens)."""

    name: str
    fn: Callable
    figures: tuple[str, ...] = ()
    # what validation computes instead of ``fn``, uncompiled (GRPO: minus the held-out
    # reward); None: ``fn`` itself
    validation: Callable | None = None


MLX_LM_LOSS = Loss(DEFAULT, trainer.default_loss)


def _head(model: nn.Module) -> Callable[[mx.array], mx.array] | None:
    # looked up at each call: LoRA may wrap the head after this was chosen
    if "lm_head" in model:
        return lambda hidden: model.lm_head(hidden)
    body = model.model
    if getattr(getattr(model, "args", None), "tie_word_embeddings", False) and hasattr(
        body, "embed_tokens"
    ):
        return lambda hidden: body.embed_tokens.as_linear(hidden)
    return None


def split(model: nn.Module) -> tuple[Callable, Callable] | None:
    """(body, head) of ``model``, when the two compose back into the model; else None."""
    body = getattr(model, "model", None)
    if not isinstance(body, nn.Module):
        return None
    head = _head(model)
    if head is None:
        return None
    probe = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    try:
        whole, parts = model(probe), head(body(probe))
    except (TypeError, ValueError):
        return None
    if whole.shape != parts.shape or not mx.allclose(whole, parts, rtol=1e-4, atol=1e-4):
        return None
    return (lambda inputs: model.model(inputs)), head


def target_window(dataset: Iterable, max_seq_length: int) -> int:
    """The widest span of targets over ``dataset``'s rows (mlx-lm's (tokens, offset) items),
    after truncation: the window each row's targets fit in."""
    widest = 1
    for item in dataset:
        tokens, offset = item if isinstance(item, tuple) else (item, 0)
        length = min(len(tokens), max_seq_length)
        widest = max(widest, length - max(offset - 1, 0))
    return widest


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """``nn.losses.cross_entropy`` written out of element-wise ops and reductions.

    On the CPU, MLX's logsumexp primitive evaluates ``exp`` one float at a time (with a libm
    call per multiply-add in builds without FMA); written like this, ``mx.compile`` fuses the
    exp into a JIT-built kernel instead: measured 7% faster per demo step (13% with the
    native JIT of ``core.machine.jit``). Equal to float tolerance."""
    top = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    logsumexp = mx.log(mx.exp(logits - top).sum(axis=-1)) + top.squeeze(-1)
    return logsumexp - mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)


def head_entropy(head: Callable) -> Callable:
    """``(hidden, targets) -> cross-entropy of head(hidden)``: on the CPU written out (see
    ``cross_entropy``), elsewhere MLX's own."""
    entropy = cross_entropy if mx.default_device() == mx.cpu else nn.losses.cross_entropy
    return lambda hidden, targets: entropy(head(hidden), targets)


def completion_entropy(window: int, body: Callable, entropy: Callable) -> Callable:
    """``(batch, lengths, *more) -> (cross-entropy, counted)`` at each row's ``window``
    positions from its first target: the head and its softmax where the loss counts only.
    ``body(inputs, *more)`` gives the hidden states (``more``: what a batch carries beside
    its tokens, like ``core.train.frozen``'s kept outputs)."""

    def per_token(batch, lengths, *more):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        width = targets.shape[1]
        hidden = body(inputs, *more)
        # target j of a row counts when offset <= j + 1 <= length (default_loss's mask)
        first = mx.maximum(lengths[:, 0:1] - 1, 0)
        positions = first + mx.arange(window)
        counted = (positions <= lengths[:, 1:] - 1) & (positions < width)
        positions = mx.minimum(positions, width - 1)
        picked = mx.take_along_axis(hidden, positions[..., None], axis=1)
        chosen = mx.take_along_axis(targets, positions, axis=1)
        return entropy(picked, chosen), counted

    return per_token


def full_entropy(model: nn.Module) -> Callable:
    """``completion_entropy`` for a model that does not split: ``default_loss``'s
    cross-entropy and mask, over the whole vocabulary at every position."""

    def per_token(batch, lengths):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        steps = mx.arange(1, targets.shape[1] + 1)
        counted = (steps >= lengths[:, 0:1]) & (steps <= lengths[:, 1:])
        return nn.losses.cross_entropy(model(inputs), targets), counted

    return per_token


def token_entropy(model: nn.Module, window: int) -> tuple[str, Callable]:
    """The loss's name and its per-token function: at the counted positions only when the
    model splits into body and head, else over every position."""
    parts = split(model)
    if parts is None:
        return DEFAULT, full_entropy(model)
    body, head = parts
    return COMPLETION, completion_entropy(window, body, head_entropy(head))


def completion_loss(window: int, body: Callable, entropy: Callable) -> Callable:
    """``default_loss`` with the head and cross-entropy at the counted positions only."""
    per_token = completion_entropy(window, body, entropy)

    def loss(model, batch, lengths, *more):
        ce, counted = per_token(batch, lengths, *more)
        ntoks = counted.sum()
        return (ce * counted).astype(mx.float32).sum() / ntoks, ntoks

    return loss


def choose_loss(model: nn.Module, *datasets: Iterable, max_seq_length: int) -> Loss:
    """The completion-only loss when the model splits into body and head; mlx-lm's
    ``default_loss`` otherwise. Call it once the LoRA layers are in place."""
    parts = split(model)
    if parts is None:
        return MLX_LM_LOSS
    body, head = parts
    window = max(target_window(data, max_seq_length) for data in datasets)
    return Loss(COMPLETION, completion_loss(window, body, head_entropy(head)))
