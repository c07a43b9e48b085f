"""Continued pretraining's data: a folder of documents imported as text chunks of the base's
tokens (``lora-studio data import FOLDER --shape text``), a binary file and documents that need
a missing reader skipped by name, then trained on with the loss on every token."""

from __future__ import annotations

import importlib.util
import json
import random

from core.models.inspect import tokenizer
from tests.helpers import lora_studio, studio_with_toy

WORDS = ["the", "sea", "ship", "captain", "gold", "island", "wind", "sail", "storm"]


def test_a_folder_of_documents_becomes_overlapping_chunks_and_trains(tmp_path, toy_model):
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    docs = tmp_path / "docs"
    (docs / "notes").mkdir(parents=True)
    rng = random.Random(0)
    story = " ".join(rng.choices(WORDS, k=400)) + "."
    (docs / "story.txt").write_text(story)
    (docs / "notes" / "log.md").write_text("# Log\n\nThe crew saw land. ✓\n")
    (docs / "blob.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (docs / "picture.png").write_bytes(bytes(range(256)))
    (docs / "paper.pdf").write_bytes(b"%PDF-1.4 not really")
    flags = ["--shape", "text", "--model", "toy", "--chunk-tokens", "64", "--overlap", "8"]
    done = lora_studio(
        "data", "import", str(docs), *flags, "--name", "logbook", "--json", home=home
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    files = {f["name"]: f for f in report["files"]}
    assert set(files) == {"story.txt", "notes/log.md"}
    assert files["story.txt"]["bytes"] == len(story.encode())
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert skipped["blob.txt"].startswith("not text (binary")
    assert skipped["picture.png"] == "not a document (.png)"
    if importlib.util.find_spec("pypdf") is None:
        assert "needs pypdf" in skipped["paper.pdf"]
    rows = [json.loads(line) for line in (home / "datasets" / "logbook.jsonl").open()]
    assert json.loads((home / "datasets" / "logbook.source.json").read_text()) == report
    # the story's chunks, counted independently: 64-token windows every 56 tokens
    tok = tokenizer(toy_model)
    ids = tok.encode(story, add_special_tokens=False)
    expected = [tok.decode(ids[s : s + 64]) for s in range(0, len(ids) - 8, 56)]
    assert files["story.txt"]["chunks"] == len(expected) > 3
    story_rows = [r["text"] for r in rows if not r["text"].startswith("# Log")]
    assert story_rows == expected
    assert all(len(tok.encode(r["text"], add_special_tokens=False)) <= 66 for r in rows)
    run = ["--model", "toy", "--data", "logbook", "--epochs", "1", "--lora-layers", "2"]
    trained = lora_studio("train", *run, home=home, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_a_folder_without_text_is_refused_and_writes_nothing(tmp_path, toy_model):
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "blob.txt").write_bytes(b"\x00\x01")
    done = lora_studio(
        "data", "import", str(docs), "--shape", "text", "--model", "toy", "--name", "d", home=home
    )
    assert done.returncode == 2 and "no text to import (1 file(s) skipped)" in done.stderr
    assert not (home / "datasets" / "d.jsonl").exists()
    no_model = lora_studio("data", "import", str(docs), "--shape", "text", "--name", "d", home=home)
    assert no_model.returncode == 2 and "needs --model" in no_model.stderr


def test_the_pages_path_box_takes_a_folder_of_documents_in_the_picked_bases_tokens(
    tmp_path, toy_model
):
    """The Train tab's server path: a folder of documents (a binary among them) becomes a
    dataset of text chunks, checked like any other; without a base picked it says why."""
    import gradio as gr
    import pytest

    from webapp.page.studio import Studio
    from webapp.page.train.actions import TrainActions

    settings = studio_with_toy(tmp_path / "studio", toy_model)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "story.txt").write_text(" ".join(random.Random(1).choices(WORDS, k=9000)) + ".")
    (docs / "blob.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    studio = Studio.open(settings)
    try:
        train = TrainActions(studio)
        with pytest.raises(gr.Error, match="pick a base model first"):
            train.take_path(str(docs))
        path, name, *_ = train.take_path(str(docs), "toy")
        assert name == "docs.jsonl" and path == str(settings.datasets / "docs.jsonl")
        source = json.loads((settings.datasets / "docs.source.json").read_text())
        assert [f["name"] for f in source["files"]] == ["story.txt"]
        assert source["skipped"][0]["name"] == "blob.txt"
        summary, *_, why, _ = train.check_dataset("toy", path, name, lora_layers=2)
        assert "text** format" in summary and why.startswith("Ready"), why
    finally:
        studio.close()
