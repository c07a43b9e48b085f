"""Why a worker died, read from what it left: its error line, its exit code, the end of its
log, and under mlx.launch the lines that name a dead rank.

Pure functions of text and numbers, so every case is tested without a process.
"""

from __future__ import annotations

import re
import signal

from core import protocol
from core.machine.commands import last_lines
from core.machine.launch import Host, rank_failure
from core.train.plan import MemoryPlan
from core.train.runs import RunState

LOG_TAIL_LINES = 20
# errors that resuming would meet again: the run is failed, not interrupted
PERMANENT_ERRORS = ("params", "dataset", "model")


def death(
    code: int, reported: protocol.Error | None, log_text: str, hosts: list[Host] | None
) -> protocol.Error:
    """Why the run ended: the worker's error line, or the exit of a process that ended
    without a word. Under mlx.launch (which exits 0 whatever its ranks did), another rank's
    death comes first: rank 0 then only says that it lost a peer."""
    failure = rank_death(log_text, hosts) if hosts else None
    if failure is not None and (failure[0] != 0 or reported is None):
        return failure[1]
    if reported is not None:
        return reported
    return silent_death(code, last_lines(log_text, LOG_TAIL_LINES))


def rank_death(log_text: str, hosts: list[Host]) -> tuple[int, protocol.Error] | None:
    """The first rank mlx.launch reports dead, as (rank, error); None if none is."""
    found = rank_failure(log_text, hosts)
    if found is None:
        return None
    rank, failure = found
    oom = re.search(r"killed by SIG(KILL|SEGV|BUS)", failure)
    if oom:
        head, _, rest = failure.partition(oom.group(0))
        failure = f"{head}{oom.group(0)}, most likely because memory ran out{rest}"
    error = protocol.Error(
        error=f"the training ended: {failure}",
        kind="out_of_memory" if oom else "internal",
        hint=(protocol.OOM_HINT + "; " if oom else "")
        + "check the hosts (`lora-studio hosts check`), then resume the run",
    )
    return rank, error


def silent_death(code: int, stderr_tail: str) -> protocol.Error:
    """An error event for a process that ended without saying how.

    MLX's CPU backend cannot report a failed allocation: the process dies of SIGSEGV, or the
    kernel's OOM killer sends SIGKILL. Both are reported as out of memory, with the advice.
    """
    kind: protocol.ErrorKind = "internal"
    hint = None
    if code < 0:
        name = signal.Signals(-code).name
        what = f"the training process was killed by {name}"
        if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS):
            what += ", most likely because memory ran out"
            kind, hint = "out_of_memory", protocol.OOM_HINT
    else:
        what = f"the training process exited with code {code} without a result"
    if stderr_tail:
        what += f"; its last output:\n{stderr_tail}"
    return protocol.Error(error=what, kind=kind, hint=hint)


def with_plan(error: protocol.Error, memory: MemoryPlan) -> protocol.Error:
    """An out-of-memory error with the run's memory plan in its advice."""
    lower = "; ".join(memory.advice())
    hint = (
        f"{error.hint}. The plan for this run: {memory.summary()} when it started (other "
        f"programs may have taken memory since); lower it with: {lower}"
    )
    return error.model_copy(update={"hint": hint})


def state_after(error: protocol.Error) -> RunState:
    """``failed`` when resuming would meet the error again, else ``interrupted``."""
    return "failed" if error.kind in PERMANENT_ERRORS else "interrupted"
