"""``lora-studio train`` from the shell, as a person runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def lora_studio(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "webapp", *args], capture_output=True, text=True, env=env,
        timeout=180,
    )  # fmt: skip


def test_train_prints_where_the_adapter_went(tmp_path, toy_model, colour_dataset):
    result = lora_studio(
        "train", "--model", str(toy_model), "--data", str(colour_dataset), "--epochs", "1",
        "--lora-layers", "-1", "--learning-rate", "5e-3", "--name", "from the shell",
        home=tmp_path / "home",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"adapter saved to {tmp_path / 'home' / 'adapters'}" in result.stdout
    assert "model id: lora/" in result.stdout
    assert "validation loss" in result.stderr  # the progress display


def test_refusals_exit_non_zero_without_a_traceback(tmp_path, toy_model, colour_dataset):
    bad_param = lora_studio(
        "train", "--model", str(toy_model), "--data", str(colour_dataset), "--rank", "0",
        home=tmp_path,
    )  # fmt: skip
    assert bad_param.returncode == 2
    assert "rank = 0 is out of range" in bad_param.stderr
    no_model = lora_studio(
        "train", "--model", str(tmp_path / "none"), "--data", str(colour_dataset), home=tmp_path
    )
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr
    for result in (bad_param, no_model):
        assert "Traceback" not in result.stderr
