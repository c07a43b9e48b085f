"""The loop's batches: mlx-lm's, with less padding, and the validation batch's size."""

from __future__ import annotations

import os
from collections.abc import Iterator

from mlx_lm.tuner import trainer

# the batch width's rounding; LORA_STUDIO_PAD_TO overrides it to measure others
PAD_TO = int(os.environ.get("LORA_STUDIO_PAD_TO") or 8)


def validation_batch(batch_size: int, examples: int, ranks: int) -> int:
    """The validation batch: the training batch, or fewer when the validation set is
    smaller, split evenly over ranks (mlx-lm requires it)."""
    batch = min(batch_size, examples)
    return max(batch - batch % ranks, ranks)


def trimmed(batches: Iterator, pad_to: int | None = None) -> Iterator:
    """mlx-lm's batches, with the padding beyond ``1 + pad_to * ceil(longest / pad_to)``
    cut off (mlx-lm pads to that with ``pad_to`` 32). The ``1 +`` keeps the target after each
    row's last token, which mlx-lm's loss counts. Padding only adds masked columns, so the
    loss is unchanged; a smaller ``pad_to`` wastes less compute on them and costs more
    compiled shapes (see docs/benchmarks.md for how PAD_TO was chosen)."""
    pad_to = pad_to or PAD_TO
    for batch, lengths in batches:
        longest = lengths[:, 1].max().item()
        width = 1 + pad_to * -(-longest // pad_to)
        yield (batch[:, :width] if width < batch.shape[1] else batch), lengths


def sft_batches(**kwargs) -> Iterator:
    """mlx-lm's batches (``iterate_batches``'s arguments), trimmed."""
    return trimmed(trainer.iterate_batches(**kwargs))
