"""GRPO: the losses against their papers' formulas, the advantages, the reference, a toy task
learnt, exact resume after a real SIGKILL, and every bad reward said plainly.

The toy task: prompts about the sky, rewarded when the answer says "blue" (a regular
expression). The toy llama's random answers say it now and then, so groups differ and the
adapter learns it: the held-out greedy answers go from never to always saying it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load

from core import protocol
from core.errors import StudioError
from core.judge import RUBRIC
from core.params import TrainingParams
from core.settings import Settings
from core.train import grpo, rewards
from core.train.batches import padded
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, sigkill_at, write_jsonl
from tests.test_loss import lora_model

GRPO = dict(
    method="grpo",
    reward=["regex:blue"],
    learning_rate=3e-2,
    epochs=3,
    lora_layers=-1,
    rank=16,
    keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"],
    group_size=8,
    max_completion_tokens=8,
    batch_size=4,
    save_every=5,
    samples=0,
    seed=1,
)


def sky_prompts(n: int = 60) -> list[dict]:
    return [{"prompt": f"What colour is the sky number {i}?", "answer": "blue"} for i in range(n)]


def adapter_weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


def held_out(events) -> list[tuple[int, float]]:
    return [(e.step, e.reward) for e in events if isinstance(e, protocol.Validation)]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, toy_model):
    """The toy task's run, never interrupted: (settings, its events, the data)."""
    home = tmp_path_factory.mktemp("grpo")
    settings = Settings.from_env(home).ensure()
    data = write_jsonl(home / "sky.jsonl", sky_prompts())
    run = TrainingService(settings).start(toy_model, data, TrainingParams(**GRPO), name="sky")
    events = list(run.follow(timeout=300))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    return settings, events, data


# -- the formulas ------------------------------------------------------------------------------


def fixed_batch(toy_model):
    """A LoRA model (B not zero), 6 answers in 2 groups of 3, fixed rewards, and the base's
    log-probabilities as the reference."""
    model, tokenizer = lora_model(toy_model)
    params = TrainingParams(method="grpo", reward=["exact"], group_size=3, beta=0.3)
    prompts = [tokenizer.encode("What colour is the sky?"), tokenizer.encode("Name a colour.")]
    answers = [tokenizer.encode(t) for t in ("blue", "it is red", "blue sky", "green", "x", "red")]
    asked = [0, 0, 0, 1, 1, 1]
    sequences = [prompts[i] + a for i, a in zip(asked, answers, strict=True)]
    offsets = [len(prompts[i]) for i in asked]
    batch, lengths = padded(sequences, offsets, 2048)
    lengths = lengths - mx.array([0, 1])
    rewards_given = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 1.0], np.float32)
    gains = mx.array(grpo.advantages(rewards_given, 3))
    return model, params, batch, lengths, gains, offsets, [len(a) for a in answers]


def answer_logps(model, batch, offsets, counts) -> list[mx.array]:
    """Each answer token's log-probability, from the whole model's logits (independently of
    the studio's windowed head)."""
    logits = model(batch[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, batch[:, 1:, None], axis=-1).squeeze(-1)
    return [
        picked[row, start - 1 : start - 1 + n]
        for row, (start, n) in enumerate(zip(offsets, counts, strict=True))
    ]


def paper_loss(kind: str, params, gains, offsets, counts, reference_logps, policy):
    """GRPO's objective as written, per answer token ``policy(A, log p) + beta KL`` with the
    k3 KL to the reference, normalised as GRPO (per answer), BNPO (the batch's tokens) or
    Dr. GRPO (answers x max completion tokens). After one draw the ratio is 1: the
    surrogate's value is ``-A``, its gradient ``-A grad log p``."""

    def loss(model, batch):
        terms, sizes = [], []
        for row, logp in enumerate(answer_logps(model, batch, offsets, counts)):
            log_ratio = reference_logps[row] - logp
            kl = mx.exp(log_ratio) - log_ratio - 1
            terms.append(policy(gains[row], logp) + params.beta * kl)
            sizes.append(logp.size)
        if kind == "grpo":
            return mx.stack([t.sum() / n for t, n in zip(terms, sizes, strict=True)]).mean()
        total = mx.stack([t.sum() for t in terms]).sum()
        if kind == "bnpo":
            return total / sum(sizes)
        return total / (len(terms) * params.max_completion_tokens)

    return loss


VALUE = lambda gain, logp: -gain * mx.ones_like(logp)  # noqa: E731 - r = 1: the value
GRADIENT = lambda gain, logp: -gain * logp  # noqa: E731 - and d r = d log p: the gradient


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "bnpo"])
def test_the_loss_and_its_gradients_equal_the_papers_formula(toy_model, kind):
    model, params, batch, lengths, gains, offsets, counts = fixed_batch(toy_model)
    params = params.model_copy(update={"grpo_loss": kind})
    loss, per_token = grpo.choose_loss(model, params, ["exact"])
    with grpo.adapter_off(model):
        reference_rows = [mx.stop_gradient(r) for r in answer_logps(model, batch, offsets, counts)]
        entropy, counted = per_token(batch, lengths)
        reference = -entropy.astype(mx.float32)
    stats = mx.zeros((6, 4))
    ours_value, ours_grad = nn.value_and_grad(model, loss.fn)(
        model, batch, lengths, gains, reference, stats
    )
    value = paper_loss(kind, params, gains, offsets, counts, reference_rows, VALUE)
    gradient = paper_loss(kind, params, gains, offsets, counts, reference_rows, GRADIENT)
    _, paper_grad = nn.value_and_grad(model, gradient)(model, batch)
    assert ours_value[0].item() == pytest.approx(value(model, batch).item(), rel=1e-5)
    ours, theirs = dict(_flat(ours_grad)), dict(_flat(paper_grad))
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-4, atol=1e-6, err_msg=name)


def _flat(tree):
    from mlx.utils import tree_flatten

    return [(name, np.array(value)) for name, value in tree_flatten(tree)]


def test_advantages_sum_to_zero_in_each_group_and_an_even_group_adds_nothing():
    given = np.array([1.0, 0.0, 0.5, 2.0, 2.0, 2.0, 0.0, 3.0], np.float32)
    for scale in (True, False):
        gains = grpo.advantages(given[:6], 3, scale)
        assert abs(gains[:3].sum()) < 1e-6 and not gains[3:6].any()
    scaled = grpo.advantages(given[6:], 2)
    assert scaled[1] == pytest.approx(1 / np.sqrt(2), rel=1e-3)  # (3 - 1.5) / std(0, 3)


def test_the_kl_is_zero_while_the_adapter_does_nothing(toy_model):
    """At step 0 (LoRA's B at zero) the policy is the reference: KL exactly 0."""
    model, tokenizer = load(str(toy_model))
    model.freeze()
    from mlx_lm.tuner.utils import linear_to_lora_layers

    linear_to_lora_layers(model, -1, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": None})
    params = TrainingParams(method="grpo", reward=["regex:blue"], group_size=4)
    scorer = rewards.Scorer(rewards.load(params.reward, None))
    loss, per_token = grpo.choose_loss(model, params, ["regex:blue"])
    rollouts = grpo.Rollouts(model, tokenizer, params, scorer, per_token, emit=print)
    prompts = grpo.PromptSet(sky_prompts(4), [tokenizer.encode("sky?")] * 4, ["sky?"] * 4)
    batch = rollouts.rollout(prompts, [0, 1], 4, greedy=False)
    _, _, sums = loss.fn(model, *batch)
    assert sums["kl"].item() == 0.0


# -- a real run ---------------------------------------------------------------------------------


def test_a_toy_task_is_learnt_and_published_with_its_rewards(grpo_run):
    _, events, _ = grpo_run
    rewarded = held_out(events)
    assert rewarded[0] == (0, 0.0) and max(r for _, r in rewarded[1:]) >= 0.75, rewarded
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert all(e.kl is not None and e.completion_length > 0 for e in progress)
    assert progress[0].no_signal > progress[-1].no_signal  # fewer groups all the same
    adapter = Path(events[-1].adapter_path)
    meta = json.loads((adapter / "metadata.json").read_text())
    assert meta["method"] == "grpo" and meta["rewards"] == ["regex:blue"]
    assert meta["heldOutReward"] >= 0.75 and meta["initialHeldOutReward"] == 0.0
    load(meta["baseModelPath"], adapter_path=str(adapter))


def test_a_grpo_run_resumes_bitwise_after_sigkill(studio, toy_model, grpo_run):
    """The sampler's random state is in the checkpoints: the resumed run draws the same
    answers, so it ends on the very same adapter."""
    reference, expected_events, data = grpo_run
    service = TrainingService(studio)
    killed = service.start(toy_model, data, TrainingParams(**GRPO), name="sky")
    sigkill_at(killed, 17)
    assert "SIGKILL" in killed.last_event.error
    assert service.runs.get(killed.id).checkpoint_step >= 15
    resumed = service.resume(killed.id)
    events = list(resumed.follow(timeout=300))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    expected = adapter_weights(Path(expected_events[-1].adapter_path))
    again = adapter_weights(studio.adapters / killed.id)
    for name, value in expected.items():
        assert np.array_equal(again[name], value), name
    published = protocol.read_events(studio.adapters / killed.id / "events.jsonl")
    assert held_out(published) == held_out(expected_events)


# -- rewards, good and bad ------------------------------------------------------------------------


def test_the_built_in_rewards():
    row = {"answer": "12", "keywords": ["sky", "Blue"], "schema": {"type": "object"}}
    assert rewards.exact("", "so it is 3 + 9 = 12.", row) == 1.0
    assert rewards.exact("", "<answer>12.0</answer> not 13", row) == 1.0
    assert rewards.exact("", "13", row) == 0.0
    assert rewards.exact("", " Paris. ", {"answer": "paris"}) == 1.0
    assert rewards.contains("", "the SKY", row) == 0.5
    assert rewards.json_valid("", '```json\n{"a": 1}\n```', row) == 1.0
    assert rewards.json_valid("", "[1, 2]", row) == 0.0  # valid JSON, not the schema's object
    assert rewards.built_in("length:2-3")("", "one two three", {}) == 1.0
    assert rewards.built_in("regex:^A")("", "B A", {}) == 0.0
    assert rewards.split_weight("regex:a:b:0.5") == ("regex:a:b", 0.5)
    assert rewards.split_weight("regex:5") == ("regex:5", 1.0)


def reward_file(tmp_path, body: str) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("def short(prompt, completion):\n    return 1.0\n", "line 1: short(prompt, completion)"),
        ("x = 1\ndef bad(:\n", "line 2"),
        ("def _helper(prompt, completion, row):\n    return 1\n", "no public function"),
    ],
)
def test_a_bad_reward_file_is_refused_before_start_naming_its_line(
    studio, toy_model, tmp_path, body, said
):
    path = reward_file(tmp_path, body)
    data = write_jsonl(tmp_path / "sky.jsonl", sky_prompts(24))
    params = TrainingParams(**GRPO | {"reward": None, "reward_file": [str(path)]})
    with pytest.raises(StudioError) as refused:
        TrainingService(studio).start(toy_model, data, params)
    assert "my_rewards.py" in refused.value.message and said in refused.value.message
    assert not list(studio.runs.iterdir())  # no process was started


def test_a_reward_file_that_does_not_import_fails_the_run_naming_its_line(
    studio, toy_model, tmp_path
):
    path = reward_file(tmp_path, "import json\nraise RuntimeError('no key')\n")
    data = write_jsonl(tmp_path / "sky.jsonl", sky_prompts(24))
    # no public function: refused first; with one, the file gets imported, and fails
    path.write_text(path.read_text() + "def score(prompt, completion, row):\n    return 1.0\n")
    params = TrainingParams(**GRPO | {"reward": None, "reward_file": [str(path)]})
    final = TrainingService(studio).start(toy_model, data, params).wait(timeout=120)
    assert isinstance(final, protocol.Error) and final.kind == "params"
    assert "my_rewards.py, line 2: it does not import: RuntimeError: no key" in final.error


def test_failing_rewards_score_zero_and_are_said_once_with_their_count(tmp_path, toy_model):
    path = reward_file(
        tmp_path,
        """
        def word(prompt, completion, row):
            return "a text"

        def picky(prompt, completion, row):
            return 1 / 0 if len(completion) % 2 else 1.0
        """,
    )
    data = write_jsonl(tmp_path / "sky.jsonl", sky_prompts(24))
    done = lora_studio(
        *("train", "--method", "grpo", "--reward-file", str(path), "--epochs", "1"),
        *("--lora-layers", "-1", "--group-size", "2", "--max-completion-tokens", "4"),
        *("--samples", "0", "--model", str(toy_model), "--data", str(data)),
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: reward")]
    assert any("word (my_rewards.py, line 2): TypeError: returned str" in n for n in notes)
    assert any("picky (my_rewards.py, line 5): ZeroDivisionError" in n for n in notes)
    assert len(notes) <= 6  # said when they start and at 10, 100: not once per answer
    assert "held-out reward" in done.stderr


def test_prompts_and_methods_must_match(studio, toy_model, tmp_path):
    prompts = write_jsonl(tmp_path / "sky.jsonl", sky_prompts(24))
    answers = write_jsonl(tmp_path / "answers.jsonl", colour_rows(24))
    service = TrainingService(studio)
    with pytest.raises(StudioError, match="only GRPO can learn from"):
        service.check(toy_model, prompts, TrainingParams(lora_layers=2))
    with pytest.raises(StudioError, match="needs prompts to answer"):
        service.check(toy_model, answers, TrainingParams(**GRPO))
    with pytest.raises(StudioError, match="no such reward"):
        service.check(toy_model, prompts, TrainingParams(**GRPO | {"reward": ["exactly"]}))
    with pytest.raises(StudioError, match="GRPO's reference is the base"):
        service.check(toy_model, prompts, TrainingParams(**GRPO | {"fine_tune_type": "dora"}))


def test_the_judge_reward_is_the_judges_rating_and_no_rating_is_a_failure():
    asked = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return "Fine. Rating: [[8]]" if "Paris" in prompt else "I cannot say."

    reward = rewards.judged(judge, RUBRIC)
    scorer = rewards.Scorer(rewards.load(["judge:0.1", "contains"], None, reward))
    row = {"prompt": "Capital of France?", "answer": "Paris", "keywords": ["paris"]}
    total, values = scorer.score("<user>Capital of France?", "It is Paris.", row)
    assert values == [8.0, 1.0] and total == pytest.approx(1.8)
    assert "Capital of France?" in asked[0] and "'Paris'" in asked[0]  # question and reference
    assert scorer.score("x", "It is Rome.", row | {"answer": "Rome"})[0] == 0.0  # no rating
    assert "the judge gave no rating: 'I cannot say.'" in scorer.first_failure["judge"]
    with pytest.raises(StudioError, match="--reward judge needs a judge"):
        rewards.load(["judge"], None)


def test_a_grpo_run_asks_a_judge_behind_another_lora_studio_serve(tmp_path, toy_model):
    """The judge reward end to end, against a real second studio serving the toy model: the
    run asks it for every answer and goes on when its replies hold no rating (the toy's
    never do), saying so with the judge's own words."""
    from tests.helpers import lora_studio_server, studio_with_toy

    judge_home = tmp_path / "judge"
    studio_with_toy(judge_home, toy_model)
    data = write_jsonl(tmp_path / "sky.jsonl", sky_prompts(10))
    with lora_studio_server(judge_home, "serve") as (_, url, _):
        done = lora_studio(
            *("train", "--method", "grpo", "--reward", "judge:0.1", "--reward", "regex:blue"),
            *("--judge-url", f"{url}/v1", "--judge-model", "toy", "--epochs", "1"),
            *("--lora-layers", "-1", "--group-size", "2", "--max-completion-tokens", "4"),
            *("--batch-size", "2", "--samples", "0", "--model", str(toy_model)),
            *("--data", str(data)),
            home=tmp_path / "home",
        )
    assert done.returncode == 0, done.stderr
    assert "note: reward judge (built-in): ValueError: the judge gave no rating" in done.stderr
    refused = lora_studio(
        *("train", "--method", "grpo", "--reward", "judge", "--model", str(toy_model)),
        *("--lora-layers", "2", "--data", str(data)),
        home=tmp_path / "home",
    )
    assert refused.returncode == 2 and "--reward judge needs a judge" in refused.stderr
