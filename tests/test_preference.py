"""Preference training: DPO and ORPO in the one training loop, on the toy llama.

The losses are checked against the papers' formulas written here from per-token
log-probabilities of mlx-lm's own model; the runs are real worker processes, killed with
real signals.
"""

from __future__ import annotations

import json
import math
import random

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from core import protocol
from core.adapters.store import AdapterMetadata
from core.data.check import DatasetError
from core.data.scan import load_dataset
from core.data.tokens import preference_rows
from core.errors import StudioError
from core.params import TrainingParams
from core.settings import Settings
from core.train import preference
from core.train.service import TrainingService
from tests.helpers import colour_preferences, colour_rows, lora_studio, sigkill_at, write_jsonl
from tests.test_loss import lora_model

# 60 rows: 48 to train (12 steps an epoch at batch 4), 12 to validate; checkpoints every 5
DPO = dict(
    method="dpo",
    beta=0.1,
    learning_rate=1e-3,
    epochs=2,
    lora_layers=-1,
    batch_size=4,
    eval_every=4,
    save_every=5,
    seed=3,
)


def validations(events) -> list[tuple]:
    return [
        (e.step, round(e.loss, 4), round(e.reward_accuracy, 4), round(e.reward_margin, 4))
        for e in events
        if isinstance(e, protocol.Validation)
    ]


def adapter_weights(settings: Settings, adapter_id: str) -> dict[str, np.ndarray]:
    loaded = mx.load(str(settings.adapters / adapter_id / "adapters.safetensors"))
    return {name: np.array(value) for name, value in loaded.items()}


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, toy_model):
    """The DPO run, never interrupted: (settings, adapter id, its events, the data)."""
    home = tmp_path_factory.mktemp("dpo")
    settings = Settings.from_env(home).ensure()
    data = write_jsonl(home / "prefs.jsonl", colour_preferences(60))
    run = TrainingService(settings).start(toy_model, data, TrainingParams(**DPO))
    events = list(run.follow(timeout=240))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    return settings, run.id, events, data


# -- the losses against the papers' formulas -------------------------------------------------


def answer_logps(model, sequences):
    """Each answer's summed log p over its own tokens, and its token count, computed row by
    row without padding or masks: for token t >= offset, log p(tokens[t] | tokens[:t])."""
    sums, counts = [], []
    for tokens, offset in sequences:
        logits = model(mx.array(tokens)[None, :-1]).astype(mx.float32)[0]
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = [logp[t - 1, tokens[t]] for t in range(offset, len(tokens))]
        sums.append(mx.stack(picked).sum())
        counts.append(len(picked))
    return mx.stack(sums), mx.array(counts, mx.float32)


def paper_dpo(beta: float, kind: str, sequences):
    def loss(model, batch, lengths, reference):
        logps, _ = answer_logps(model, sequences)
        n = logps.shape[0] // 2
        h = (logps[:n] - reference[:n]) - (logps[n:] - reference[n:])
        if kind == "ipo":  # Azar et al. 2023, eq. 17: (h - 1/(2 tau))^2
            return ((h - 1 / (2 * beta)) ** 2).mean()
        return -mx.log(mx.sigmoid(beta * h)).mean()  # Rafailov et al. 2023, eq. 7

    return loss


def paper_orpo(beta: float, sequences):
    def loss(model, batch, lengths, reference):
        logps, counts = answer_logps(model, sequences)
        n = logps.shape[0] // 2
        mean = logps / counts  # log P(y|x) normalized by length (Hong et al. 2024, eq. 1)
        odds = mean - mx.log(1 - mx.exp(mean))  # log odds(y|x)
        l_or = -mx.log(mx.sigmoid(odds[:n] - odds[n:]))  # eq. 7
        return (-mean[:n] + beta * l_or).mean()  # eq. 6: L_SFT + lambda L_OR

    return loss


@pytest.fixture(scope="module")
def pairs(toy_model):
    """The toy model with a non-zero adapter, and one batch of 4 pairs (two forms)."""
    model, tokenizer = lora_model(toy_model)
    rows = colour_preferences(2) + [
        {
            "messages": [{"role": "user", "content": "Name a colour."}],
            "chosen": {"role": "assistant", "content": "Blue, like the sky."},
            "rejected": "Red.",
        },
        {
            "chosen": [
                {"role": "user", "content": "And the sea?"},
                {"role": "assistant", "content": "Blue as well."},
            ],
            "rejected": [
                {"role": "user", "content": "And the sea?"},
                {"role": "assistant", "content": "It is a very, very red sea."},
            ],
        },
    ]
    dataset = preference.PreferenceSet(preference_rows(rows, tokenizer))
    rng = np.random.default_rng(0)
    dataset.reference = rng.normal(-30, 3, (len(rows), 2)).astype(np.float32)
    return model, dataset


@pytest.mark.parametrize("method, kind", [("dpo", "sigmoid"), ("dpo", "ipo"), ("orpo", "sigmoid")])
def test_losses_and_gradients_equal_the_papers_formulas(pairs, method, kind):
    model, dataset = pairs
    params = TrainingParams(method=method, beta=0.25, dpo_loss=kind)
    ours, _ = preference.choose_loss(model, params, dataset)
    # the chosen answers, then the rejected ones: the batch's order
    sequences = [(c, o) for c, _, o in dataset.items] + [(r, o) for _, r, o in dataset.items]
    paper = paper_dpo(0.25, kind, sequences) if method == "dpo" else paper_orpo(0.25, sequences)
    batch = preference.pack(dataset, list(range(len(dataset))), 2048)
    (value, weight, sums), grad = nn.value_and_grad(model, ours.fn)(model, *batch)
    expected, expected_grad = nn.value_and_grad(model, paper)(model, *batch)
    assert weight.item() == len(dataset)
    np.testing.assert_allclose(value.item(), expected.item(), rtol=1e-4)
    flat, expected_flat = dict(tree_flatten(grad)), dict(tree_flatten(expected_grad))
    assert flat.keys() == expected_flat.keys() and flat
    for name, g in flat.items():
        scale = mx.abs(expected_flat[name]).max().item()
        assert scale > 0, name
        # float32 sums of entries up to ``scale`` (IPO's reach 100): an entry near 0 is exact
        # to about 1e-6 of the scale, whichever order the BLAS adds in
        atol = max(1e-5, 1e-6 * scale)
        np.testing.assert_allclose(g, expected_flat[name], rtol=2e-3, atol=atol, err_msg=name)
    assert set(sums) >= {"tokens", "reward_accuracy", "reward_margin"}
    assert 0 <= sums["reward_accuracy"].item() <= len(dataset)


def test_a_pair_goes_through_the_model_in_one_batch(pairs):
    _, dataset = pairs
    batch, lengths, reference = preference.pack(dataset, [0, 2], 2048)
    chosen0, rejected0, offset0 = dataset.items[0]
    assert batch.shape[0] == 4 and (batch.shape[1] - 1) % 8 == 0
    assert batch[0, : len(chosen0)].tolist() == chosen0
    assert batch[2, : len(rejected0)].tolist() == rejected0
    offset2 = dataset.items[2][2]
    assert lengths[:, 0].tolist() == [offset0, offset2, offset0, offset2]
    assert lengths[:, 1].tolist() == [len(dataset.items[i][j]) for j in (0, 1) for i in (0, 2)]
    np.testing.assert_allclose(reference.tolist(), dataset.reference[[0, 2, 0, 2], [0, 0, 1, 1]])


# -- runs -------------------------------------------------------------------------------------


def test_at_step_0_the_loss_is_ln_2_and_the_margin_0(dpo_run):
    """LoRA's B starts at zero, so before any update the adapter is the base: every
    log-ratio is 0."""
    _, _, events, _ = dpo_run
    first = next(e for e in events if isinstance(e, protocol.Validation))
    assert first.step == 0
    assert first.loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.reward_margin == pytest.approx(0, abs=1e-4)
    assert first.chosen_reward == pytest.approx(0, abs=1e-4)
    start = next(e for e in events if isinstance(e, protocol.Start))
    assert (start.method, start.beta) == ("dpo", 0.1) and "reference" in start.phases


def test_a_short_dpo_run_learns_the_preference(dpo_run, toy_model):
    settings, adapter_id, events, _ = dpo_run
    last = [e for e in events if isinstance(e, protocol.Validation)][-1]
    assert last.step == 24 and last.reward_accuracy > 0.9 and last.reward_margin > 0.5
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert all(e.reward_accuracy is not None and e.chosen_reward is not None for e in progress)
    meta = AdapterMetadata.read(settings.adapters / adapter_id).model_dump()
    assert meta["method"] == "dpo" and meta["beta"] == 0.1
    assert meta["rewardAccuracy"] > 0.9 and meta["initialRewardAccuracy"] == 0.0
    load(str(toy_model), adapter_path=str(settings.adapters / adapter_id))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_dpo_run_resumed_after_sigkill_equals_the_uninterrupted_one(
    studio, toy_model, dpo_run, seed
):
    reference_settings, reference_id, reference_events, data = dpo_run
    service = TrainingService(studio)
    killed = service.start(toy_model, data, TrainingParams(**DPO), name="killed")
    kill_at = random.Random(seed).randint(6, 18)
    sigkill_at(killed, kill_at)
    final = killed.last_event
    assert isinstance(final, protocol.Error)
    record = service.runs.get(killed.id)
    assert record.state == "interrupted" and record.checkpoint_step >= 5

    events = list(service.resume(killed.id).follow(timeout=240))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    reference, again = (
        adapter_weights(reference_settings, reference_id),
        adapter_weights(studio, killed.id),
    )
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], atol=1e-4, err_msg=name)
    published = protocol.read_events(studio.adapters / killed.id / "events.jsonl")
    assert validations(published) == validations(reference_events)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_the_cli_trains_a_preference_adapter_that_mlx_lm_loads(tmp_path, toy_model, method):
    data = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(40))
    done = lora_studio(
        *f"train --method {method} --beta 0.1 --lora-layers -1 --learning-rate 1e-3".split(),
        *("--epochs", "1", "--model", str(toy_model), "--data", str(data)),
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert "reward accuracy" in done.stderr and "samples at step 0" in done.stderr
    adapter = next((tmp_path / "home" / "adapters").iterdir())
    meta = json.loads((adapter / "metadata.json").read_text())
    assert meta["method"] == method and meta["beta"] == 0.1
    assert meta["rewardAccuracy"] is not None and meta["rewardMargin"] is not None
    events = protocol.read_events(adapter / "events.jsonl")
    figures = [e for e in events if isinstance(e, protocol.Validation)]
    assert figures and all(e.reward_accuracy is not None for e in figures)
    if method == "orpo":
        assert all(e.log_odds_ratio is not None and e.nll is not None for e in figures)
    load(str(toy_model), adapter_path=str(adapter))


# -- bad input ------------------------------------------------------------------------------


def test_each_bad_preference_line_is_named_with_its_fix(tmp_path):
    good = colour_preferences(1)[0]
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    rows = [
        good,
        {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Q?", "chosen": "Yes."},
        {"prompt": "Q?", "chosen": "  ", "rejected": "No."},
        {
            "chosen": [turn("user", "A"), turn("assistant", "x")],
            "rejected": [turn("user", "B"), turn("assistant", "y")],
        },
        {"messages": [turn("user", "Q"), turn("assistant", "A")], "chosen": "x", "rejected": "y"},
        {"messages": [turn("user", "Q")], "chosen": turn("user", "x"), "rejected": "y"},
        {"prompt": "Q?", "completion": "an SFT row"},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, batch_size=1)
    found = {p.line: p.message for p in caught.value.problems}
    assert sorted(found) == [2, 3, 4, 5, 6, 7, 8]
    assert "the same answer" in found[2]
    assert '"rejected" is missing' in found[3]
    assert '"chosen" is empty' in found[4]
    assert "prompt differs between chosen and rejected" in found[5]
    assert "ends with an assistant turn" in found[6]
    assert "'user' message" in found[7]
    assert "completions row in a preference dataset" in found[8]
    assert all("prompt" in p.fix for p in caught.value.problems[:6])


def test_the_three_forms_are_one_pair():
    from core.data.check import preference_pair

    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    forms = [
        {"prompt": "Q?", "chosen": "A.", "rejected": "B."},
        {"messages": [turn("user", "Q?")], "chosen": turn("assistant", "A."), "rejected": "B."},
        {
            "chosen": [turn("user", "Q?"), turn("assistant", "A.")],
            "rejected": [turn("user", "Q?"), turn("assistant", "B.")],
        },
    ]
    pairs = {json.dumps(vars(preference_pair(row)), sort_keys=True) for row in forms}
    assert len(pairs) == 1


def test_a_method_that_does_not_suit_the_rows_is_refused_before_start(studio, toy_model, tmp_path):
    service = TrainingService(studio)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(20))
    answers = write_jsonl(tmp_path / "chat.jsonl", colour_rows(20))
    small = dict(lora_layers=-1)
    with pytest.raises(StudioError, match="--method dpo or --method orpo"):
        service.start(toy_model, prefs, TrainingParams(**small))
    with pytest.raises(StudioError, match="method = dpo needs preference rows"):
        service.start(toy_model, answers, TrainingParams(method="dpo", **small))
    assert not any(studio.runs.iterdir())


@pytest.mark.parametrize("beta", ["0", "-1", "10.5", "nan"])
def test_a_beta_out_of_range_is_refused_naming_it(tmp_path, toy_model, beta):
    data = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(20))
    done = lora_studio(
        *("train", "--method", "dpo", "--beta", beta),
        *("--model", str(toy_model), "--data", str(data)),
        home=tmp_path / "home",
    )
    assert done.returncode != 0 and "beta" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_prompt_that_fills_the_length_is_refused_with_the_fix(tmp_path, toy_model):
    rows = colour_preferences(19) + [
        {"prompt": "word " * 300, "chosen": "The sky is blue.", "rejected": "The sky is red."}
    ]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    done = lora_studio(
        *["train", "--method", "orpo", "--max-seq-length", "64", "--lora-layers", "-1"],
        *("--model", str(toy_model), "--data", str(data)),
        home=tmp_path / "home",
    )
    assert done.returncode != 0
    assert "no room within max_seq_length = 64" in done.stderr
    assert "--max-seq-length" in done.stderr and "Traceback" not in done.stderr


def test_two_ranks_train_the_same_dpo_adapter_as_one_process(studio, toy_model, dpo_run):
    from core.machine.launch import Launch

    reference_settings, reference_id, reference_events, data = dpo_run
    run = TrainingService(studio).start(
        toy_model, data, TrainingParams(**DPO), launch=Launch(processes=2)
    )
    events = list(run.follow(timeout=240))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    assert next(e for e in events if isinstance(e, protocol.Start)).ranks == 2
    mine, theirs = validations(reference_events), validations(events)
    assert [v[0] for v in theirs] == [v[0] for v in mine]
    np.testing.assert_allclose([v[1:] for v in theirs], [v[1:] for v in mine], atol=2e-3)
    reference, again = (
        adapter_weights(reference_settings, reference_id),
        adapter_weights(studio, run.id),
    )
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], rtol=1e-3, atol=1e-5)


def test_samples_at_each_validation_are_the_models_greedy_answers(dpo_run, toy_model):
    """The samples of the last validation are the published adapter's greedy answers (mlx-lm's
    generate) to the first validation prompts; their time is kept apart from training's."""
    from mlx_lm import generate

    settings, adapter_id, events, _ = dpo_run
    validated = [e.step for e in events if isinstance(e, protocol.Validation)]
    samples = [e for e in events if isinstance(e, protocol.Samples)]
    assert [e.step for e in samples] == validated
    assert all(len(e.samples) == 3 and e.seconds > 0 for e in samples)
    model, tokenizer = load(str(toy_model), adapter_path=str(settings.adapters / adapter_id))
    for sample in samples[-1].samples:
        messages = [{"role": "user", "content": sample.prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        assert sample.answer == generate(model, tokenizer, prompt, max_tokens=64).strip()
    published = protocol.read_events(settings.adapters / adapter_id / "events.jsonl")
    assert [e.step for e in published if isinstance(e, protocol.Samples)] == validated
