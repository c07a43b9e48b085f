import json

import pytest
from mlx_lm.utils import load_tokenizer

from core.data.check import DatasetError
from core.data.scan import load_dataset, minimum_examples
from core.data.tokens import token_statistics
from tests.helpers import colour_rows, write_jsonl

GOOD_CHAT = {
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
}


def lines_file(tmp_path, lines: list[str | bytes], name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def problems(path, **kwargs):
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, batch_size=kwargs.pop("batch_size", 1), **kwargs)
    return caught.value.problems


def good_lines(n=8):
    return [json.dumps(GOOD_CHAT)] * n


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ("", "blank line"),
        ('{"text": "plain"}', "text row in a chat dataset"),
        ('{"foo": 1}', "no known fields"),
        (
            '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}',
            '"content" must be a string',
        ),
        (
            '{"messages": [{"role": "wizard", "content": "x"}, '
            '{"role": "assistant", "content": "y"}]}',
            "unknown role 'wizard'",
        ),
        (
            '{"messages": [{"role": "user", "content": "  "}, '
            '{"role": "assistant", "content": "y"}]}',
            "empty content",
        ),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
        ('{"messages": []}', "non-empty list"),
    ],
)
def test_each_bad_line_is_reported_with_its_number(tmp_path, bad_line, expected):
    lines = good_lines(4) + [bad_line] + good_lines(4)
    found = problems(lines_file(tmp_path, lines))
    assert len(found) == 1
    assert found[0].line == 5 and found[0].file == "data.jsonl"
    assert expected in found[0].message
    assert found[0].fix  # every problem says how to fix it


def test_non_utf8_bytes(tmp_path):
    lines = good_lines(2) + [b'{"text": "caf\xe9"}'] + good_lines(2)
    [found] = problems(lines_file(tmp_path, lines))
    assert found.line == 3 and "not UTF-8" in found.message and "0xe9" in found.message


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "q", "completion": 3}, '"completion" must be a string'),
        ({"prompt": "q", "completion": ""}, '"completion" is empty'),
        ({"prompt": None, "completion": "a"}, '"prompt" must be a string'),
    ],
)
def test_completion_fields(tmp_path, row, expected):
    lines = [json.dumps({"prompt": "q", "completion": "a"})] * 3 + [json.dumps(row)]
    [found] = problems(lines_file(tmp_path, lines))
    assert found.line == 4 and expected in found.message


def test_text_rows_need_text(tmp_path):
    lines = [json.dumps({"text": "hello"}), json.dumps({"text": ""})]
    [found] = problems(lines_file(tmp_path, lines))
    assert found.line == 2 and '"text" is empty' in found.message


def test_all_problems_are_reported_up_to_a_cap(tmp_path):
    few = problems(lines_file(tmp_path, good_lines(1) + ["oops"] * 3))
    assert [p.line for p in few] == [2, 3, 4]
    with pytest.raises(DatasetError) as caught:
        load_dataset(lines_file(tmp_path, good_lines(1) + ["oops"] * 80), batch_size=1)
    assert len(caught.value.problems) == 50
    assert "and 30 more" in caught.value.message


def test_empty_file(tmp_path):
    [found] = problems(lines_file(tmp_path, []))
    assert "empty" in found.message


def test_too_few_examples_says_how_many_are_needed(tmp_path):
    needed = minimum_examples(4, 0.2)
    assert needed == 5  # 5 rows -> 1 validation + 4 train, one batch
    [found] = problems(lines_file(tmp_path, good_lines(3)), batch_size=4)
    assert f"needs at least {needed}" in found.message and "3 example" in found.message


def test_not_a_jsonl_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    [found] = problems(path)
    assert ".jsonl" in found.message


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"text": "hello world"}, "text"),
        ({"prompt": "q", "completion": "a"}, "completions"),
        (GOOD_CHAT, "chat"),
        ({**GOOD_CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "chat"),
    ],
)
def test_formats_are_detected(tmp_path, row, fmt):
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row] * 10), batch_size=4)
    assert data.format == fmt
    assert (len(data.train), len(data.valid)) == (8, 2)


def test_split_is_deterministic_and_disjoint(tmp_path):
    rows = colour_rows(50)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a = load_dataset(path, batch_size=4, seed=1)
    b = load_dataset(path, batch_size=4, seed=1)
    c = load_dataset(path, batch_size=4, seed=2)
    assert a.train == b.train and a.valid == b.valid
    assert a.valid != c.valid
    assert len(a.valid) == 10 and len(a.train) == 40
    assert sorted(map(json.dumps, a.train + a.valid)) == sorted(map(json.dumps, rows))


def test_folder_with_train_and_valid(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", colour_rows(8))
    write_jsonl(folder / "valid.jsonl", colour_rows(3, seed=1))
    data = load_dataset(folder, batch_size=4)
    assert (len(data.train), len(data.valid), data.name) == (8, 3, "data")
    (folder / "valid.jsonl").write_text('{"text": "x"}\n')
    [found] = problems(folder)
    assert found.file == "valid.jsonl" and found.line == 1


def test_token_statistics_use_the_models_tokenizer(tmp_path, toy_model):
    from core.data.scan import scan_dataset

    tokenizer = load_tokenizer(toy_model)
    rows = colour_rows(10)
    scan = scan_dataset(write_jsonl(tmp_path / "rows.jsonl", rows), batch_size=2)
    masked_tokens = scan.sample_tokens(tokenizer, mask_prompt=True)
    stats = token_statistics(masked_tokens, max_seq_length=12)
    expected = [len(tokenizer.apply_chat_template(r["messages"])) for r in rows]
    assert stats.examples == 10
    assert (stats.min_tokens, stats.max_tokens) == (min(expected), max(expected))
    assert stats.over_max_length == sum(n > 12 for n in expected)
    # one scan, both masks: the kept tokenization follows the mask asked for
    unmasked = token_statistics(scan.sample_tokens(tokenizer, False), max_seq_length=4096)
    masked = token_statistics(scan.sample_tokens(tokenizer, True), max_seq_length=4096)
    assert unmasked.trained_tokens == sum(expected) > masked.trained_tokens > 0


def test_the_streamed_scan_and_split_equal_the_in_memory_ones(tmp_path):
    from core.data.scan import load_dataset, scan_dataset

    rows = [{"text": f"row {i}"} for i in range(103)]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    loaded = load_dataset(path, batch_size=4, validation_split=0.2, seed=7)
    scanned = scan_dataset(path, batch_size=4, validation_split=0.2, seed=7)
    assert (scanned.train_count, scanned.valid_count, scanned.total) == (
        len(loaded.train),
        len(loaded.valid),
        103,
    )
    assert scanned.format == loaded.format == "text" and scanned.sample == rows
    written = load_dataset(scanned.write(tmp_path / "split"), batch_size=4)
    # the same rows on each side; the streamed split keeps the file's order
    assert sorted(map(str, written.train)) == sorted(map(str, loaded.train))
    assert sorted(map(str, written.valid)) == sorted(map(str, loaded.valid))


def test_a_scan_keeps_a_bounded_sample(tmp_path):
    from core.data.scan import SAMPLE_ROWS, scan_dataset

    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"r{i}"}) + "\n" for i in range(3000)))
    scanned = scan_dataset(path, batch_size=4)
    assert scanned.total == 3000 and len(scanned.sample) == SAMPLE_ROWS


def test_a_binary_file_named_jsonl_is_one_problem_not_one_per_line(tmp_path):
    from core.data.check import DatasetError
    from core.data.scan import scan_dataset

    binary = tmp_path / "photo.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\n\xff\x00" * 400)
    with pytest.raises(DatasetError) as refused:
        scan_dataset(binary, batch_size=4)
    (problem,) = refused.value.problems
    assert "a binary file" in problem.message and problem.line is None
