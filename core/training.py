"""TrainingService: validate, run the training process, turn its stream into events, publish.

The service, not a browser tab or a terminal, owns a run: a reader thread drains the
process's stdout into the run's event history, and any number of viewers ``follow()`` it from
the start. A run lives in ``runs/<id>/`` with its state (``core.runs``) and checkpoints until
it succeeds; then it is published into the adapters folder in one rename (``core.publish``).
Stopped, interrupted and failed runs stay, to be resumed, published again or discarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from . import protocol
from .adapters import EVENTS_FILE, WEIGHTS_FILE
from .blas import Blas, choose_blas, with_blas
from .datasets import DatasetScan, scan_dataset
from .errors import StudioError
from .hosts import copy_to_hosts
from .jit import native_jit
from .launch import Host, Launch, is_this_machine, rank_failure
from .memory import available_memory_gb
from .models import ModelInfo, inspect_model, tokenizer
from .params import TrainingParams
from .plan import DataShape, MemoryPlan, ModelShape, plan, refusal
from .publish import publish, write_events
from .runs import CHECKPOINTS, DATA, RunRecord, RunState, RunStore, latest_checkpoint_step
from .settings import Settings
from .tools import last_lines

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0
STDERR_TAIL_LINES = 20
LOG_FILE = "train.log"
# errors that resuming would meet again: the run is failed, not interrupted
PERMANENT_ERRORS = ("params", "dataset", "model")


class TrainingRun:
    """One training process on a run folder, and everything the run has said so far."""

    def __init__(
        self,
        *,
        record: RunRecord,
        folder: Path,
        model: ModelInfo,
        dataset: DatasetScan,
        params: TrainingParams,
        settings: Settings,
        lock: IO,
        history: list[protocol.Event] | None = None,
        hosts: list[Host] | None = None,
    ):
        self.record = record
        self.id = record.id
        self.name = record.name
        self.folder = folder
        self.model = model
        self.dataset = dataset
        self.params = params
        self.started = time.time()
        self._elapsed_before = record.elapsed_seconds  # earlier sessions of a resumed run
        self.events: list[protocol.Event] = list(history or [])
        self.adapter_path: Path | None = None
        self._settings = settings
        self._lock = lock
        self._changed = threading.Condition()
        self._done = False
        self._stop_as: RunState | None = None
        self._process: subprocess.Popen | None = None
        self.hosts = hosts  # the ranks' hosts, for a run under mlx.launch
        self.memory: MemoryPlan | None = None  # the plan it started with
        self._log_start = 0  # where this session's part of the log begins

    # -- what viewers use ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    @property
    def last_event(self) -> protocol.Event | None:
        return self.events[-1] if self.events else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def follow(self, timeout: float | None = None) -> Iterator[protocol.Event]:
        """Every event of the run from the first, then new ones as they come, until it ends.

        Several viewers may follow at once; stopping one (closing the generator) does not stop
        the run. ``timeout`` bounds the wait for each next event.
        """
        index = 0
        while True:
            with self._changed:
                waiting = index >= len(self.events) and not self._done
                if waiting and not self._changed.wait(timeout):
                    raise TimeoutError(f"no event from the training in {timeout} s")
                fresh, finished = self.events[index:], self._done
            yield from fresh
            index += len(fresh)
            if finished and index >= len(self.events):
                return

    def stop(self, state: RunState = "stopped") -> None:
        """Stop the run, keeping it resumable: a ``stop`` line on the worker's stdin (every
        rank gets it, through mlx.launch), then the worker checkpoints the last finished step
        and exits; SIGKILL after a grace period. Returns at once.

        ``state`` is what the run folder records: ``stopped`` when a person asked, or
        ``interrupted`` when the studio itself is closing. A run that has already finished
        is left alone: its adapter is published, whatever arrives now.
        """
        process = self._process
        if process is None or process.poll() is not None or self._done:
            return
        self._stop_as = state
        try:
            process.stdin.write(b"stop\n")
            process.stdin.flush()
        except (OSError, ValueError):
            _signal_group(process, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def wait(self, timeout: float | None = None) -> protocol.Event | None:
        """Block until the run has ended; its last event (complete or error)."""
        with self._changed:
            self._changed.wait_for(lambda: self._done, timeout)
        return self.last_event

    # -- the process and the reader thread ----------------------------------------------------

    def launch(self, command: list[str], env: dict[str, str]) -> None:
        """Start the worker. Its stdin is a pipe this process holds: when the studio dies,
        the pipe closes and the worker stops after a checkpoint instead of training on
        unwatched. It also holds the runs lock, so no other studio takes the run over."""
        try:
            with (self.folder / LOG_FILE).open("ab") as stderr:
                self._log_start = stderr.tell()
                self._process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.PIPE,
                    env=env,
                    pass_fds=(self._lock.fileno(),),
                    start_new_session=True,  # its own process group: a stop reaches every child
                )
        except OSError as exc:
            error = protocol.Error(error=f"the training process did not start: {exc}")
            self._record("interrupted", error)
            raise StudioError(error.error) from exc
        threading.Thread(target=self._read, name=f"training-{self.id[:8]}", daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        ending: protocol.Complete | protocol.Error | None = None
        try:
            with (self.folder / EVENTS_FILE).open("a", encoding="utf-8") as history:
                for raw in self._process.stdout:
                    event = protocol.parse_line(raw.decode("utf-8", errors="replace"))
                    if isinstance(event, protocol.Complete | protocol.Error):
                        ending = event  # the service announces the end, after publishing
                    elif event is not None:
                        history.write(event.to_line())
                        history.flush()
                        self._add(event)
            final = self._finish(self._process.wait(), ending)
        except Exception as exc:  # noqa: BLE001 - the run must end with an event, whatever
            log.exception("training run %s failed in the service", self.id)
            final = protocol.Error(error=f"the studio failed to finish the run: {exc}")
            self._record("interrupted", final)
        finally:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        with self._changed:
            self.events.append(final)
            self._done = True
            self._changed.notify_all()

    def _add(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Start):
            self.record.total_steps = event.total_steps
        elif isinstance(event, protocol.Progress):
            self.record.step = event.step
            self._write_record()
        elif isinstance(event, protocol.Checkpoint):
            self.record.checkpoint_step = event.step
            self.record.step = max(self.record.step, event.step)
            self._write_record()
        elif isinstance(event, protocol.Validation) and event.step > 0:
            best = self.record.best_validation_loss
            self.record.best_validation_loss = event.loss if best is None else min(best, event.loss)
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def _write_record(self) -> None:
        self.record.elapsed_seconds = self.elapsed
        self.record.write(self.folder)

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every session of a resumed run."""
        return self._elapsed_before + time.time() - self.started

    def _finish(self, code: int, ending: protocol.Event | None) -> protocol.Event:
        """Publish a run that completed; otherwise record how it ended, and keep it."""
        if isinstance(ending, protocol.Complete) and code == 0:
            if (self.folder / WEIGHTS_FILE).is_file():
                return self.publish(ending)
            ending = protocol.Error(error="the training process wrote no adapter weights")
        if self._stop_as is not None:
            step = self.record.checkpoint_step
            final = protocol.Error(
                error=f"training stopped at step {step or 0}",
                kind="cancelled",
                hint="resume it from the runs list, or with "
                f"`lora-studio train --resume {self.id}`",
            )
            self._record(self._stop_as, final)
            return final
        ending = self._death(code, ending if isinstance(ending, protocol.Error) else None)
        if ending.kind == "out_of_memory" and self.memory is not None:
            lower = "; ".join(self.memory.advice())
            ending.hint = (
                f"{ending.hint}. The plan for this run: {self.memory.summary()} when it "
                f"started (other programs may have taken memory since); lower it with: {lower}"
            )
        self._record("failed" if ending.kind in PERMANENT_ERRORS else "interrupted", ending)
        return ending

    def _death(self, code: int, ending: protocol.Error | None) -> protocol.Error:
        """Why the run ended: the worker's error line, or the exit of a process that ended
        without a word. Under mlx.launch (which exits 0 whatever its ranks did), another
        rank's death comes first: rank 0 then only says that it lost a peer."""
        failure = self._rank_failure()
        if failure is not None and (failure[0] != 0 or ending is None):
            return failure[1]
        if ending is not None:
            return ending
        return _silent_death(code, _tail(self.folder / LOG_FILE))

    def _rank_failure(self) -> tuple[int, protocol.Error] | None:
        if not self.hosts:
            return None
        found = rank_failure(_read_from(self.folder / LOG_FILE, self._log_start), self.hosts)
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

    def _record(self, state: RunState, error: protocol.Error, publishable: bool = False) -> None:
        self.record.state = state
        self.record.error, self.record.hint = error.error, error.hint
        self.record.publishable = publishable
        self.record.checkpoint_step = latest_checkpoint_step(self.folder)
        try:
            self._write_record()
        except OSError:
            log.exception("could not record the state of run %s", self.id)

    def publish(self, complete: protocol.Complete) -> protocol.Event:
        """Publish the finished run; on failure keep it (failed, publishable) and say why."""
        self.record.elapsed_seconds = self.elapsed
        try:
            final = publish(self.record, self.folder, self._settings.adapters, complete)
        except Exception as exc:  # noqa: BLE001 - the weights must survive any failure here
            log.exception("publishing run %s failed", self.id)
            error = protocol.Error(
                error=f"the adapter was trained but could not be published: {exc}",
                hint=f"fix the cause (free disk space?), then `lora-studio runs publish {self.id}`",
            )
            self.record.completed = complete.model_dump(mode="json")
            self._record("failed", error, publishable=True)
            return error
        self.adapter_path = Path(final.adapter_path)
        return final

    def _kill_after_grace(self) -> None:
        process = self._process
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("training %s ignored SIGTERM; killing it", self.id)
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log_file:
            log_file.seek(offset)
            return log_file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(path: Path) -> str:
    try:
        return last_lines(path.read_text(encoding="utf-8", errors="replace"), STDERR_TAIL_LINES)
    except OSError:
        return ""


def _silent_death(code: int, stderr_tail: str) -> protocol.Error:
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


class TrainingService:
    """Starts and resumes trainings, one at a time per studio, and remembers the current one."""

    def __init__(self, settings: Settings, blas: Blas | None = None):
        self.settings = settings.ensure()
        self.blas = blas or choose_blas()
        self.runs = RunStore(self.settings.runs)
        self.current: TrainingRun | None = None
        self.mark_interrupted()

    def mark_interrupted(self) -> None:
        """Runs left ``running`` by a studio that died are ``interrupted`` (with their last
        checkpoint). Only while no training holds the runs lock: then none of them runs."""
        try:
            lock = self._take_lock()
        except StudioError:
            return
        with lock:
            for record in self.runs.mark_interrupted():
                step = record.checkpoint_step
                log.warning("run %s was interrupted (last checkpoint: step %s)", record.id, step)

    def list_runs(self) -> list[RunRecord]:
        """Every unfinished run, newest first, with up-to-date states."""
        self.mark_interrupted()
        return self.runs.list()

    def worker_command(self) -> list[str]:
        """How the training process is started: this interpreter, the installed package."""
        return [sys.executable, "-m", "core.worker"]

    def worker_environment(self) -> dict[str, str]:
        """The training process's environment: the fast BLAS preloaded, MLX's JIT kernels
        built for this CPU."""
        return native_jit(with_blas(dict(os.environ), self.blas))

    def check(
        self,
        model: str | Path,
        data: str | Path,
        params: TrainingParams | None = None,
        *,
        dataset_name: str | None = None,
        launch: Launch | None = None,
    ) -> tuple[ModelInfo, TrainingParams, DatasetScan]:
        """Everything ``start`` checks, without starting: the model, the parameters against
        it, every line of the dataset (read line by line: bounded memory for any size), and
        the ranks' hosts. Raises StudioError (DatasetError for data)."""
        info = inspect_model(model)
        params = (params or TrainingParams()).for_model(info)
        dataset = scan_dataset(
            data,
            batch_size=params.batch_size,
            validation_split=params.validation_split,
            seed=params.seed,
        )
        if dataset_name:
            dataset.name = dataset_name
        params.check_steps(dataset.train_count // params.batch_size)
        (launch or Launch()).check(params.batch_size, dataset.valid_count)
        return info, params, dataset

    def plan(
        self,
        info: ModelInfo,
        params: TrainingParams,
        dataset: DatasetScan,
        launch: Launch | None = None,
    ) -> MemoryPlan:
        """The memory the run needs on this machine (``core.plan``), against what it has:
        the dataset's longest rows and its sample tokenized as the worker will."""
        hosts = (launch or Launch()).hosts()
        data = DataShape.of(dataset, tokenizer(info.path), mask_prompt=params.mask_prompt)
        here = max(1, sum(is_this_machine(host.ssh) for host in hosts))
        return plan(
            ModelShape.of(info),
            params,
            data,
            available_memory_gb(),
            ranks=len(hosts),
            processes_here=here,
        )

    def start(
        self,
        model: str | Path,
        data: str | Path,
        params: TrainingParams | None = None,
        *,
        name: str | None = None,
        dataset_name: str | None = None,
        launch: Launch | None = None,
        force: bool = False,
    ) -> TrainingRun:
        """Check everything, then start the training process; returns the running run.

        Raises StudioError (DatasetError for data problems) before any process starts, and
        when the memory plan says the run would not fit, unless ``force``. ``dataset_name``
        is the name to record when ``data`` is a stored upload; ``launch`` spreads the run
        over several processes or hosts.
        """
        launch = launch or Launch()
        info, params, dataset = self.check(
            model, data, params, dataset_name=dataset_name, launch=launch
        )
        memory = self.plan(info, params, dataset, launch)
        if not memory.fits and not force:
            raise refusal(memory)
        lock = self._take_lock()
        run_id = str(uuid.uuid4())
        folder = self.settings.runs / run_id
        record = RunRecord(
            id=run_id,
            name=(name or "").strip() or f"Trained on {dataset.name}",
            state="running",
            model_id=info.id,
            model_path=str(info.path),
            model_layers=info.num_layers,
            model_quantization=info.quantization,
            dataset_name=dataset.name,
            dataset_format=dataset.format,
            params=params.model_dump(mode="json"),
            launch=launch.model_dump(mode="json") if launch.distributed else None,
        )
        try:
            folder.mkdir(parents=True)
            dataset.write(folder / DATA)
            record.write(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            lock.close()
            raise
        run = self._launch(record, folder, info, dataset, params, lock, history=[])
        run.memory = memory
        log.info("training %s started (BLAS: %s; %s)", run_id, self.blas.name, memory.summary())
        return run

    def resume(self, run_id: str) -> TrainingRun:
        """Continue a stopped or interrupted run from its last checkpoint (from the start if
        it has none): same step numbering, data order, optimizer state and history."""
        lock = self._take_lock()
        try:
            self.runs.mark_interrupted()
            record = self.runs.get(run_id)
            if not record.resumable:
                raise _not_resumable(record)
            folder = self.runs.path(run_id)
            info = inspect_model(record.model_path)
            params = TrainingParams(**record.params)
            dataset = scan_dataset(folder / DATA, batch_size=params.batch_size, seed=params.seed)
            dataset.name = record.dataset_name
            step = latest_checkpoint_step(folder)
            history = _history_until(protocol.read_events(folder / EVENTS_FILE), step)
            write_events(folder / EVENTS_FILE, history)
            record.state, record.error, record.hint = "running", None, None
            record.step = record.checkpoint_step = step
            record.write(folder)
        except BaseException:
            lock.close()
            raise
        run = self._launch(record, folder, info, dataset, params, lock, history=history)
        log.info("training %s resumed from step %s", run_id, step or 0)
        return run

    def publish_again(self, run_id: str) -> protocol.Complete:
        """Publish a run whose training completed but whose publishing failed."""
        with self._take_lock():
            record = self.runs.get(run_id)
            if not record.publishable or record.completed is None:
                raise StudioError(
                    f"run {run_id} has no finished adapter to publish ({record.state})",
                    hint="resume it instead" if record.resumable else None,
                )
            try:
                return publish(
                    record,
                    self.runs.path(run_id),
                    self.settings.adapters,
                    protocol.Complete(**record.completed),
                )
            except OSError as exc:
                raise StudioError(f"publishing run {run_id} failed again: {exc}") from exc

    def _launch(self, record, folder, info, dataset, params, lock, history) -> TrainingRun:
        launch = Launch(**record.launch) if record.launch else Launch()
        try:
            hosts = launch.check(params.batch_size, dataset.valid_count)
            run = TrainingRun(
                record=record,
                folder=folder,
                model=info,
                dataset=dataset,
                params=params,
                settings=self.settings,
                lock=lock,
                history=history,
                hosts=hosts if launch.distributed else None,
            )
            command, files = self._worker_command(record, folder, info, params)
            env = self.worker_environment()
            if launch.distributed:
                copy_to_hosts(hosts, files)
                command += ["--parent-pid", str(os.getpid())]
                command = launch.command(hosts, folder, command)
                env = launch.environment(env, hosts)
            run.launch(command, env)
        except BaseException:
            lock.close()
            raise
        self.current = run
        return run

    def _worker_command(self, record, folder, info, params) -> tuple[list[str], list[Path]]:
        """The worker's command line, and the files it reads (which each host needs)."""
        data = folder / DATA
        command = [*self.worker_command(), "--model", str(info.path), "--data", str(data)]
        command += ["--output", str(folder), "--stop-on-stdin-eof", *params.to_argv()]
        if record.checkpoint_step is None:
            return command, [data]
        return [*command, "--resume", str(folder / CHECKPOINTS)], [data, folder / CHECKPOINTS]

    def _take_lock(self) -> IO:
        """An exclusive lock on the studio's runs folder, held for the whole run; it also
        holds across processes (a CLI run and the page on one studio)."""
        lock = (self.settings.runs / ".training.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            running = self.current
            detail = ""
            if running and not running.done:
                step = next(
                    (e for e in reversed(running.events) if isinstance(e, protocol.Progress)),
                    None,
                )
                detail = f" ('{running.name}'" + (
                    f", step {step.step}/{step.total_steps})" if step else ")"
                )
            raise StudioError(
                f"a training is already running in this studio{detail}",
                hint="wait for it to finish or cancel it, then start again",
            ) from None
        return lock


def _not_resumable(record: RunRecord) -> StudioError:
    if record.state == "running":
        return StudioError(f"run {record.id} is running", hint="stop it first")
    if record.publishable:
        return StudioError(
            f"run {record.id} finished training; only publishing failed ({record.error})",
            hint=f"lora-studio runs publish {record.id}",
        )
    return StudioError(
        f"run {record.id} failed and resuming would fail the same way: {record.error}",
        hint="fix the cause and start a new run, or discard this one",
    )


def _history_until(events: list[protocol.Event], step: int | None) -> list[protocol.Event]:
    """The events a resumed run keeps: everything up to its checkpoint's step, so the loss
    history (and the chart) continue where the worker will."""
    if step is None:
        return []
    return [
        e
        for e in events
        if isinstance(e, protocol.Start)
        or (
            isinstance(e, protocol.Progress | protocol.Validation | protocol.Checkpoint)
            and e.step <= step
        )
    ]
