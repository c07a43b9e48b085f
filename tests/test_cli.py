"""``lora-studio train`` from the shell, as a person runs it."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.helpers import lora_studio


def train_quickly(toy_model, data, *extra: str, home) -> subprocess.CompletedProcess:
    """``lora-studio train`` for one epoch on the toy model."""
    args = ["--model", str(toy_model), "--data", str(data), "--epochs", "1", "--lora-layers", "-1"]
    return lora_studio("train", *args, *extra, home=home)


def test_train_prints_where_the_adapter_went(tmp_path, toy_model, colour_dataset):
    extra = ("--learning-rate", "5e-3", "--name", "from the shell")
    result = train_quickly(toy_model, colour_dataset, *extra, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert f"adapter saved to {tmp_path / 'home' / 'adapters'}" in result.stdout
    assert "model id: lora/" in result.stdout
    assert "validation loss" in result.stderr  # the progress display


def test_refusals_exit_non_zero_without_a_traceback(tmp_path, toy_model, colour_dataset):
    bad_param = lora_studio(
        "train",
        "--model",
        str(toy_model),
        "--data",
        str(colour_dataset),
        "--rank",
        "0",
        home=tmp_path,
    )
    assert bad_param.returncode == 2
    assert "rank = 0 is out of range" in bad_param.stderr
    no_model = lora_studio(
        "train", "--model", str(tmp_path / "none"), "--data", str(colour_dataset), home=tmp_path
    )
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr
    for result in (bad_param, no_model):
        assert "Traceback" not in result.stderr


def test_train_draws_a_progress_bar_on_a_terminal(tmp_path, toy_model, colour_dataset):
    """In a pseudo-terminal: rich's bar with ETA, loss and trained tokens/s, redrawn in place."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "LORA_STUDIO_HOME": str(tmp_path), "TERM": "xterm-256color"}
    env["COLUMNS"] = "200"
    command = [sys.executable, "-m", "webapp", "train", "--model", str(toy_model)]
    command += ["--data", str(colour_dataset), "--epochs", "2", "--lora-layers", "-1"]
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "━" in text and "24/24" in text  # the bar, full at the end
    assert "trained tok/s" in text and "loss" in text and "ETA" in text
    # redrawn in place: a carriage return that starts no new line, or a cursor move or line
    # erase (a pty turns every newline into \r\n, and colours alone are \x1b[...m)
    assert re.search(r"\r(?!\n)|\x1b\[\d*[ABK]", text), text[-500:]


def test_train_prints_plain_lines_when_not_a_terminal(tmp_path, toy_model, colour_dataset):
    result = train_quickly(toy_model, colour_dataset, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step 12/12 epoch 1 loss" in result.stderr and "trained tok/s" in result.stderr
    assert "━" not in result.stderr and "\x1b[" not in result.stderr


@pytest.fixture
def adapter_home(tmp_path, trained_adapter, toy_model):
    home = tmp_path / "home"
    shutil.copytree(trained_adapter, home / "adapters" / trained_adapter.name)
    shutil.copytree(toy_model, home / "models" / "toy")
    return home, trained_adapter.name


def test_adapters_commands_do_what_the_adapters_tab_does(adapter_home):
    home, adapter_id = adapter_home
    listed = lora_studio("adapters", "list", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["name"], row["available"]) == (f"lora/{adapter_id}", "Colours", True)
    table = lora_studio("adapters", "list", home=home)
    assert "Colours" in table.stdout and "available" in table.stdout

    renamed = lora_studio("adapters", "rename", f"lora/{adapter_id}", "Sky colours", home=home)
    assert renamed.returncode == 0, renamed.stderr
    shown = lora_studio("adapters", "show", adapter_id, home=home)
    assert json.loads(shown.stdout)["adapterName"] == "Sky colours"

    fused = lora_studio("adapters", "fuse", adapter_id, "--name", "toy-sky", home=home)
    assert fused.returncode == 0, fused.stderr
    assert (home / "models" / "toy-sky" / "config.json").is_file()

    unconfirmed = lora_studio("adapters", "delete", adapter_id, home=home)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert (home / "adapters" / adapter_id).is_dir()
    deleted = lora_studio("adapters", "delete", adapter_id, "--yes", home=home)
    assert deleted.returncode == 0 and not (home / "adapters" / adapter_id).exists()


def test_adapters_commands_refuse_unknown_ids(adapter_home):
    home, _ = adapter_home
    for args in (("show", "nope"), ("rename", "../x", "n"), ("delete", str(uuid.uuid4()))):
        result = lora_studio("adapters", *args, home=home)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_an_adapter_trained_on_a_base_given_as_a_folder_exports_and_fuses(
    tmp_path, toy_model, colour_dataset
):
    """`--model /some/folder` (not in the studio's models/): the adapter records the path,
    and export and fuse find its base the way chat does."""
    home = tmp_path / "home"
    trained = train_quickly(toy_model, colour_dataset, "--learning-rate", "5e-3", home=home)
    assert trained.returncode == 0, trained.stderr
    (adapter_id,) = [p.name for p in (home / "adapters").iterdir()]
    out = tmp_path / "peft"
    exported = lora_studio("export", adapter_id, "--format", "peft", "--out", str(out), home=home)
    assert exported.returncode == 0, exported.stderr
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    fused = lora_studio("adapters", "fuse", adapter_id, "--name", "fused", home=home)
    assert fused.returncode == 0, fused.stderr
    assert (home / "models" / "fused" / "config.json").is_file()


def test_models_list_names_each_base_with_its_size_and_source(tmp_path, toy_model):
    home = tmp_path / "home"
    shutil.copytree(toy_model, home / "models" / "toy")
    listed = lora_studio("models", "list", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["available"], row["source"]) == ("toy", True, "models folder")
    assert row["parameters"] == 180800 and 0 < row["size_gb"] < 0.01
    assert row["quantization"] is None and row["architecture"] == "llama"
    text = lora_studio("models", "list", home=home)
    assert text.returncode == 0 and text.stdout.startswith("toy ") and "available" in text.stdout


def test_an_adapter_is_named_as_the_page_shows_it(adapter_home):
    """The page shows an adapter's first 8 characters and its name: both name it here too;
    a start shared by two adapters is refused naming both."""
    home, adapter_id = adapter_home
    for given in (adapter_id[:8], "Colours", "colours", f"lora/{adapter_id}"):
        shown = lora_studio("adapters", "show", given, home=home)
        assert shown.returncode == 0, (given, shown.stderr)
        assert json.loads(shown.stdout)["adapterName"] == "Colours"
    twin = str(uuid.UUID(adapter_id[:8] + str(uuid.uuid4())[8:]))
    shutil.copytree(home / "adapters" / adapter_id, home / "adapters" / twin)
    both = lora_studio("adapters", "show", adapter_id[:8], home=home)
    assert both.returncode == 2 and "names 2 adapters" in both.stderr
    assert adapter_id[:8] in both.stderr and "Traceback" not in both.stderr
    unknown = lora_studio("adapters", "show", "nothing-like-it", home=home)
    assert unknown.returncode == 2 and "no adapter is named" in unknown.stderr


def test_train_takes_the_dataset_name_data_import_printed(tmp_path, toy_model):
    """`data import` prints a name; `train --data NAME` finds it; `--replace` replaces it
    (refused without it); a name that is nothing says so instead of "fix the lines above"."""
    home = tmp_path / "home"
    source = tmp_path / "qa.csv"
    rows = "".join(f"What colour is the sky {i}?,The sky is blue.\n" for i in range(40))
    source.write_text("q,a\n" + rows)
    mapped = ("--map", "prompt=q", "--map", "completion=a")
    done = lora_studio("data", "import", str(source), "--name", "qa-csv", *mapped, home=home)
    assert done.returncode == 0 and "--data qa-csv" in done.stdout, done.stderr
    trained = train_quickly(toy_model, "qa-csv", home=home)
    assert trained.returncode == 0, trained.stderr
    again = lora_studio("data", "import", str(source), "--name", "qa-csv", *mapped, home=home)
    assert again.returncode == 2 and "--replace" in again.stderr
    source.write_text("q,a\n" + rows[: len(rows) // 2])
    replaced = lora_studio(
        "data",
        "import",
        str(source),
        "--name",
        "qa-csv",
        *mapped,
        "--replace",
        "--json",
        home=home,
    )
    assert replaced.returncode == 0 and json.loads(replaced.stdout)["rows_written"] == 20
    assert len((home / "datasets" / "qa-csv.jsonl").read_text().splitlines()) == 20
    missing = train_quickly(toy_model, "no-such-set", home=home)
    assert missing.returncode == 2 and "no dataset named no-such-set" in missing.stderr
    assert "fix the lines above" not in missing.stderr
