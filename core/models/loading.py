"""A base model loaded as the studio uses it: ``mlx_lm.load``, then mended where an mlx-lm
family cannot do what the studio asks of every family.

Mended here (each found by the family tests, tests/test_families.py):

- **A batch's padding mask in 5-D attention** (mlx-lm 0.32's ``gemma2``): its attention
  reshapes the queries to (batch, kv heads, repeats, length, head) when heads share keys, and
  adds the mask as given. Batched generation (samples, evaluation) gives a (batch, 1, length,
  length) mask, which then lines up the batch with the kv heads: an error for a batch of 3
  (``broadcast_shapes (3,1,L,L) and (3,2,2,L,L)``), and for a batch as large as the kv heads
  a mask applied to the wrong rows without an error. The mended attention gives the mask its
  missing axis first. Training is not touched: its masks are "causal" or 2-D.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

# mlx-lm modules whose attention has 5-D scores when heads share keys
FIVE_DIM_ATTENTION = ("mlx_lm.models.gemma2", "mlx_lm.models.phi3small")


def load_model(path: str | Path, **kwargs):
    """``mlx_lm.load(path, **kwargs)``, mended (see the module's docstring)."""
    from mlx_lm import load

    model, tokenizer = load(str(path), **kwargs)
    mend_batched_masks(model)
    return model, tokenizer


def mend_batched_masks(model: nn.Module) -> int:
    """Give the 5-D attentions of ``model`` a batch mask they can broadcast; the count."""
    mended = 0
    for _, module in model.named_modules():
        cls = type(module)
        if cls.__module__ in FIVE_DIM_ATTENTION and getattr(module, "repeats", 1) > 1:
            module.__class__ = _with_mask_axis(cls)
            mended += 1
    return mended


_MENDED: dict[type, type] = {}


def _with_mask_axis(cls: type) -> type:
    """``cls`` whose call expands a (batch, 1, L, S) mask to (batch, 1, 1, L, S)."""
    if cls not in _MENDED:

        def __call__(self, x, mask=None, cache=None):
            if isinstance(mask, mx.array) and mask.ndim == 4:
                mask = mx.expand_dims(mask, 2)
            return cls.__call__(self, x, mask=mask, cache=cache)

        _MENDED[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
    return _MENDED[cls]
