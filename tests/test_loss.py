"""The completion-only loss, the padding and the native JIT: same numbers, less work.

Real models (the toy llama), real mlx-lm batches, real training processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner import trainer
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.utils import linear_to_lora_layers

from core.machine.jit import native_jit
from core.train import batches
from core.train.loss import COMPLETION, DEFAULT, choose_loss, target_window
from tests.helpers import colour_rows


def lora_model(path, keys=("self_attn.q_proj", "self_attn.v_proj"), layers=-1):
    """The model with LoRA layers whose B is not zero (so every gradient is)."""
    model, tokenizer = load(str(path))
    model.freeze()
    config = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": list(keys)}
    linear_to_lora_layers(model, layers, config)
    mx.random.seed(0)
    for _, module in model.named_modules():
        if "lora_b" in module:
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    return model, tokenizer


def rows_for(kind: str) -> list[dict]:
    chats = colour_rows(24)
    if kind == "chat":
        return chats
    return [{"text": " ".join(m["content"] for m in row["messages"])} for row in chats]


def assert_same_loss_and_gradients(model, loss, dataset, batch_size=4):
    value_and_grad = {
        name: nn.value_and_grad(model, fn)
        for name, fn in (("default", trainer.default_loss), ("ours", loss.fn))
    }
    for batch, lengths in trainer.iterate_batches(dataset, batch_size, 2048, seed=0):
        (ref, ref_tokens), ref_grad = value_and_grad["default"](model, batch, lengths)
        (ours, tokens), grad = value_and_grad["ours"](model, batch, lengths)
        assert tokens.item() == ref_tokens.item()
        np.testing.assert_allclose(ours.item(), ref.item(), rtol=1e-5)
        pairs = zip(tree_flatten(ref_grad), tree_flatten(grad), strict=True)
        for (name, want), (_, got) in pairs:
            np.testing.assert_allclose(
                np.array(got), np.array(want), rtol=1e-3, atol=1e-6, err_msg=name
            )


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_completion_only_loss_equals_mlx_lms_default_loss(toy_model, kind):
    model, tokenizer = lora_model(toy_model)
    config = SimpleNamespace(mask_prompt=kind == "chat")
    dataset = CacheDataset(create_dataset(rows_for(kind), tokenizer, config))
    loss = choose_loss(model, dataset, max_seq_length=2048)
    assert loss.name == COMPLETION
    assert_same_loss_and_gradients(model, loss, dataset)


def test_the_window_fits_the_longest_target_span(toy_model):
    _, tokenizer = load(str(toy_model))
    rows = colour_rows(8)
    masked = CacheDataset(create_dataset(rows, tokenizer, SimpleNamespace(mask_prompt=True)))
    whole = CacheDataset(create_dataset(rows, tokenizer, SimpleNamespace(mask_prompt=False)))
    spans = [len(tokens) - offset + 1 for tokens, offset in (masked[i] for i in range(8))]
    assert target_window(masked, 2048) == max(spans)  # the answer and what follows it
    assert target_window(whole, 2048) == max(len(whole[i][0]) for i in range(8))
    assert target_window(whole, 10) == 10  # truncation counts


def test_a_model_whose_head_does_more_falls_back_to_the_default_loss(toy_model):
    model, tokenizer = lora_model(toy_model)
    plain = type(model).__call__

    class SoftCapped(type(model)):
        """A head with a logit soft-cap, as some families have: body + head is not the model."""

        def __call__(self, inputs, *args, **kwargs):
            return 30 * mx.tanh(plain(self, inputs, *args, **kwargs) / 30)

    model.__class__ = SoftCapped
    dataset = CacheDataset(create_dataset(colour_rows(8), tokenizer, SimpleNamespace()))
    assert choose_loss(model, dataset, max_seq_length=2048).name == DEFAULT


@pytest.mark.parametrize("pad_to", [1, 4, 8])
def test_padded_batches_keep_the_loss(toy_model, pad_to, monkeypatch):
    monkeypatch.setattr(batches, "PAD_TO", pad_to)
    model, tokenizer = lora_model(toy_model)
    config = SimpleNamespace(mask_prompt=True)
    dataset = CacheDataset(create_dataset(colour_rows(24), tokenizer, config))
    for indices in batches.sft_order(dataset, 4, seed=0):
        short, lengths = batches.sft_batch(dataset, indices, 2048)
        longest = int(lengths[:, 1].max().item())
        assert short.shape[1] == 1 + pad_to * -(-longest // pad_to)
        wide = mx.pad(short, [(0, 0), (0, 32)])  # mlx-lm pads to 1 + 32k
        want, tokens = trainer.default_loss(model, wide, lengths)
        got, cut_tokens = trainer.default_loss(model, short, lengths)
        assert tokens.item() == cut_tokens.item()  # the target after each row still counts
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)


def run_worker(toy_model, data, out, env) -> list[dict]:
    command = [sys.executable, "-m", "core.train.worker", "--model", str(toy_model)]
    command += ["--data", str(data), "--output", str(out), "--lora-layers", "-1", "--epochs", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU backend's JIT")
def test_native_jit_kernels_are_private_and_train_the_same(tmp_path, toy_model, colour_dataset):
    cache = tmp_path / "cache"
    env = native_jit({**os.environ, "LORA_STUDIO_NATIVE_JIT": "1"}, cache)
    if env.get("TMPDIR") is None:
        pytest.skip("no g++ here: MLX builds no JIT kernels")
    shim = Path(env["PATH"].split(os.pathsep)[0]) / "g++"
    assert shim.is_relative_to(cache / "jit-native") and os.access(shim, os.X_OK)
    assert Path(env["TMPDIR"]).is_relative_to(cache / "jit-native")
    native = run_worker(toy_model, colour_dataset, tmp_path / "a", env)
    built = list((cache / "jit-native").rglob("*.so"))
    assert built, "no kernel was built in the private cache"
    off = {**os.environ, "LORA_STUDIO_NATIVE_JIT": "0"}
    assert native_jit(off, cache) == off
    stock = run_worker(toy_model, colour_dataset, tmp_path / "b", off)
    losses = [
        [e["loss"] for e in events if e["type"] in ("progress", "validation")]
        for events in (native, stock)
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert next(e for e in native if e["type"] == "start")["loss"] == COMPLETION
