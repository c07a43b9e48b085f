"""The training script on its own: help, a clean stdout, SIGTERM, a real out-of-memory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core import protocol
from core.errors import StudioError
from core.params import TrainingParams
from core.train.service import TrainingService
from tests.helpers import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train_lora.py"


def worker(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_help_runs_standalone():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--learning-rate" in result.stdout and "--lora-layers" in result.stdout


def test_stdout_holds_protocol_lines_only(tmp_path, toy_model, colour_dataset):
    """mlx-lm prints to stdout (rich consoles, warnings such as the one for rows longer than
    max_seq_length): none of it may reach the protocol stream."""
    rows = [json.loads(line) for line in colour_dataset.read_text().splitlines()]
    rows[0]["messages"][1]["content"] = "The sky is very very blue. " * 20  # > max_seq_length
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    process = worker(
        "--model",
        str(toy_model),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--lora-layers",
        "-1",
        "--learning-rate",
        "5e-3",
        "--max-seq-length",
        "64",
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "longer than 64 tokens" in stderr  # mlx-lm's warning was printed, to stderr
    lines = stdout.splitlines()
    assert all(protocol.parse_line(line) is not None for line in lines), stdout
    assert json.loads(lines[-1])["type"] == "complete"
    assert "\x1b[" not in stdout  # no rich console escapes leaked in
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "adapters.safetensors",
        "adapter_config.json",
    }


def test_bad_parameters_become_an_error_line(tmp_path, toy_model, colour_dataset):
    process = worker(
        "--model",
        str(toy_model),
        "--data",
        str(colour_dataset),
        "--output",
        str(tmp_path),
        "--rank",
        "999",
    )
    stdout, _ = process.communicate(timeout=60)
    event = protocol.parse_line(stdout.strip().splitlines()[-1])
    assert isinstance(event, protocol.Error) and event.kind == "params"
    assert "rank = 999" in event.error and process.returncode == 1


def test_bad_data_names_file_and_line(tmp_path, toy_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"}\n{"text": 3}\n')
    process = worker(
        "--model",
        str(toy_model),
        "--data",
        str(bad),
        "--output",
        str(tmp_path),
        "--lora-layers",
        "-1",
    )
    stdout, _ = process.communicate(timeout=60)
    event = protocol.parse_line(stdout.strip().splitlines()[-1])
    assert (event.kind, event.file, event.line) == ("dataset", "bad.jsonl", 3)


def test_sigterm_stops_at_the_next_step(tmp_path, toy_model, colour_dataset):
    output = tmp_path / "out"
    process = worker(
        "--model",
        str(toy_model),
        "--data",
        str(colour_dataset),
        "--output",
        str(output),
        "--epochs",
        "1000",
        "--lora-layers",
        "-1",
    )
    for line in process.stdout:
        if isinstance(protocol.parse_line(line), protocol.Progress):
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stdout.read().splitlines()
    assert process.wait(timeout=30) == 130
    event = protocol.parse_line(rest[-1])
    assert isinstance(event, protocol.Error) and event.kind == "cancelled"
    assert not (output / "adapter_config.json").exists()  # nothing loadable was left


class MemoryCappedService(TrainingService):
    """The real worker under an address-space limit, so allocations really fail."""

    def worker_command(self):
        cap = 'ulimit -v 4000000; exec "$0" "$@"'
        return ["bash", "-c", cap, *super().worker_command()]


def test_out_of_memory_gets_advice_and_leaves_no_adapter(studio, toy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", "16")  # the plan's budget, whatever is free
    long_text = " ".join(["the sky is blue and the sun is red"] * 400)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"text": long_text}] * 32)
    write_jsonl(data / "valid.jsonl", [{"text": "short"}])  # keeps the first validation quick
    params = TrainingParams(lora_layers=-1, batch_size=32, max_seq_length=4096, epochs=1)
    service = MemoryCappedService(studio)
    with pytest.raises(StudioError, match="would not fit in memory"):  # the plan saw it coming
        service.start(toy_model, data, params)
    run = service.start(toy_model, data, params, force=True)
    final = run.wait(timeout=300)
    assert isinstance(final, protocol.Error) and final.kind == "out_of_memory"
    assert "batch size" in final.hint and "The plan for this run: needs about" in final.hint
    assert not any(p.is_dir() for p in studio.adapters.iterdir())
    assert service.runs.get(run.id).state == "interrupted"  # kept, resumable
