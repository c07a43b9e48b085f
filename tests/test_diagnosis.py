"""Why a worker died, read from what it left (core.train.diagnosis): no process needed."""

from __future__ import annotations

import signal

from core import protocol
from core.machine.launch import Host
from core.train import diagnosis

HOSTS = [Host(ssh="127.0.0.1", ips=["127.0.0.1"]), Host(ssh="mac-2", ips=["10.0.0.2"])]
PEER_LOST = "[rank 0] [ring] connection to a peer was lost\n"


def _launch_log(rank: int, code: int) -> str:
    return f"\x1b[33m[WARN] Node with rank {rank} exited with code {code} \x1b[0m\n"


def test_a_kill_by_the_kernel_reads_as_out_of_memory_with_the_log_tail():
    log = "".join(f"line {i}\n" for i in range(30))
    error = diagnosis.death(-signal.SIGKILL, None, log, None)
    assert error.kind == "out_of_memory" and error.hint == protocol.OOM_HINT
    assert "killed by SIGKILL, most likely because memory ran out" in error.error
    assert error.error.endswith("line 29") and "line 9\n" not in error.error  # the last 20


def test_a_plain_exit_without_a_result_is_internal():
    error = diagnosis.death(3, None, "", None)
    assert error.kind == "internal"
    assert error.error == "the training process exited with code 3 without a result"


def test_the_workers_own_error_line_wins_over_its_exit():
    said = protocol.Error(error="bad row", kind="dataset")
    assert diagnosis.death(1, said, "noise\n", None) is said
    assert diagnosis.state_after(said) == "failed"
    assert diagnosis.state_after(diagnosis.death(-9, None, "", None)) == "interrupted"


def test_another_ranks_death_comes_before_rank_zeros_lost_peer():
    log = PEER_LOST + "[rank 1] killed\n" + _launch_log(1, -9) + _launch_log(0, -15)
    rank0_says = protocol.Error(error="connection to a peer was lost", kind="internal")
    error = diagnosis.death(0, rank0_says, log, HOSTS)
    assert error.kind == "out_of_memory"
    assert error.error.startswith("the training ended: rank 1 (host mac-2) was killed by SIGKILL")
    assert "lora-studio hosts check" in error.hint


def test_rank_zeros_own_error_stands_when_it_died_first():
    said = protocol.Error(error="out of disk", kind="internal")
    log = _launch_log(0, 1) + _launch_log(1, -15)
    assert diagnosis.death(0, said, log, HOSTS) is said


def test_the_plan_joins_the_out_of_memory_advice():
    class Plan:
        def advice(self):
            return ["--batch-size 2 (1.1 GB)", "--grad-checkpoint (0.9 GB)"]

        def summary(self):
            return "needs about 2.0 GB of 1.5 GB available"

    error = diagnosis.death(-signal.SIGSEGV, None, "", None)
    advised = diagnosis.with_plan(error, Plan())
    assert advised.hint.startswith(protocol.OOM_HINT)
    assert "needs about 2.0 GB of 1.5 GB" in advised.hint and "--grad-checkpoint" in advised.hint
    assert error.hint == protocol.OOM_HINT  # the original is left as it was
