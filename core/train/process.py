"""One training process on a run folder: start it, drain its stdout into the run's event
history, stop it, and settle how it ended (published, stopped, interrupted or failed).

Any number of viewers ``follow()`` a run from its first event; the process's stream is read by
one thread, whatever the viewers do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core import protocol
from core.adapters.layout import EVENTS_FILE, MODEL_INDEX, WEIGHTS_FILE
from core.data.scan import DatasetScan
from core.errors import StudioError
from core.machine.launch import Host
from core.models.inspect import ModelInfo
from core.params import TrainingParams
from core.settings import Settings
from core.train import diagnosis
from core.train.plan import MemoryPlan
from core.train.publish import publish
from core.train.reporters import MLRUNS, Reporters
from core.train.runs import STOP_REQUEST, RunRecord, RunState, latest_checkpoint_step

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0
LOG_FILE = "train.log"


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
        locks: list[IO],
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
        self._ended: float | None = None  # when the process ended
        self._elapsed_before = record.elapsed_seconds  # earlier sessions of a resumed run
        self.events: list[protocol.Event] = list(history or [])
        self._said: dict[type, int] = {}  # the last step of each kind the history holds
        for said in self.events:
            if isinstance(said, protocol.Progress | protocol.Validation | protocol.Samples):
                self._said[type(said)] = max(said.step, self._said.get(type(said), -1))
        self.adapter_path: Path | None = None
        self._settings = settings
        self._locks = locks  # the runs lock and the run's liveness lock, held to its end
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
        unwatched. It also holds the runs lock and the run's liveness lock, so no other
        studio takes the run over or marks it interrupted while it lives."""
        try:
            with (self.folder / LOG_FILE).open("ab") as stderr:
                self._log_start = stderr.tell()
                self._process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.PIPE,
                    env=env,
                    pass_fds=tuple(lock.fileno() for lock in self._locks),
                    start_new_session=True,  # its own process group: a stop reaches every child
                )
        except OSError as exc:
            error = protocol.Error(error=f"the training process did not start: {exc}")
            self._record("interrupted", error)
            raise StudioError(error.error) from exc
        threading.Thread(target=self._read, name=f"training-{self.id[:8]}", daemon=True).start()
        (self.folder / STOP_REQUEST).unlink(missing_ok=True)  # one left by an earlier session
        threading.Thread(target=self._honour_stop_requests, daemon=True).start()

    def _honour_stop_requests(self) -> None:
        """A Stop pressed in a page of another process (``core.train.watch``) is a file in
        the run folder: it stops the run as this process's own Stop would."""
        request = self.folder / STOP_REQUEST
        while not self._done:
            if request.exists():
                request.unlink(missing_ok=True)
                self.stop()
            time.sleep(0.5)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        ending: protocol.Complete | protocol.Error | None = None
        try:
            with (self.folder / EVENTS_FILE).open("a", encoding="utf-8") as history:
                reporters = self._reporters(history)
                for raw in self._process.stdout:
                    event = protocol.parse_line(raw.decode("utf-8", errors="replace"))
                    if isinstance(event, protocol.Complete | protocol.Error):
                        ending = event  # the service announces the end, after publishing
                    elif event is not None and not self._said_before(event):
                        if not isinstance(event, protocol.Activity):  # a sign of life only
                            history.write(event.to_line())
                            history.flush()
                        self._add(event)
                        reporters.report(event)
            code = self._process.wait()
            self._ended = time.time()
            reporters.close(finished=isinstance(ending, protocol.Complete) and code == 0)
            final = self._finish(code, ending)
        except Exception as exc:  # noqa: BLE001 - the run must end with an event, whatever
            log.exception("training run %s failed in the service", self.id)
            # the locks must not go while the worker still trains: a resume would put a
            # second worker on the same run
            self._halt()
            final = protocol.Error(error=f"the studio failed to finish the run: {exc}")
            self._record("interrupted", final)
        finally:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            for lock in self._locks:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
        with self._changed:
            self.events.append(final)
            self._done = True
            self._changed.notify_all()

    def _said_before(self, event: protocol.Event) -> bool:
        """A redone step's figures, validation or samples, which the session a kill ended
        had said already (``_history_until``): kept as first said, not said twice."""
        repeatable = protocol.Progress | protocol.Validation | protocol.Samples
        return isinstance(event, repeatable) and event.step <= self._said.get(type(event), -1)

    def _reporters(self, history: IO) -> Reporters:
        """The trackers the run reports to (none without ``report_to``); what they say
        (a tracker missing or failing) is a notice in the run's events."""

        def notice(text: str) -> None:
            said = protocol.Notice(message=text)
            history.write(said.to_line())
            history.flush()
            self._add(said)

        given = {"base_model": self.model.id, "dataset": self.dataset.name, "run_id": self.id}
        return Reporters(
            self.params.report_to or [],
            self.folder,
            run_name=self.name,
            mlruns=self._settings.home / MLRUNS,
            notice=notice,
            params=self.record.params | given,
        )

    def _add(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Start):
            self.record.total_steps = event.total_steps
            self._write_record()  # the runs table shows the steps ahead at once
        elif isinstance(event, protocol.Progress | protocol.Activity):
            # the record is what the runs table shows: at the step the bar shows
            self.record.step = event.step
            self._write_record()
        elif isinstance(event, protocol.Checkpoint):
            self.record.checkpoint_step = event.step
            self.record.step = max(self.record.step, event.step)
            self._write_record()
        elif isinstance(event, protocol.Validation) and event.step > 0:
            best = self.record.best_validation_loss
            self.record.best_validation_loss = event.loss if best is None else min(best, event.loss)
            self._write_record()  # the runs table shows it during the run
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def _write_record(self) -> None:
        self.record.elapsed_seconds = self.elapsed
        self.record.write(self.folder)

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every session of a resumed run (fixed once the
        process has ended: a page that shows a finished run shows its own duration)."""
        return self._elapsed_before + (self._ended or time.time()) - self.started

    def _finish(self, code: int, ending: protocol.Event | None) -> protocol.Event:
        """Publish a run that completed; otherwise record how it ended, and keep it."""
        if isinstance(ending, protocol.Complete) and code == 0:
            full = self.params.fine_tune_type == "full"  # the run made a model
            if (self.folder / (MODEL_INDEX if full else WEIGHTS_FILE)).is_file():
                return self.publish(ending)
            what = "model" if full else "adapter weights"
            ending = protocol.Error(error=f"the training process wrote no {what}")
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
        log_text = _read_from(self.folder / LOG_FILE, self._log_start)
        reported = ending if isinstance(ending, protocol.Error) else None
        ending = diagnosis.death(code, reported, log_text, self.hosts)
        if ending.kind == "out_of_memory" and self.memory is not None:
            ending = diagnosis.with_plan(ending, self.memory)
        self._record(diagnosis.state_after(ending), ending)
        return ending

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
            final = publish(
                self.record,
                self.folder,
                complete,
                adapters=self._settings.adapters,
                models=self._settings.models,
            )
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

    def _halt(self) -> None:
        """Stop the worker from the reader's side and return once it has exited: the stop
        line, its output drained meanwhile (a full pipe would block it before it can stop),
        SIGKILL after the grace period."""
        process = self._process
        with contextlib.suppress(OSError, ValueError):
            process.stdin.write(b"stop\n")
            process.stdin.flush()
        killer = threading.Timer(STOP_GRACE_SECONDS, _signal_group, (process, signal.SIGKILL))
        killer.start()
        try:
            with contextlib.suppress(OSError, ValueError):
                for _ in process.stdout:
                    pass
            process.wait()
        finally:
            killer.cancel()

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
