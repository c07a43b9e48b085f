"""Test rows that copy training rows: found with both lines, counted by `lora-studio eval`,
and left out of the scores on request (core/data/leaks.py)."""

from __future__ import annotations

import json

from core.data.leaks import THRESHOLD, find_leaks, grams, row_text
from tests.helpers import colour_rows, lora_studio, studio_with_toy, write_jsonl


def chat(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


TRAINING = [
    chat("What is the capital of France?", "The capital of France is Paris."),
    chat("Tell me about the harbour at dawn.", "Gulls circle the quiet boats while nets dry."),
    chat("What colour is the sky?", "The sky is blue."),
]


def test_copies_are_found_with_both_lines_and_templates_are_not():
    training = [(line, row_text(row)) for line, row in enumerate(TRAINING, start=1)]
    held_out = [
        # a copy with other capitals, spacing and punctuation
        (1, row_text(chat("what is the capital of france", "the capital of  France is Paris"))),
        # the same template, another fact: shares grams, below the threshold
        (
            2,
            row_text(chat("What is the capital of Sweden?", "The capital of Sweden is Stockholm.")),
        ),
        # a word added to fourteen
        (
            3,
            "Tell me about the harbour at dawn. Gulls circle the quiet boats while nets dry today.",
        ),
        (4, row_text({"prompt": "Unrelated words here", "completion": "and there"})),
    ]
    leaks = find_leaks(held_out, training)
    assert [(x.held_out_line, x.training_line) for x in leaks] == [(1, 1), (3, 2)]
    assert leaks[0].similarity == 1.0 and THRESHOLD <= leaks[1].similarity < 1.0
    template = grams(held_out[1][1]) & grams(training[0][1])
    union = grams(held_out[1][1]) | grams(training[0][1])
    assert template and len(template) / len(union) < THRESHOLD  # shared, not a copy
    assert grams("Hi there") == grams("hi, THERE!")  # short rows: the whole text


def test_eval_counts_a_planted_copy_on_both_lines_and_can_leave_it_out(tmp_path, toy_model):
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    training = colour_rows(20)
    train_file = write_jsonl(tmp_path / "train.jsonl", training)
    questions = [("What is the capital of Peru?", "Lima."), ("Name a fruit.", "A plum.")]
    test_rows = [{"prompt": q, "completion": a} for q, a in questions]
    planted = training[6]["messages"]  # training line 7, copied as test line 2
    test_rows.insert(1, {"prompt": planted[0]["content"], "completion": planted[1]["content"]})
    test_file = write_jsonl(tmp_path / "test.jsonl", test_rows)
    args = ["eval", "toy", "--data", str(test_file), "--metrics", "exact_match"]
    args += ["--max-tokens", "4", "--json", "--train-data", str(train_file)]
    counted = lora_studio(*args, home=home)
    assert counted.returncode == 0, counted.stderr
    result = json.loads(counted.stdout)
    assert result["leaked"]["pairs"] == [[2, 7, 1.0]] and not result["leaked"]["excluded"]
    assert result["rows"] == 3
    left_out = lora_studio(*args, "--exclude-leaked", home=home)
    assert left_out.returncode == 0, left_out.stderr
    result = json.loads(left_out.stdout)
    assert result["rows"] == 2 and result["leaked"]["excluded"]
    table = lora_studio(*args[:-3], "--train-data", str(train_file), home=home)
    assert "1 test row(s) of the test file nearly copy rows of" in table.stdout
    assert "test line 2 ~ training line 7 (1.00)" in table.stdout
    refused = lora_studio(*args[:-3], "--exclude-leaked", home=home)
    assert refused.returncode == 2 and "--exclude-leaked needs --train-data" in refused.stderr


def test_a_run_whose_test_rows_copy_training_rows_says_so_before_it_starts(tmp_path, toy_model):
    """A --test-data file with a planted copy: the CLI warns with both lines before the
    first step and the adapter's metadata counts it; a test split drawn from a file that
    repeats its rows: the page says so beside Start."""
    from webapp.page.studio import Studio
    from webapp.page.train.actions import TrainActions

    home = tmp_path / "studio"
    settings = studio_with_toy(home, toy_model)
    training = colour_rows(24)
    train_file = write_jsonl(tmp_path / "train.jsonl", training)
    planted = training[4]["messages"]  # line 5
    test_rows = [{"prompt": planted[0]["content"], "completion": planted[1]["content"]}]
    test_rows.append({"prompt": "What is the capital of Peru?", "completion": "Lima."})
    test_file = write_jsonl(tmp_path / "test.jsonl", test_rows)
    run = ["train", "--model", "toy", "--data", str(train_file), "--test-data", str(test_file)]
    done = lora_studio(*run, "--epochs", "1", "--lora-layers", "2", "--samples", "0", home=home)
    assert done.returncode == 0, done.stderr
    warned = "warning: 1 test row(s) of the test rows nearly copy rows of the training rows"
    assert warned in done.stdout and "test line 1 ~ training line 5 (1.00)" in done.stdout
    adapter = next((home / "adapters").iterdir())
    assert json.loads((adapter / "metadata.json").read_text())["leakedTestRows"] == 1
    repeated = write_jsonl(settings.datasets / "twice.jsonl", colour_rows(20) * 2)
    studio = Studio.open(settings)
    try:
        check = TrainActions(studio).check_dataset
        *_, why, _ = check("toy", str(repeated), "twice.jsonl", lora_layers=2, test_split=0.2)
        assert "**Note:**" in why and "test row(s) of twice.jsonl nearly copy" in why, why
        *_, why, _ = check("toy", str(repeated), "twice.jsonl", lora_layers=2)
        assert "Note" not in why  # no test rows, nothing to say
    finally:
        studio.close()


def test_the_leak_check_is_kept_until_the_file_changes(tmp_path):
    """The page asks at every edit of the form: a file unchanged is not read again; an edited
    one is."""
    from core.data.scan import _test_leaks, scan_dataset

    rows = [chat(f"Question {i} about the harbour?", f"Answer {i} about gulls.") for i in range(40)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows + rows[:5])  # five rows twice
    found = scan_dataset(data, batch_size=4, seed=0, test_split=0.3).test_leaks()
    before = _test_leaks.cache_info()
    again = scan_dataset(data, batch_size=4, seed=0, test_split=0.3).test_leaks()
    assert again == found and _test_leaks.cache_info().hits == before.hits + 1
    write_jsonl(data, rows)  # no copies left
    changed = scan_dataset(data, batch_size=4, seed=0, test_split=0.3).test_leaks()
    assert _test_leaks.cache_info().misses == before.misses + 1 and not changed
