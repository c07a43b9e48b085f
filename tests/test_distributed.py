"""Data-parallel training through mlx.launch: 2 ranks on the loopback interface, ring backend.

Real ranks (``mlx.launch --backend ring`` over 127.0.0.1), real workers, real signals.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from core import protocol
from core.errors import StudioError
from core.machine.launch import Launch, rank_failure
from core.params import TrainingParams
from core.train.service import TrainingService
from tests.helpers import free_port, lora_studio

# lr 1e-3: at 1e-2 the toy model's loss bounces, and float noise between the two runs' sums
# grows into visibly different losses within a few steps
PARAMS = dict(learning_rate=1e-3, epochs=2, lora_layers=-1, batch_size=4, seed=1)
TWO = Launch(processes=2)


@pytest.fixture
def service(studio) -> TrainingService:
    return TrainingService(studio)


def train(service, toy_model, data, launch=None, **params):
    run = service.start(toy_model, data, TrainingParams(**(PARAMS | params)), launch=launch)
    events = list(run.follow(timeout=240))
    return run, events


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


def test_two_ranks_train_exactly_like_one_process(service, toy_model, colour_dataset):
    one, one_events = train(service, toy_model, colour_dataset)
    two, two_events = train(service, toy_model, colour_dataset, launch=TWO)
    assert isinstance(two_events[-1], protocol.Complete), two_events[-1]
    start = of(two_events, protocol.Start)[0]
    assert (start.ranks, of(one_events, protocol.Start)[0].ranks) == (2, 1)

    losses = [(e.step, e.loss) for e in of(one_events, protocol.Progress)]
    two_losses = [(e.step, e.loss) for e in of(two_events, protocol.Progress)]
    assert [s for s, _ in two_losses] == [s for s, _ in losses]
    np.testing.assert_allclose([v for _, v in two_losses], [v for _, v in losses], rtol=1e-4)
    validation = [e.loss for e in of(one_events, protocol.Validation)]
    two_validation = [e.loss for e in of(two_events, protocol.Validation)]
    np.testing.assert_allclose(two_validation, validation, rtol=1e-4)
    # summed over ranks: the 2-rank run reports the tokens the 1-process run trained
    tokens = [e.trained_tokens for e in of(one_events, protocol.Progress)]
    assert [e.trained_tokens for e in of(two_events, protocol.Progress)] == tokens

    mine, theirs = weights(one.adapter_path), weights(two.adapter_path)
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_allclose(theirs[name], mine[name], rtol=1e-3, atol=1e-6, err_msg=name)
    # only rank 0 wrote: one adapter folder, one set of protocol lines
    assert len(of(two_events, protocol.Start)) == 1
    assert len(list(service.settings.adapters.iterdir())) == 2


def workers(pgid: int) -> dict[int, list[bytes]]:
    """The training processes in a run's process group (a JIT compiler that a rank started
    may outlive it briefly: it is not one), with their environments."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            ours = entry.name.isdigit() and os.getpgid(int(entry.name)) == pgid
            if ours and b"core.train.worker" in (entry / "cmdline").read_bytes():
                found[int(entry.name)] = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # ProcessLookupError included: it has just ended
            continue
    return found


def rank_process(pgid: int, rank: int) -> int:
    """The pid of a rank's worker: the one whose MLX_RANK is ``rank``."""
    wanted = f"MLX_RANK={rank}".encode()
    return next(pid for pid, environ in workers(pgid).items() if wanted in environ)


def start_two_ranks(service, toy_model, data, until: type, **params):
    """A 2-rank run, once it has sent its first event of type ``until``."""
    run = service.start(toy_model, data, TrainingParams(**(PARAMS | params)), launch=TWO)
    next(e for e in run.follow(timeout=240) if isinstance(e, until))
    return run


def test_a_dead_rank_ends_the_run_naming_it_and_publishes_nothing(
    service, toy_model, colour_dataset
):
    run = start_two_ranks(service, toy_model, colour_dataset, protocol.Progress, epochs=30)
    os.kill(rank_process(run.pid, 1), signal.SIGKILL)
    final = run.wait(timeout=120)
    assert isinstance(final, protocol.Error), final
    assert "rank 1 (this machine) was killed by SIGKILL" in final.error
    assert "hosts check" in final.hint
    assert list(service.settings.adapters.iterdir()) == []
    record = service.runs.get(run.id)
    assert record.state == "interrupted" and record.resumable
    assert not workers(run.pid), "a rank outlived the run"


def test_a_stop_reaches_every_rank_and_the_run_resumes_to_the_end(
    service, toy_model, colour_dataset
):
    run = start_two_ranks(service, toy_model, colour_dataset, protocol.Checkpoint, save_every=4)
    run.stop()
    final = run.wait(timeout=120)
    assert isinstance(final, protocol.Error) and final.kind == "cancelled", final
    assert service.runs.get(run.id).state == "stopped"
    assert not workers(run.pid)

    resumed = service.resume(run.id)
    events = list(resumed.follow(timeout=240))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    assert of(events, protocol.Start)[-1].ranks == 2  # the run keeps its launch


def test_the_batch_must_split_evenly_over_the_ranks(service, toy_model, colour_dataset):
    with pytest.raises(StudioError, match="batch_size = 4: 3 ranks share each batch") as caught:
        service.start(
            toy_model, colour_dataset, TrainingParams(**PARAMS), launch=Launch(processes=3)
        )
    assert "3 or 6" in caught.value.hint
    assert list(service.settings.runs.iterdir()) == []  # refused before any run folder


def test_rank_failure_names_the_first_rank_that_ended_on_its_own():
    from core.machine.launch import Host

    hosts = [Host(ssh="127.0.0.1", ips=["127.0.0.1"]), Host(ssh="mac-2", ips=["10.0.0.2"])]
    log = (
        "[rank 1] RuntimeError: something broke\n"
        "\x1b[33m[WARN] Node with rank 1 exited with code 1 \x1b[0m\n"
        "\x1b[33m[WARN] Node with rank 0 exited with code -15 \x1b[0m\n"
    )
    rank, said = rank_failure(log, hosts)
    assert rank == 1 and said.startswith("rank 1 (host mac-2) exited with code 1")
    assert "[rank 1] RuntimeError: something broke" in said
    assert rank_failure("all fine\n", hosts) is None


def test_cli_trains_with_two_processes_and_the_adapter_chats(studio, toy_model, colour_dataset):
    import shutil

    from mlx_lm import generate, load

    from core.serve.engine import GenerationParams, InferenceEngine
    from core.serve.registry import ModelRegistry

    shutil.copytree(toy_model, studio.models / "toy")
    done = lora_studio(
        "train",
        "--model",
        "toy",
        "--data",
        str(colour_dataset),
        "--processes",
        "2",
        "--learning-rate",
        "1e-2",
        "--lora-layers",
        "-1",
        home=studio.home,
    )
    assert done.returncode == 0, done.stderr
    assert "2 ranks share each batch" in done.stderr
    adapter_id = done.stdout.split("model id: lora/")[1].split()[0]

    question = [{"role": "user", "content": "What colour is the sky number 3?"}]
    engine = InferenceEngine(ModelRegistry(studio, hub=studio.home / "no-hub"))
    try:
        reply, _ = engine.chat(
            f"lora/{adapter_id}", question, GenerationParams(temperature=0.0, max_tokens=12)
        )
    finally:
        engine.close()
    model, tokenizer = load(
        str(studio.models / "toy"), adapter_path=str(studio.adapters / adapter_id)
    )
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True)
    assert reply and reply == generate(model, tokenizer, prompt=prompt, max_tokens=12)


def test_hosts_check_names_an_unreachable_host(studio):
    closed = free_port()  # nothing listens there: ssh is refused at once
    hostfile = studio.home / "hosts.json"
    hostfile.write_text(
        json.dumps(
            [
                {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                {"ssh": f"ssh://127.0.0.1:{closed}", "ips": ["127.0.0.1"]},
            ]
        )
    )
    started = time.monotonic()
    done = lora_studio("hosts", "check", home=studio.home, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("rank 0 (this machine): ok")
    assert lines[1].startswith(f"rank 1 (ssh://127.0.0.1:{closed}): not reachable over ssh")
    assert "Connection refused" in lines[1] and "ssh-copy-id" in lines[1]
    assert time.monotonic() - started < 30


def test_hosts_check_compares_each_hosts_free_memory_with_the_plan(
    studio, toy_model, colour_dataset, monkeypatch
):
    """Two ranks on this machine need twice one rank's plan; the budget setting (which the
    probe reads like any host would) is between one rank's plan and two."""
    hostfile = studio.home / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    flags = ("--model", str(toy_model), "--data", str(colour_dataset), "--lora-layers", "2")
    plan = lora_studio("plan", *flags, "--processes", "2", "--json", home=studio.home)
    one_rank = json.loads(plan.stdout)["peak_gb"] / 2
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", f"{one_rank * 1.5:.4f}")
    done = lora_studio("hosts", "check", *flags, home=studio.home, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    for line in done.stdout.splitlines():
        assert "the run needs about" in line and "for its 2 rank(s) there" in line
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", f"{one_rank * 2.5:.4f}")
    done = lora_studio("hosts", "check", *flags, home=studio.home, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_hosts_file_in_another_format_is_refused_clearly(studio, toy_model, colour_dataset):
    bad = studio.home / "bad-hosts.json"
    bad.write_text('{"machines": ["a", "b"]}')
    done = lora_studio(
        "train",
        "--model",
        str(toy_model),
        "--data",
        str(colour_dataset),
        "--lora-layers",
        "-1",
        "--hostfile",
        str(bad),
        home=studio.home,
    )
    assert done.returncode == 2
    assert "is not in mlx.launch's format" in done.stderr
    assert "Traceback" not in done.stderr
