"""Evaluation: `lora-studio eval` on the toy llama and its adapter, against mlx-lm's own
greedy generation and the metric libraries' own results; a judge behind a second real
`lora-studio serve`; stops, resumes and bad input.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import sacrebleu
from mlx_lm import generate, load
from rouge_score import rouge_scorer

from core import judge as judging
from core.errors import StudioError
from core.eval import metrics, runner
from core.eval.generation import Sampling
from core.eval.store import EvalStore
from core.eval.verdicts import verdicts
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from tests.helpers import free_port, lora_studio, lora_studio_server, studio_with_toy, write_jsonl

QUESTIONS = [
    ("What colour is the sky number 3?", "The sky is blue."),
    ("What colour is the sky number 8?", "The sky is red."),
    ("What colour is the sky?", "The sky is blue."),
    ("Is the sky red?", "The sky is red."),
    ("Name a colour.", "Blue."),
]


def saved_rows(result: dict) -> list[dict]:
    text = (Path(result["path"]) / "rows.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def home(tmp_path_factory, toy_model, trained_adapter):
    """A studio with the toy base and the colour adapter trained on it."""
    home = tmp_path_factory.mktemp("eval-studio")
    settings = studio_with_toy(home, toy_model)
    shutil.copytree(trained_adapter, settings.adapters / trained_adapter.name)
    return home


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    rows = [{"prompt": q, "completion": a} for q, a in QUESTIONS]
    rows.append({"messages": [{"role": "user", "content": "Say something."}]})  # no reference
    return write_jsonl(tmp_path_factory.mktemp("eval-data") / "held-out.jsonl", rows)


@pytest.fixture(scope="module")
def evaluated(home, test_file, trained_adapter):
    """`lora-studio eval toy lora/<id> --data FILE --json`: its result and saved rows."""
    adapter = f"lora/{trained_adapter.name}"
    args = ["eval", "toy", adapter, "--data", str(test_file), "--json", "--max-tokens", "24"]
    done = lora_studio(*args, "--batch-size", "4", home=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = saved_rows(result)
    return result, rows, adapter


def test_the_json_result_has_every_model_metric_and_interval(evaluated):
    result, rows, adapter = evaluated
    assert result["models"] == ["toy", adapter] and result["rows"] == 6 == len(rows)
    assert result["rows_with_reference"] == 5  # the last row has no reference: skipped, said
    for model in result["models"]:
        scores = result["metrics"][model]
        assert set(scores) == set(metrics.METRICS)
        for stat in scores.values():
            assert stat["low"] <= stat["mean"] <= stat["high"]
        assert scores["exact_match"]["n"] == 5 and scores["loss"]["n"] == 5
    assert result["judge"] is None and result["path"].endswith(result["id"])


def test_answers_equal_mlx_lm_greedy_generate(evaluated, home, trained_adapter):
    """Batched generation (4 rows at once) gives mlx-lm's own greedy answers."""
    _, rows, adapter = evaluated
    for model_id, adapter_path in (("toy", None), (adapter, trained_adapter)):
        model, tokenizer = load(str(home / "models" / "toy"), adapter_path=adapter_path)
        for row in rows:
            prompt = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True)
            expected = generate(model, tokenizer, prompt, max_tokens=24).strip()
            assert row["answers"][model_id] == expected, (model_id, row["prompt"])
    assert any(row["answers"][adapter] != row["answers"]["toy"] for row in rows)


def test_exact_match_and_rouge_l_equal_the_libraries_results(evaluated):
    result, rows, _ = evaluated
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for model in result["models"]:
        rouge, exact, chrf = [], [], []
        for row in rows:
            if row["reference"] is None:
                assert "rouge_l" not in row["scores"][model]
                continue
            answer, reference = row["answers"][model], row["reference"]
            rouge.append(scorer.score(reference, answer)["rougeL"].fmeasure)
            exact.append(float(answer.strip().lower() == reference.strip().lower()))
            chrf.append(sacrebleu.sentence_chrf(answer, [reference]).score)
            assert row["scores"][model]["rouge_l"] == pytest.approx(rouge[-1])
        summary = result["metrics"][model]
        assert summary["rouge_l"]["mean"] == pytest.approx(sum(rouge) / len(rouge))
        assert summary["exact_match"]["mean"] == pytest.approx(sum(exact) / len(exact))
        assert summary["chrf"]["mean"] == pytest.approx(sum(chrf) / len(chrf))


def test_evals_lists_the_evaluation(evaluated, home):
    result, _, _ = evaluated
    done = lora_studio("evals", "--json", home=home)
    listed = {spec["id"]: spec for spec in json.loads(done.stdout)}
    assert listed[result["id"]]["state"] == "complete"
    assert listed[result["id"]]["summary"]["rows"] == 6


def test_a_judge_behind_another_lora_studio_serve(home, test_file, trained_adapter, tmp_path):
    """The toy model's replies are nonsense: every verdict is counted, none guessed, and
    every reply is kept; each pair was asked in both orders."""
    judge_home = tmp_path / "judge"
    studio_with_toy(judge_home, home / "models" / "toy")
    adapter = f"lora/{trained_adapter.name}"
    with lora_studio_server(judge_home, "serve") as (_, url, _):
        done = lora_studio(
            *("eval", "toy", adapter, "--data", str(test_file), "--json"),
            *("--max-tokens", "8", "--judge-url", f"{url}/v1", "--judge-model", "toy"),
            home=home,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    counts = result["judge"]["pairwise"][adapter]
    assert sum(counts[k] for k in ("win", "tie", "loss", "unparseable")) == 6
    rows = saved_rows(result)
    replies = [row["judge"]["pairwise"][adapter]["replies"] for row in rows]
    assert all(len(pair) == 2 and all(isinstance(r, str) for r in pair) for pair in replies)
    unparseable = sum(judging._last(judging._VERDICT, r) is None for pair in replies for r in pair)
    assert (counts["unparseable"] > 0) == (unparseable > 0)
    scores = result["judge"]["scores"]["toy"]
    assert scores["unparseable"] + scores["n"] == 6


def test_both_orders_cancel_a_judge_that_prefers_the_first_answer():
    def always(verdict):
        return lambda prompt: f"Both are fine. [[{verdict}]]"

    replies = iter(["[[B]]", "I prefer A: [[A]]"])
    assert judging.pairwise(always("A"), "q", None, "base", "adapter").outcome == "tie"
    assert judging.pairwise(always("C"), "q", None, "base", "adapter").outcome == "tie"
    assert judging.pairwise(lambda p: next(replies), "q", None, "b", "a").outcome == "win"
    replies = iter(["[[A]]", "[[B]]"])
    assert judging.pairwise(lambda p: next(replies), "q", None, "b", "a").outcome == "loss"
    nonsense = judging.pairwise(lambda p: "the the the", "q", "ref", "b", "a")
    assert nonsense.outcome == "unparseable" and nonsense.replies == ("the the the",) * 2
    assert judging.rubric_score(lambda p: "Rating: [[7]]", "q", None, "a")[0] == 7.0
    assert judging.rubric_score(lambda p: "Rating: [[70]]", "q", None, "a")[0] is None
    assert judging.rubric_score(lambda p: "seven", "q", None, "a")[0] is None


def test_a_refusing_judge_fails_within_seconds_keeping_the_rows_done(
    home, test_file, trained_adapter, monkeypatch
):
    """A judge that stops answering after the first chunk: the chunk's rows stay, and the
    evaluation resumes from the next row once the judge is back."""
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    from core.settings import Settings

    settings = Settings.from_env(home)
    store, engine = EvalStore(settings.evals), InferenceEngine(ModelRegistry(settings))
    try:
        evaluation = runner.prepare(
            store,
            engine,
            ["toy", f"lora/{trained_adapter.name}"],
            str(test_file),
            metrics=("exact_match", "rouge_l"),
            sampling=Sampling(max_tokens=8, batch_size=2),
        )
        calls = []

        def flaky(prompt: str) -> str:
            calls.append(prompt)
            if len(calls) > 8:  # the first chunk: 2 rows x (2 orders + 2 scores)
                raise StudioError("the judge at http://127.0.0.1:9/v1 cannot be reached")
            return "Rating: [[5]] [[C]]"

        evaluation.judge = runner.Judge(flaky, "flaky")
        stopped = evaluation.run()
        assert stopped.state == "stopped" and "cannot be reached" in stopped.error
        assert stopped.rows_done == 2 == len(store.rows(stopped.id))
        again = runner.resume(store, engine, stopped.id)
        again.judge = runner.Judge(lambda prompt: "Rating: [[6]] [[C]]", "back")
        finished = again.run()
        assert finished.state == "complete" and len(store.rows(finished.id)) == 6
        assert [row["line"] for row in store.rows(finished.id)] == [1, 2, 3, 4, 5, 6]
        judged = finished.summary["judge"]  # every row was judged: two judges, one summary
        adapter = f"lora/{trained_adapter.name}"
        assert judged["pairwise"][adapter] == {
            "win": 0,
            "tie": 6,
            "loss": 0,
            "unparseable": 0,
            "against": "toy",
        }
        for model in ("toy", adapter):  # 2 rows scored 5 before the stop, 4 scored 6 after
            assert judged["scores"][model]["n"] == 6
            assert judged["scores"][model]["mean"] == pytest.approx((2 * 5 + 4 * 6) / 6)
    finally:
        engine.close()


def test_each_pair_is_judged_in_both_orders_and_every_outcome_is_counted(
    home, test_file, trained_adapter, monkeypatch
):
    """A judge that answers by the row's question: "tie" rows get a judge biased to the
    first answer, "win" rows prefer the adapter's answer, "loss" rows the base's. Every
    pair's two prompts hold the two answers in swapped places."""
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    from core.settings import Settings

    settings = Settings.from_env(home)
    adapter = f"lora/{trained_adapter.name}"
    store, engine = EvalStore(settings.evals), InferenceEngine(ModelRegistry(settings))
    plan = ["win", "loss", "tie", "win", "win", "tie"]  # by the test file's line
    asked: list[tuple[str, str]] = []

    def judge(prompt: str) -> str:
        if "[Assistant A]" not in prompt:
            return "Rating: [[5]]"
        question = prompt.split("[Question]\n")[1].split("\n\n[Assistant A]")[0]
        a = prompt.split("[Assistant A]\n")[1].split("\n\n[Assistant B]")[0]
        b = prompt.split("[Assistant B]\n")[1]
        asked.append((question, a, b))
        first = len([q for q, _, _ in asked if q == question]) == 1
        wanted = plan[[c.prompt for c in cases].index(question)]
        if wanted == "tie":
            return "[[A]]"  # whatever stands first: the other order cancels it
        adapter_is_b = first  # the baseline is A in the first order, B in the second
        return "[[B]]" if (wanted == "win") == adapter_is_b else "[[A]]"

    try:
        evaluation = runner.prepare(
            store,
            engine,
            ["toy", adapter],
            str(test_file),
            metrics=("exact_match",),
            sampling=Sampling(max_tokens=8, batch_size=3),
            judge={"kind": "studio", "model": "toy"},
        )
        cases = evaluation.cases
        evaluation.judge = runner.Judge(judge, "by the plan")
        done = evaluation.run()
    finally:
        engine.close()
    assert done.state == "complete"
    counts = done.summary["judge"]["pairwise"][adapter]
    assert (counts["win"], counts["loss"], counts["tie"], counts["unparseable"]) == (3, 1, 2, 0)
    rows = store.rows(done.id)
    assert len(asked) == 2 * len(rows)
    for row in rows:
        (q1, a1, b1), (q2, a2, b2) = [x for x in asked if x[0] == row["prompt"]]
        assert (a1, b1) == (row["answers"]["toy"], row["answers"][adapter])
        assert (a2, b2) == (row["answers"][adapter], row["answers"]["toy"])
    assert any(r["answers"]["toy"] != r["answers"][adapter] for r in rows)


def test_an_unreachable_judge_url_is_a_clear_error_within_seconds(home, test_file):
    started = time.monotonic()
    done = lora_studio(
        *("eval", "toy", "--data", str(test_file), "--max-tokens", "4"),
        *("--judge-url", f"http://127.0.0.1:{free_port()}/v1", "--judge-model", "x"),
        home=home,
    )
    assert done.returncode == 1 and time.monotonic() - started < 60
    assert "cannot be reached" in done.stderr and "--resume" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "nope", "--data", "{data}"], "unknown model 'nope'"),
        (["eval", "toy", "--data", "{text}"], "text row has no prompt to answer"),
        (["eval", "toy", "--data", "{data}", "--metrics", "bleu,wer"], "unknown metric wer"),
        (["eval", "toy", "--data", "{data}", "--judge-url", "http://x/v1"], "--judge-model"),
        (["eval", "--resume", "not-an-id"], "is not an evaluation id"),
    ],
)
def test_bad_input_is_refused_with_a_sentence(home, test_file, tmp_path, args, message):
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "just text"}])
    args = [a.format(data=test_file, text=text) for a in args]
    done = lora_studio(*args, home=home)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_metrics_on_known_answers():
    assert metrics.exact_match("Paris.", "paris") == 1.0
    assert metrics.contains("Arr, the capital be Paris, matey!", "Paris") == 1.0
    assert metrics.contains("Parisian", "Paris") == 0.0
    assert metrics.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    stat = metrics.bootstrap([0.0, 1.0] * 50)
    assert stat["mean"] == 0.5 and 0.38 < stat["low"] < 0.5 < stat["high"] < 0.62


def test_a_test_split_is_kept_out_of_training_and_validation(tmp_path):
    from core.data.scan import load_dataset, scan_dataset, split_indices

    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}."} for i in range(50)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    train, valid, test = split_indices(50, 0.2, 3, test_split=0.1)
    assert (len(train), len(valid), len(test)) == (35, 10, 5)
    assert split_indices(50, 0.2, 3)[1] == valid  # the validation rows do not move
    assert not set(test) & (set(train) | set(valid))
    loaded = load_dataset(path, batch_size=4, seed=3, test_split=0.1)
    held = {rows[i]["prompt"] for i in test}
    seen = {r["prompt"] for r in loaded.train + loaded.valid}
    assert not held & seen and len(seen) == 45
    scan = scan_dataset(path, batch_size=4, seed=3, test_split=0.1)
    assert (scan.train_count, scan.valid_count, scan.test_count) == (35, 10, 5)
    scan.write(tmp_path / "run", test_file=tmp_path / "test.jsonl")
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    written = [json.loads(line)["prompt"] for line in lines]
    assert set(written) == held
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:40])
    write_jsonl(folder / "valid.jsonl", rows[40:])
    with pytest.raises(StudioError, match="own validation or test file"):
        scan_dataset(folder, batch_size=4, test_split=0.1)


def test_a_run_with_a_test_split_is_evaluated_against_its_base(tmp_path, toy_model):
    """`lora-studio train --test-split`: the adapter keeps its test rows and, once published,
    is evaluated on them against its base; metadata.json gets the summary."""
    from tests.helpers import colour_rows

    home = tmp_path / "home"
    studio_with_toy(home, toy_model)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(60))
    done = lora_studio(
        *("train", "--model", "toy", "--data", str(data), "--test-split", "0.1"),
        *("--lora-layers", "-1", "--epochs", "1", "--learning-rate", "1e-2"),
        *("--samples", "0"),
        home=home,
    )
    assert done.returncode == 0, done.stderr
    assert "rouge_l" in done.stdout and "evaluating the adapter" in done.stderr
    adapter = next((home / "adapters").iterdir())
    assert len((adapter / "test.jsonl").read_text().splitlines()) == 6
    meta = json.loads((adapter / "metadata.json").read_text())
    assert meta["trainExamples"] == 42 and meta["validationExamples"] == 12
    tested = meta["testEvaluation"]
    assert tested["rows"] == 6 and set(tested["metrics"]) == {"toy", f"lora/{adapter.name}"}
    both = lora_studio(
        *("train", "--model", "toy", "--data", str(data), "--test-split", "0.1"),
        *("--test-data", str(data), "--lora-layers", "-1"),
        home=home,
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_answer_words_describes_every_answer_and_judges_none(home, test_file, trained_adapter):
    """``--metrics answer_words``: each answer's length in words (a GRPO length reward's
    effect), rows without a reference too; a description, so no verdict says better."""
    adapter = f"lora/{trained_adapter.name}"
    args = ["eval", "toy", adapter, "--data", str(test_file), "--metrics", "answer_words"]
    done = lora_studio(*args, "--json", "--max-tokens", "24", home=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = saved_rows(result)
    for model in result["models"]:
        words = [len(row["answers"][model].split()) for row in rows]
        found = result["metrics"][model]["answer_words"]
        assert found["n"] == 6 and found["mean"] == pytest.approx(sum(words) / 6)
    assert verdicts(result["models"], result["metrics"]) == []
