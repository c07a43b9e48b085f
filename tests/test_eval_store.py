"""The evaluations folder under kills and two writers: a row counts once its newline is on
disk, one process runs an evaluation at a time, and a Stop reaches whichever process runs
it. Also the runner's endings: a rubric with braces, an unexpected error, perplexity alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from core import judge as judging
from core.errors import StudioError
from core.eval import runner, store
from core.eval.generation import Sampling
from core.eval.store import EvalStore
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from tests.helpers import lora_studio, studio_with_toy, write_jsonl


def new_eval(folder) -> tuple[EvalStore, str]:
    evals = EvalStore(folder)
    spec = evals.create(
        models=["toy"],
        data="x",
        data_name="x",
        fingerprint="f",
        metrics=[],
        sampling={},
        rows_total=9,
    )
    return evals, spec.id


def test_a_row_whose_newline_never_reached_the_disk_is_not_counted_nor_lost(tmp_path):
    """A kill between a row's closing brace and its newline: the row is whole JSON but not
    counted, so the resumed evaluation answers it again, and the next append cuts it."""
    evals, eval_id = new_eval(tmp_path)
    evals.append(eval_id, [{"line": 1}, {"line": 2}])
    rows_file = tmp_path / eval_id / store.ROWS_FILE
    with rows_file.open("ab") as f:
        f.write(json.dumps({"line": 3}).encode())  # ... killed before the "\n"
    assert [r["line"] for r in evals.rows(eval_id)] == [1, 2]
    evals.append(eval_id, [{"line": 3}, {"line": 4}])
    assert [r["line"] for r in evals.rows(eval_id)] == [1, 2, 3, 4]
    assert rows_file.read_bytes().count(b"\n") == 4


def test_a_cut_line_longer_than_the_tail_block_is_cut_whole(tmp_path):
    evals, eval_id = new_eval(tmp_path)
    evals.append(eval_id, [{"line": 1}])
    with (tmp_path / eval_id / store.ROWS_FILE).open("ab") as f:
        f.write(b'{"answer": "' + b"x" * (3 * store.TAIL_BLOCK))
    evals.append(eval_id, [{"line": 2}])
    assert [r["line"] for r in evals.rows(eval_id)] == [1, 2]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from core.eval.store import EvalStore
    evals = EvalStore(Path(sys.argv[1]))
    with evals.running(sys.argv[2]):
        print("held", flush=True)
        while not evals.stop_requested(sys.argv[2]):
            time.sleep(0.05)
    print("stopped", flush=True)
    """
)


def test_one_process_runs_an_evaluation_and_a_stop_reaches_it_from_another(tmp_path, monkeypatch):
    """Another process holds the evaluation (as a page's or a CLI's run would): a resume is
    refused naming its pid; ``lora-studio eval --stop`` reaches it; once it is gone the
    evaluation is "interrupted" or stopped, and resumes."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    evals, eval_id = new_eval(home / "evals")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home / "evals"), eval_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert evals.is_running(eval_id)
        running = pytest.raises(StudioError, match=f"is running \\(process {holder.pid}\\)")
        with running, evals.running(eval_id):
            pass
        with pytest.raises(StudioError, match="running already"):
            runner.resume(evals, None, eval_id)
        listed = json.loads(lora_studio("evals", "--json", home=home).stdout)
        assert listed[0]["state"] == "running"
        stopped = lora_studio("eval", "--stop", eval_id, home=home)
        assert stopped.returncode == 0, stopped.stderr
        assert holder.stdout.readline().strip() == "stopped"
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert not evals.is_running(eval_id)
    assert evals.state(evals.get(eval_id)) == "interrupted"  # spec says running; nobody does
    assert lora_studio("eval", "--stop", eval_id, home=home).returncode == 2
    with evals.running(eval_id):  # the lock is free again
        assert not evals.stop_requested(eval_id)


def test_a_rubric_with_literal_braces_is_filled_by_name_only():
    rubric = 'Rate it. Reply as JSON like {"score": 5} then Rating: [[N]]. {question} / {answer}'
    filled = judging.fill(rubric, question="Q {answer}?", answer="A", reference="")
    assert filled == 'Rate it. Reply as JSON like {"score": 5} then Rating: [[N]]. Q {answer}? / A'
    asked = []
    score, _ = judging.rubric_score(
        lambda p: asked.append(p) or "Rating: [[4]]", "Why {x}?", None, "{}", rubric
    )
    assert score == 4.0 and '{"score": 5}' in asked[0] and "Why {x}?" in asked[0]


@pytest.fixture
def toy_engine(tmp_path, toy_model):
    settings = studio_with_toy(tmp_path / "home", toy_model)
    engine = InferenceEngine(ModelRegistry(settings))
    yield settings, engine
    engine.close()


def test_an_unexpected_error_fails_the_evaluation_keeping_its_rows(toy_engine, tmp_path):
    settings, engine = toy_engine
    rows = [{"prompt": f"Sky {i}?", "completion": "Blue."} for i in range(4)]
    data = write_jsonl(tmp_path / "held-out.jsonl", rows)
    evals = EvalStore(settings.evals)
    evaluation = runner.prepare(
        evals,
        engine,
        ["toy"],
        str(data),
        metrics=("exact_match",),
        sampling=Sampling(max_tokens=4, batch_size=2),
        judge={"kind": "studio", "model": "toy"},
    )
    calls = []

    def breaks(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) > 2:  # the second chunk's judging (2 rows, a score each)
            raise KeyError("question")  # what str.format raised on a rubric with braces
        return "Rating: [[5]]"

    evaluation.judge = runner.Judge(breaks, "breaks")
    ended = evaluation.run()
    assert ended.state == "failed" and "KeyError" in ended.error
    assert ended.rows_done == 2 == len(evals.rows(ended.id))
    assert not evals.is_running(ended.id)
    again = runner.resume(evals, engine, ended.id)
    again.judge = runner.Judge(lambda prompt: "Rating: [[6]]", "back")
    finished = again.run()
    assert finished.state == "complete" and finished.rows_done == 4
    scores = finished.summary["judge"]["scores"]["toy"]
    assert scores["n"] == 4 and scores["mean"] == pytest.approx(5.5)


def test_perplexity_alone_gives_its_interval(toy_engine, tmp_path):
    settings, engine = toy_engine
    rows = [{"prompt": f"Sky {i}?", "completion": "The sky is blue."} for i in range(3)]
    data = write_jsonl(tmp_path / "held-out.jsonl", rows)
    evaluation = runner.prepare(
        EvalStore(settings.evals),
        engine,
        ["toy"],
        str(data),
        metrics=("perplexity",),
        sampling=Sampling(max_tokens=4, batch_size=4),
    )
    found = evaluation.run().summary["metrics"]["toy"]
    assert set(found) == {"perplexity"}
    stat = found["perplexity"]
    assert stat["n"] == 3 and 1 < stat["low"] <= stat["mean"] <= stat["high"]


def test_a_stop_between_chunks_keeps_the_rows_and_says_stopped(toy_engine, tmp_path):
    settings, engine = toy_engine
    rows = [{"prompt": f"Sky {i}?", "completion": "Blue."} for i in range(6)]
    data = write_jsonl(tmp_path / "held-out.jsonl", rows)
    evals = EvalStore(settings.evals)
    evaluation = runner.prepare(
        evals,
        engine,
        ["toy"],
        str(data),
        metrics=("exact_match",),
        sampling=Sampling(max_tokens=4, batch_size=2),
    )
    evaluation.progress = lambda done, total: evals.request_stop(evaluation.spec.id)
    started = time.monotonic()
    ended = evaluation.run()
    assert ended.state == "stopped" and ended.rows_done == 2
    assert time.monotonic() - started < 120
