"""The frozen layers' outputs kept (core.train.frozen) and the batches sorted by tokens
(core.train.batches): same numbers as running the whole model, less work.

Real toy llama (4 layers), real mlx-lm datasets and LoRA layers, real worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner import trainer
from mlx_lm.tuner.datasets import CacheDataset, create_dataset

from core.train.batches import sft_batches, sft_order
from core.train.frozen import MEMORY_SHARE, FrozenRows, cut, frozen_loss, kept_bytes
from core.train.loss import choose_loss
from tests.helpers import colour_rows, write_jsonl
from tests.test_loss import lora_model


def dataset_for(tokenizer, rows=None) -> CacheDataset:
    config = SimpleNamespace(mask_prompt=True)
    return CacheDataset(create_dataset(rows or colour_rows(24), tokenizer, config))


def test_kept_outputs_give_the_whole_models_loss_and_gradients(toy_model):
    model, tokenizer = lora_model(toy_model, layers=2)
    dataset = dataset_for(tokenizer)
    loss, rows = frozen_loss(model, dataset, max_seq_length=2048)
    assert rows.stack.first == 2  # layers 0 and 1 are frozen
    whole = choose_loss(model, dataset, max_seq_length=2048)
    ours, theirs = nn.value_and_grad(model, loss.fn), nn.value_and_grad(model, whole.fn)
    plain = sft_batches(dataset=dataset, batch_size=4, max_seq_length=2048, seed=0)
    kept = rows.batches(dataset=dataset, batch_size=4, max_seq_length=2048, seed=0)
    for (batch, lengths), (same, same_lengths, hidden) in zip(plain, kept, strict=True):
        assert mx.array_equal(batch, same) and mx.array_equal(lengths, same_lengths)
        assert hidden.shape == (*batch[:, :-1].shape, 64)
        (want, tokens), want_grad = theirs(model, batch, lengths)
        (got, got_tokens), grad = ours(model, batch, lengths, hidden)
        assert got_tokens.item() == tokens.item()
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
        for (name, a), (_, b) in zip(tree_flatten(want_grad), tree_flatten(grad), strict=True):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-3, atol=1e-6, err_msg=name)


def test_each_batch_runs_the_frozen_layers_once(toy_model):
    model, tokenizer = lora_model(toy_model, layers=2)
    dataset = dataset_for(tokenizer)
    _, rows = frozen_loss(model, dataset, max_seq_length=2048)
    counted = []
    original = rows._before
    rows._before = lambda inputs: counted.append(inputs.shape) or original(inputs)
    first = {}
    for epoch in range(3):  # each epoch reorders the same batches
        for batch, _, hidden in rows.batches(
            dataset=dataset, batch_size=4, max_seq_length=2048, seed=epoch
        ):
            key = np.array(batch).tobytes()
            assert first.setdefault(key, hidden) is hidden  # the kept array, reused
    assert len(counted) == len(dataset) // 4 == len(first)
    # a resumed run skips the batches already trained without computing them
    skipped = FrozenRows(rows.stack)
    skipped._before = lambda inputs: counted.append(inputs.shape) or original(inputs)
    list(skipped.batches(dataset=dataset, batch_size=4, max_seq_length=2048, seed=0, start=4))
    assert len(counted) == len(dataset) // 4 + len(dataset) // 4 - 4


def test_no_kept_outputs_when_every_layer_trains_or_the_model_does_not_cut(toy_model):
    model, tokenizer = lora_model(toy_model, layers=-1)
    assert cut(model) is None  # nothing is frozen
    model, tokenizer = lora_model(toy_model, layers=2)
    body = model.model
    scaled = type(body).__call__

    class ScaledEmbeddings(type(body)):
        """Embeddings scaled inside the body's call, as Gemma's are: the cut would miss it."""

        def __call__(self, inputs, *args, **kwargs):
            return scaled(self, inputs, *args, input_embeddings=self.embed_tokens(inputs) * 4)

    body.__class__ = ScaledEmbeddings
    assert cut(model) is None


def test_kept_outputs_that_would_crowd_the_memory_are_not_kept(toy_model, monkeypatch):
    """The outputs are kept only within MEMORY_SHARE of the memory free: just below the
    line they are not, just above they are; their size is every row's tokens times the
    hidden width in float32, counted here from the tokens themselves."""
    model, tokenizer = lora_model(toy_model, layers=2)
    dataset = dataset_for(tokenizer)
    tokens = sum(len(dataset[i][0]) for i in range(len(dataset)))
    needed = tokens * model.args.hidden_size * 4
    assert kept_bytes(model, [dataset], 2048) == needed
    line_gb = needed / MEMORY_SHARE / 1e9
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", f"{line_gb * 0.98:.12f}")
    assert frozen_loss(model, dataset, max_seq_length=2048) is None
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", f"{line_gb * 1.02:.12f}")
    loss, rows = frozen_loss(model, dataset, max_seq_length=2048)
    assert loss.name == "completion_only" and rows.stack.first == 2


def test_batches_group_rows_of_similar_length(toy_model):
    _, tokenizer = lora_model(toy_model)
    rows = colour_rows(40)
    for i, row in enumerate(rows):  # answers of 1 to 20 extra words
        row["messages"][-1]["content"] += " and more" * (i * 7 % 20)  # in no order
    dataset = dataset_for(tokenizer, rows)

    def padding(batches) -> int:
        """Pad cells at the studio's rounding (1 + 8k columns), whatever a batch's width."""
        cells = [(1 + 8 * -(-int(le[:, 1].max().item()) // 8), le) for _, le in batches]
        return sum(len(le) * width - int(le[:, 1].sum().item()) for width, le in cells)

    ours = padding(sft_batches(dataset=dataset, batch_size=4, max_seq_length=2048))
    theirs = padding(trainer.iterate_batches(dataset, 4, 2048))
    assert ours < 0.5 * theirs  # mlx-lm's CacheDataset sorts by the raw row, not its tokens
    lengths = [len(dataset[i][0]) for i in range(len(dataset))]
    for indices in sft_order(dataset, 4, seed=0):
        assert max(lengths[i] for i in indices) - min(lengths[i] for i in indices) <= 6


def run_worker(toy_model, data, out, frozen: bool) -> list[dict]:
    command = [sys.executable, "-m", "core.train.worker", "--model", str(toy_model)]
    command += ["--data", str(data), "--output", str(out), "--lora-layers", "2"]
    command += ["--epochs", "2", "--learning-rate", "5e-3", "--samples", "0"]
    env = os.environ | {"LORA_STUDIO_FROZEN": "1" if frozen else "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_run_with_kept_outputs_trains_the_same_adapter(toy_model, tmp_path):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(48))
    runs = {
        frozen: run_worker(toy_model, data, tmp_path / f"frozen-{frozen}", frozen)
        for frozen in (True, False)
    }
    starts = {frozen: events[0] for frozen, events in runs.items()}
    assert starts[True]["frozen_layers"] == 2 and starts[False]["frozen_layers"] == 0
    checks = {
        frozen: [e["loss"] for e in events if e["type"] == "validation"]
        for frozen, events in runs.items()
    }
    assert len(checks[True]) >= 2 and checks[True][-1] < checks[True][0] - 0.5  # it learned
    np.testing.assert_allclose(checks[True], checks[False], rtol=1e-4)
    weights = {
        frozen: mx.load(str(tmp_path / f"frozen-{frozen}" / "adapters.safetensors"))
        for frozen in runs
    }
    for name, value in weights[False].items():
        np.testing.assert_allclose(np.array(weights[True][name]), np.array(value), atol=1e-4)
