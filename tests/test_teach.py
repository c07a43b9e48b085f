"""Datasets made by a teacher (core/teach/): against a second real `lora-studio serve` as the
teacher (the toy model), the asked rows made with counts that add up, resumed after a real
SIGKILL with no row lost or made twice; the filters (the judge's threshold, near-duplicates,
the student's answers) each counted by their reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from core.teach.making import CHUNK, Making
from core.teach.recipe import Recipe
from tests.helpers import lora_studio, lora_studio_server, studio_with_toy, write_jsonl

TOPICS = ["the sea", "sailing ships", "treasure maps", "parrots", "storms", "islands"]


def counted(source: dict) -> int:
    return source["kept"] + sum(source["dropped"].values()) + source["spare"]


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory, toy_model):
    home = tmp_path_factory.mktemp("teacher")
    studio_with_toy(home, toy_model)
    with lora_studio_server(home, "serve") as (_, url, _):
        yield f"{url}/v1"


def generate(home: Path, topics: Path, url: str, rows: int, *more: str) -> list[str]:
    return [
        *("data", "generate", "--name", "sea", "--topics", str(topics), "--rows", str(rows)),
        *("--teacher-url", url, "--teacher-model", "toy", "--max-tokens", "12", *more),
    ]


def test_a_teacher_behind_another_studio_makes_the_rows_asked(tmp_path, teacher_url, toy_model):
    topics = tmp_path / "topics.txt"
    topics.write_text("\n".join(TOPICS) + "\n")
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    done = lora_studio(*generate(home, topics, teacher_url, 10), "--json", home=home)
    assert done.returncode == 0, done.stderr
    source = json.loads(done.stdout)
    rows = (home / "datasets" / "sea.jsonl").read_text().splitlines()
    assert len(rows) == 10 == source["kept"] and counted(source) == source["asked"]
    assert source["extra"]["teacher"] == f"toy at {teacher_url}"
    assert all(json.loads(r)["messages"][1]["role"] == "assistant" for r in rows)
    assert not (home / "datasets" / ".making-sea").exists()
    trained = lora_studio(
        *("train", "--model", "toy", "--data", "sea", "--epochs", "1", "--lora-layers", "2"),
        *("--batch-size", "2", "--samples", "0"),
        home=home,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_a_killed_generation_resumes_without_losing_or_repeating_a_row(
    tmp_path, teacher_url, toy_model
):
    topics = tmp_path / "topics.txt"
    topics.write_text("\n".join(TOPICS) + "\n")
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    command = [sys.executable, "-m", "webapp", *generate(home, topics, teacher_url, 40)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    state = home / "datasets" / ".making-sea" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["kept"] >= CHUNK:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = json.loads(state.read_text())["kept"]
    lines = (state.parent / "rows.jsonl").read_text().splitlines()
    assert 0 < kept < 40 and len(lines) >= kept  # the rows committed (and perhaps more)
    before = lines[:kept]
    done = lora_studio(*generate(home, topics, teacher_url, 40), "--json", home=home)
    assert done.returncode == 0, done.stderr
    rows = (home / "datasets" / "sea.jsonl").read_text().splitlines()
    assert len(rows) == 40 and rows[:kept] == before  # nothing lost, nothing twice
    assert max(Counter(rows).values()) == 1
    source = json.loads(done.stdout)
    assert counted(source) == source["asked"]
    again = lora_studio(*generate(home, topics, teacher_url, 4), home=home)
    assert again.returncode == 2 and "exists already" in again.stderr


class Scripted:
    """A teacher reading from a list (the filters' logic, apart from any model)."""

    def __init__(self, replies: list[str]):
        self.replies = iter(replies)

    def answers(self, conversations, how):
        return [next(self.replies) for _ in conversations]

    def describe(self):
        return "scripted"


def test_the_judge_the_duplicates_and_the_student_drop_rows_each_counted(tmp_path):
    recipe = Recipe("made", rows=3, source="topics", seeds=["a"], min_score=5, shape="preference")
    questions = ["Q one?", "Q two?", "Q one?", "", "Q five?", "Q six?", "Q seven?", "Q eight?"]
    answers = ["good A1", "bad A2", "good A1", "good", "good A5", "good A6", "good A7", "x"]
    teacher = Scripted(questions + answers)
    student = Scripted(["worse"] * 4 + ["good A5"] + ["worse"] * 3)

    def judge(prompt: str) -> str:
        return "Rating: [[8]]" if "good" in prompt else "Rating: [[2]]"

    making = Making(recipe, tmp_path / ".making-made", teacher, judge=judge, student=student)
    done = making.run(tmp_path)
    assert done.kept == 3 and done.asked == CHUNK
    assert done.dropped == Counter(
        {
            "rated under 5": 1,  # bad A2
            "near-duplicate": 1,  # Q one? good A1, again
            "empty": 1,
            "the student's answer is the teacher's": 1,  # good A5
        }
    )
    assert done.spare == 1  # Q eight: asked, not needed
    rows = [json.loads(line) for line in (tmp_path / "made.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rows] == ["good A1", "good A6", "good A7"]
    assert all(r["rejected"] == "worse" for r in rows)
    source = json.loads((tmp_path / "made.source.json").read_text())
    assert counted(source) == source["asked"] == 8


def test_bad_options_are_refused_before_anything_is_asked(tmp_path, toy_model):
    topics = write_jsonl(tmp_path / "empty.jsonl", [])
    home = tmp_path / "studio"
    studio_with_toy(home, toy_model)
    base = ["data", "generate", "--name", "x", "--rows", "2"]
    both = ["--teacher", "toy", "--teacher-url", "http://h/v1", "--teacher-model", "m"]
    cases = [
        (["--topics", str(topics), *both], "one teacher"),
        (["--topics", str(tmp_path / "none.txt"), "--teacher", "toy"], "does not exist"),
        (["--topics", str(topics), "--teacher", "toy"], "nothing to make questions from"),
        (["--topics", str(topics), "--teacher", "nope"], "unknown model"),
    ]
    for flags, said in cases:
        done = lora_studio(*base, *flags, home=home)
        assert done.returncode == 2 and said in done.stderr, (flags, done.stderr)


def test_the_page_makes_a_dataset_with_a_studio_model_and_picks_it(tmp_path, toy_model):
    from webapp.page.studio import Studio
    from webapp.page.train.actions import TrainActions

    settings = studio_with_toy(tmp_path / "studio", toy_model)
    studio = Studio.open(settings)
    try:
        train = TrainActions(studio)
        made = list(
            train.teaching.make(
                "sea", "topics", "\n".join(TOPICS), 6, "toy", "", "", "", None, None
            )
        )
        status, path, name = made[-1]
        assert status.startswith("Made **sea.jsonl**: 6 kept"), status
        assert name == "sea.jsonl" and path == str(settings.datasets / "sea.jsonl")
        *_, why, _ = train.check_dataset("toy", path, name, lora_layers=2, batch_size=2)
        assert why.startswith("Ready"), why
    finally:
        studio.close()


def test_questions_come_from_documents_passages_and_examples_styles(tmp_path):
    from core.teach.recipe import PASSAGE_CHARS, read_seeds

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "log.md").write_text("# The log\n\nWe saw land.\n\n" + "Waves. " * 400)
    (docs / "blob.txt").write_bytes(b"\x00\x01binary")
    passages = read_seeds("docs", docs)
    assert passages[0].startswith("# The log") and len(passages) >= 2
    assert all(len(p) <= PASSAGE_CHARS + 3000 for p in passages)  # a block is never split
    rows = [{"prompt": f"Question {i}?", "completion": "x"} for i in range(7)]
    examples = read_seeds("examples", write_jsonl(tmp_path / "ex.jsonl", rows))
    assert examples == [
        "\n".join(f"- Question {i}?" for i in range(5)),
        "- Question 5?\n- Question 6?",
    ]
    recipe = Recipe("r", rows=3, source="docs", seeds=passages)
    asked = recipe.question_prompt(len(passages))[0]["content"]  # the first passage, again
    assert passages[0] in asked and "question number 2" in asked
