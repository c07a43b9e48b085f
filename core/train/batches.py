"""The loop's batches: rows of similar length together, little padding, any epoch's order
drawn again from its seed; and the validation batch's size.

mlx-lm's ``iterate_batches`` means to sort rows by length before cutting them into batches,
but over its ``CacheDataset`` it sorts by the length of each raw row (a chat row's dict: its
number of keys), so rows of any length share a batch and the short ones are padded to the
long. Sorting by tokens, as here, cuts the demo set's batches from 62.1 to 58.1 columns on
average (padding 14.2% -> 8.3%; docs/benchmarks.md). The order of the batches is mlx-lm's:
a permutation drawn from ``seed`` (none: in order), and each rank takes every ``ranks``-th
row of every batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

import mlx.core as mx
import numpy as np

# the batch width's rounding; LORA_STUDIO_PAD_TO overrides it to measure others
PAD_TO = int(os.environ.get("LORA_STUDIO_PAD_TO") or 8)


def validation_batch(batch_size: int, examples: int, ranks: int) -> int:
    """The validation batch: the training batch, or fewer when the validation set is
    smaller, split evenly over ranks (mlx-lm requires it)."""
    batch = min(batch_size, examples)
    return max(batch - batch % ranks, ranks)


def batch_order(
    count: int,
    length: Callable[[int], int],
    batch_size: int,
    seed: int | None = None,
    comm_group=None,
) -> list[list[int]]:
    """The rows of each batch, in the order the batches are trained: rows sorted by
    ``length`` and cut into whole batches, their order drawn from ``seed``; this rank's
    share of each."""
    if count < batch_size:
        raise ValueError(f"the dataset has {count} rows, fewer than the batch ({batch_size})")
    rank, ranks = (comm_group.rank(), comm_group.size()) if comm_group else (0, 1)
    if batch_size % ranks:
        raise ValueError("the batch size must be divisible by the number of ranks")
    order = sorted(range(count), key=length)
    batches = [
        order[start + rank : start + batch_size : ranks]
        for start in range(0, count - batch_size + 1, batch_size)
    ]
    if seed is not None:
        np.random.seed(seed)
        batches = [batches[i] for i in np.random.permutation(len(batches))]
    return batches


def padded(
    sequences: Sequence[Sequence[int]], offsets: Sequence[int], max_seq_length: int
) -> tuple[mx.array, mx.array]:
    """``sequences`` cut to ``max_seq_length`` and padded to ``1 + PAD_TO * k`` columns
    (the ``1 +`` keeps the target after each row's last token, which mlx-lm's loss counts),
    and mlx-lm's (offset, length) per row. A smaller ``PAD_TO`` wastes less compute on
    padding and costs more compiled shapes (docs/benchmarks.md says how 8 was chosen)."""
    lengths = [min(len(s), max_seq_length) for s in sequences]
    width = min(1 + PAD_TO * math.ceil(max(lengths) / PAD_TO), max_seq_length)
    batch = np.zeros((len(sequences), width), np.int32)
    for row, (tokens, length) in enumerate(zip(sequences, lengths, strict=True)):
        batch[row, :length] = tokens[:length]
    return mx.array(batch), mx.array(list(zip(offsets, lengths, strict=True)))


def row(dataset, index: int) -> tuple[list[int], int]:
    """An mlx-lm dataset's row as (tokens, offset of the first counted target)."""
    item = dataset[index]
    return item if isinstance(item, tuple) else (item, 0)


def longer_rows(dataset, max_seq_length: int) -> list[int]:
    """The lengths of the rows training cuts to ``max_seq_length``."""
    lengths = (len(row(dataset, i)[0]) for i in range(len(dataset)))
    return [n for n in lengths if n > max_seq_length]


def sft_order(dataset, batch_size: int, seed: int | None = None, comm_group=None):
    """``batch_order`` of an mlx-lm dataset's rows by their tokens."""
    return batch_order(
        len(dataset), lambda i: len(row(dataset, i)[0]), batch_size, seed, comm_group
    )


def sft_batch(dataset, indices: list[int], max_seq_length: int) -> tuple[mx.array, mx.array]:
    """mlx-lm's (batch, lengths) for the rows ``indices``."""
    tokens, offsets = zip(*(row(dataset, i) for i in indices), strict=True)
    return padded(tokens, offsets, max_seq_length)


def sft_batches(
    *,
    dataset,
    batch_size: int,
    max_seq_length: int,
    seed: int | None = None,
    comm_group=None,
    start: int = 0,
) -> Iterator[tuple[mx.array, mx.array]]:
    """One epoch of (batch, lengths), from its ``start``-th batch (a resumed run skips
    those already trained without building them)."""
    for indices in sft_order(dataset, batch_size, seed, comm_group)[start:]:
        yield sft_batch(dataset, indices, max_seq_length)
