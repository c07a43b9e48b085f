"""``lora-studio data import``: files the tests write in each format and shape become datasets
that the studio's own check accepts (and one trains), with row counts matching the source;
bad input gets a sentence naming the row or the column, and leaves no dataset behind."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from core.data.scan import scan_dataset
from tests.helpers import lora_studio

QUESTIONS = [
    (f"What is {i} plus {i}?", f"It is {2 * i}.\nCounted twice:\n{i}, {i}.") for i in range(40)
]


def imported(home: Path, source: Path | str, name: str, *flags: str) -> dict:
    done = lora_studio("data", "import", str(source), "--name", name, *flags, "--json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(home: Path, source: Path | str, *flags: str) -> str:
    done = lora_studio("data", "import", str(source), "--name", "bad", *flags, home=home)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not list((home / "datasets").glob("bad*")) and not list(
        (home / "datasets").glob(".bad*")
    ), "a half-written dataset was left"
    return done.stderr


def rows_of(report: dict) -> list[dict]:
    lines = Path(report["path"]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def checked(report: dict):
    """The dataset as training checks it (every line), with its format."""
    return scan_dataset(report["path"], batch_size=4)


def test_a_csv_with_multi_line_quoted_fields_maps_two_columns(tmp_path):
    source = tmp_path / "exported.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "answer", "score"])
        writer.writerows([i, q, a, 0.5] for i, (q, a) in enumerate(QUESTIONS))
    report = imported(
        tmp_path / "home", source, "sums", "--map", "prompt=question", "--map", "completion=answer"
    )
    assert (report["rows_read"], report["rows_written"], report["skipped"]) == (40, 40, 0)
    assert report["checksum"].startswith("sha256:") and report["row_format"] == "completions"
    assert rows_of(report)[3] == {"prompt": QUESTIONS[3][0], "completion": QUESTIONS[3][1]}
    assert checked(report).format == "completions" and checked(report).total == 40
    source_json = json.loads((tmp_path / "home/datasets/sums.source.json").read_text())
    assert source_json["mapping"] == "prompt=question, completion=answer"


def test_a_parquet_file_in_a_known_shape_streams_its_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": [q for q, _ in QUESTIONS], "completion": [a for _, a in QUESTIONS]})
    pq.write_table(table, tmp_path / "sums.parquet", row_group_size=7)
    report = imported(tmp_path / "home", tmp_path / "sums.parquet", "sums")
    assert report["rows_written"] == 40 and report["format"] == "parquet"
    assert report["mapping"] == "completions (a known shape)"
    assert checked(report).total == 40


def test_an_alpaca_json_array_and_a_system_prompt(tmp_path):
    rows = [
        {"instruction": q, "input": "" if i % 2 else "Show your work.", "output": a}
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    report = imported(
        tmp_path / "home", tmp_path / "alpaca.json", "alpaca", "--system", "Be exact."
    )
    written = rows_of(report)
    assert len(written) == 40 and report["row_format"] == "chat"
    assert written[0]["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": f"{QUESTIONS[0][0]}\n\nShow your work."},
        {"role": "assistant", "content": QUESTIONS[0][1]},
    ]
    assert written[1]["messages"][1]["content"] == QUESTIONS[1][0]  # an empty input adds nothing
    assert checked(report).system_prompt == "Be exact."


def test_a_sharegpt_jsonl_gets_its_roles_mapped_and_bad_lines_skipped(tmp_path):
    lines = [
        json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
        for q, a in QUESTIONS
    ]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"conversations": [{"from": "alien", "value": "x"}]}))
    (tmp_path / "share.jsonl").write_text("\n".join(lines) + "\n")
    report = imported(tmp_path / "home", tmp_path / "share.jsonl", "share")
    assert (report["rows_read"], report["rows_written"], report["skipped"]) == (42, 40, 2)
    assert (
        report["skips"][0]["where"] == "line 6" and "not valid JSON" in report["skips"][0]["reason"]
    )
    assert report["skips"][1] == {
        "where": "line 10",
        "reason": "turn 1 is from 'alien', not one of human, gpt, system",
    }
    assert rows_of(report)[0]["messages"][1] == {"role": "assistant", "content": QUESTIONS[0][1]}
    assert checked(report).format == "chat"


def test_a_datasets_folder_saved_with_save_to_disk_imports_and_trains(tmp_path, toy_model):
    from datasets import Dataset

    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in QUESTIONS
    ]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    home = tmp_path / "home"
    report = imported(home, tmp_path / "saved", "saved")
    assert report["rows_written"] == 40 and report["format"] == "hf"
    flags = ["--model", str(toy_model), "--data", report["path"], "--epochs", "1"]
    trained = lora_studio("train", *flags, "--lora-layers", "-1", home=home)
    assert trained.returncode == 0, trained.stderr
    assert "adapter saved to" in trained.stdout


def test_duplicates_and_empty_targets_are_counted_with_their_rows(tmp_path):
    source = tmp_path / "dups.csv"
    source.write_text("q,a\nhi,hello\nhi,hello\nempty,\n  ,x\nbye,see you\n")
    report = imported(
        tmp_path / "home", source, "dups", "--map", "prompt=q", "--map", "completion=a", "--dedupe"
    )
    assert (report["rows_read"], report["rows_written"], report["duplicates"]) == (5, 2, 1)
    assert [s["where"] for s in report["skips"]] == ["line 4 (row 3)", "line 5 (row 4)"]
    assert "'a' is empty" in report["skips"][0]["reason"]
    assert source.read_text().startswith("q,a\nhi,hello")  # the source is never changed


def test_bad_sources_are_refused_by_row_or_column_and_leave_nothing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    home = tmp_path / "home"
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    assert "not a text file" in refused(home, binary)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("q,a\nfine,yes\ntoo,many,fields\nshort\n")
    report = imported(home, ragged, "ragged", "--map", "prompt=q", "--map", "completion=a")
    assert report["skips"] == [
        {"where": "line 3 (row 2)", "reason": "3 field(s), the header has 2"},
        {"where": "line 4 (row 3)", "reason": "1 field(s), the header has 2"},
    ]
    quote = tmp_path / "quote.csv"
    quote.write_text('q,a\nfine,yes\n"never closed,x\nmore,rows\n')
    said = refused(home, quote, "--map", "prompt=q", "--map", "completion=a")
    assert "starts on line 3" in said and "unterminated quote" in said
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"q": ["a", "b"], "meta": [{"x": 1}, {"x": 2}]}), nested)
    assert "'meta' holds a dict, not text" in refused(
        home, nested, "--map", "prompt=q", "--map", "completion=meta"
    )
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps([{"q": "a", "n": 4}, {"q": "b", "n": 5}]))
    assert "'n' holds a number (4), not text" in refused(
        home, numbers, "--map", "prompt=q", "--map", "completion=n"
    )
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"text": "x"}], "version": 2}))
    said = refused(home, wrapped)
    assert "holds a JSON object, not an array" in said and '"data" list' in said
    assert "no column answer" in refused(
        home, ragged, "--map", "prompt=q", "--map", "completion=answer"
    )
    assert "the columns are: q, a" in refused(
        home, ragged, "--map", "prompt=q", "--map", "completion=answer"
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("q,a\n,\n ,\n")
    said = refused(home, empty, "--map", "prompt=q", "--map", "completion=a")
    assert "no row could be imported (2 read, 2 skipped; first: line 2 (row 1)" in said
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("question,answer\nx,y\n")
    assert "--map prompt=question" in refused(home, unknown)


def test_a_hub_dataset_offline_with_nothing_cached_fails_in_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    started = time.monotonic()
    said = refused(tmp_path / "home", "someone/not-cached@train")
    assert time.monotonic() - started < 30
    assert "could not load the Hugging Face dataset someone/not-cached@train" in said
    assert "save_to_disk" in said


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x.jsonl"])
def test_a_name_never_leaves_the_datasets_folder(tmp_path, name):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "hello"}\n')
    done = lora_studio("data", "import", str(source), "--name", name, home=tmp_path / "home")
    assert done.returncode == 2 and "cannot name a dataset" in done.stderr


def test_trl_conversational_pairs_with_a_prompt_list_import_every_row(tmp_path):
    """TRL's conversational form with its prompt apart: {"prompt": [user], "chosen":
    [assistant], "rejected": [assistant]} (0 rows before: the prompt was dropped)."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Sky {i}?"}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Red."}],
        }
        for i in range(6)
    ]
    source = tmp_path / "trl.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = imported(tmp_path / "home", source, "trl", "--shape", "preference")
    assert report["rows_written"] == 6 and not report["skips"]
    assert rows_of(report)[0]["prompt"] == rows[0]["prompt"]
    dataset = checked(report)
    assert dataset.format == "preference" and dataset.total == 6


def test_one_number_among_text_cells_skips_its_row_only(tmp_path):
    """A numeric cell in a text column (a JSON or Parquet file's mixed types) is its row's
    problem: the import goes on with the other rows and names the skipped one."""
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(5)]
    rows[2]["a"] = 42
    source = tmp_path / "mixed.json"
    source.write_text(json.dumps(rows))
    report = imported(
        tmp_path / "home", source, "mixed", "--map", "prompt=q", "--map", "completion=a"
    )
    assert report["rows_written"] == 4
    assert report["skips"] == [
        {"where": "row 3", "reason": "'a' holds a number (42), not text: map a text column"}
    ]
