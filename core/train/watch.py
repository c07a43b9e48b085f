"""A run that another process trains (``lora-studio train`` in a terminal, a second studio on
the same folders), followed through its run folder: the page shows it as it shows its own.

The process that trains a run writes everything a viewer needs into ``runs/<id>/``: the
events as they come (``events.jsonl``), the record (``state.json``), and it holds the run's
liveness lock. A ``WatchedRun`` reads the events file's new whole lines every quarter second;
the run has ended when the record leaves ``running`` (stopped, interrupted, failed: the
record says why) or the folder has become ``adapters/<id>/`` (published: its events end with
the ``complete`` event). Stop is a request, ``runs/<id>/stop``, that the owner's
``TrainingRun`` acts on as if its own Stop had been pressed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core import protocol
from core.adapters.layout import EVENTS_FILE
from core.params import TrainingParams
from core.train.runs import ALIVE_FILE, STOP_REQUEST, RunRecord, try_lock

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class _Model:
    id: str


class WatchedRun:
    """A viewer's handle on a run another process trains: the same ``events``, ``follow``,
    ``done``, ``stop`` and figures as ``TrainingRun``."""

    def __init__(self, folder: Path, record: RunRecord, adapters: Path):
        self.id, self.name, self.folder = record.id, record.name, folder
        self.record = record
        self.model = _Model(record.model_id)
        self.params = TrainingParams(**record.params)
        self.started = time.time() - record.elapsed_seconds
        self.events: list[protocol.Event] = []
        self._adapter = adapters / record.id
        self._offset = 0
        self._done = False

    @property
    def done(self) -> bool:
        if not self._done:
            self._poll()
        return self._done

    @property
    def last_event(self) -> protocol.Event | None:
        return self.events[-1] if self.events else None

    @property
    def elapsed(self) -> float:
        return self.record.elapsed_seconds

    def follow(self, timeout: float | None = None) -> Iterator[protocol.Event]:
        """Every event from the first, then new ones as the owner writes them, until the
        run ends. ``timeout`` bounds the wait for each next event."""
        index, waited = 0, 0.0
        while True:
            self._poll()
            fresh = self.events[index:]
            yield from fresh
            index += len(fresh)
            if self._done and index >= len(self.events):
                return
            waited = 0.0 if fresh else waited + POLL_SECONDS
            if timeout is not None and waited > timeout:
                raise TimeoutError(f"no event from the training in {timeout} s")
            time.sleep(POLL_SECONDS)

    def wait(self, timeout: float | None = None) -> protocol.Event | None:
        for _ in self.follow(timeout):
            pass
        return self.last_event

    def stop(self) -> None:
        """Ask the process that trains the run to stop it (after a checkpoint, as its own
        Stop does; the run is then "stopped", resumable)."""
        if self.folder.is_dir() and not self._done:
            (self.folder / STOP_REQUEST).touch()

    def _poll(self) -> None:
        """Read the events written since the last look; settle whether the run has ended."""
        if self._done:
            return
        if not self.folder.is_dir():  # published (renamed into adapters/), or discarded
            history = protocol.read_events(self._adapter / EVENTS_FILE)
            self.events += history[len(self.events) :]  # the same events, then the complete
            self._end(protocol.Error(error="the run's folder is gone"))
            return
        self._read_new_lines()
        record = RunRecord.read(self.folder)
        if record.model_id == "?":
            return  # state.json between two writes, or the folder being renamed: look again
        self.record = record
        if record.state != "running" or _nobody_runs(self.folder):
            self._read_new_lines()
            kind = "cancelled" if record.state == "stopped" else "internal"
            error = record.error or f"the run ended {record.state}"
            self._end(protocol.Error(error=error, hint=record.hint, kind=kind))

    def _read_new_lines(self) -> None:
        try:
            with (self.folder / EVENTS_FILE).open("rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:
            return
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self._offset += len(whole)
        for line in whole.decode("utf-8", errors="replace").splitlines():
            event = protocol.parse_line(line)
            if event is not None:
                self.events.append(event)

    def _end(self, final: protocol.Event) -> None:
        if not isinstance(self.last_event, protocol.Complete | protocol.Error):
            self.events.append(final)
        self._done = True


def _nobody_runs(folder: Path) -> bool:
    """Whether the run's liveness lock is free (its process died without a word)."""
    probe = try_lock(folder / ALIVE_FILE)
    if probe is None:
        return False
    probe.close()
    return True


def watched_run(runs: Path, adapters: Path, known: dict[str, WatchedRun]) -> WatchedRun | None:
    """The run another process trains in ``runs``, if one does (the runs lock lets one run
    at a time per studio); ``known`` keeps one handle per run, so viewers share it."""
    if not runs.is_dir():
        return None
    for folder in runs.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        record = RunRecord.read(folder)
        if record.state != "running" or _nobody_runs(folder):
            continue
        if record.id not in known:
            known[record.id] = WatchedRun(folder, record, adapters)
        return known[record.id]
    return None
