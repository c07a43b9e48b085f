"""LoRA and DoRA layers on a base model in memory: the tensors an adapter must set, and the
base's own layers put back. The engine reuses these layers between adapters of one shape."""

from __future__ import annotations


def tensors(model) -> list[str]:
    """The names of every LoRA (and DoRA) tensor in ``model``: what an adapter must set."""
    from mlx.utils import tree_flatten

    names = []
    for name, module in _wrapped(model):
        own = [n for n, _ in tree_flatten(module.parameters()) if not n.startswith("linear.")]
        names += [f"{name}.{n}" for n in own]
    return names


def strip(model) -> None:
    """The base's own layers back in place of LoRA and DoRA layers (mlx-lm's
    ``remove_lora_layers`` knows LoRA's only)."""
    from mlx.utils import tree_unflatten

    wrapped = [(name, module.linear) for name, module in _wrapped(model)]
    if wrapped:
        model.update_modules(tree_unflatten(wrapped))


def _wrapped(model) -> list:
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear | DoRALinear)]
