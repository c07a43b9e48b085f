"""TrainingService: validate, run the training process, turn its stream into events, publish.

The service, not a browser tab or a terminal, owns a run: a reader thread drains the
process's stdout into the run's event history, and any number of viewers ``follow()`` it from
the start. On success the run folder gets metadata.json and is renamed into the adapters
folder in one step, so an adapter is complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from statistics import fmean
from typing import IO

from . import protocol
from .adapters import EVENTS_FILE, WEIGHTS_FILE, AdapterMetadata
from .blas import Blas, choose_blas, with_blas
from .datasets import Dataset, load_dataset
from .errors import StudioError
from .models import ModelInfo, inspect_model
from .params import TrainingParams
from .settings import Settings

log = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS = 15.0
STDERR_TAIL_LINES = 20


class TrainingRun:
    """One training process and everything it has said so far."""

    def __init__(
        self,
        *,
        run_id: str,
        folder: Path,
        name: str,
        model: ModelInfo,
        dataset: Dataset,
        params: TrainingParams,
        settings: Settings,
        lock: IO,
    ):
        self.id = run_id
        self.folder = folder
        self.name = name
        self.model = model
        self.dataset = dataset
        self.params = params
        self.started = time.time()
        self.events: list[protocol.Event] = []
        self.adapter_path: Path | None = None
        self._settings = settings
        self._lock = lock
        self._changed = threading.Condition()
        self._done = False
        self._cancelled = False
        self._process: subprocess.Popen | None = None

    # -- what viewers use ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    @property
    def last_event(self) -> protocol.Event | None:
        return self.events[-1] if self.events else None

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

    def cancel(self) -> None:
        """Stop the run: SIGTERM (the worker stops at the next step), SIGKILL after a grace
        period. Returns at once; the run ends with an error event of kind ``cancelled``."""
        self._cancelled = True
        process = self._process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def wait(self, timeout: float | None = None) -> protocol.Event | None:
        """Block until the run has ended; its last event (complete or error)."""
        with self._changed:
            self._changed.wait_for(lambda: self._done, timeout)
        return self.last_event

    # -- the reader thread ------------------------------------------------------------------

    def _launch(self, command: list[str], env: dict[str, str]) -> None:
        stderr = (self.folder / "train.log").open("wb")
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: cancel reaches every child
        )
        stderr.close()
        threading.Thread(target=self._read, name=f"training-{self.id[:8]}", daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        ending: protocol.Complete | protocol.Error | None = None
        try:
            with (self.folder / EVENTS_FILE).open("w", encoding="utf-8") as history:
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
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        with self._changed:
            self.events.append(final)
            self._done = True
            self._changed.notify_all()

    def _add(self, event: protocol.Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def _finish(self, code: int, ending: protocol.Event | None) -> protocol.Event:
        """Publish on success; otherwise remove the run folder and explain the failure."""
        succeeded = isinstance(ending, protocol.Complete) and code == 0 and not self._cancelled
        if succeeded and (self.folder / WEIGHTS_FILE).is_file():
            final = ending.model_copy(
                update={
                    "adapter_path": str(self._settings.adapters / self.id),
                    "adapter_id": self.id,
                }
            )
            with (self.folder / EVENTS_FILE).open("a", encoding="utf-8") as history:
                history.write(final.to_line())
            self.adapter_path = self._publish(final)
            return final
        tail = _tail(self.folder / "train.log")
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._cancelled:
            return protocol.Error(error="training cancelled", kind="cancelled")
        if isinstance(ending, protocol.Error):
            return ending
        return _silent_death(code, tail)

    def _publish(self, complete: protocol.Complete) -> Path:
        shutil.rmtree(self.folder / "data", ignore_errors=True)
        self.metadata(complete).write(self.folder)
        target = self._settings.adapters / self.id
        try:
            os.rename(self.folder, target)
        except OSError:
            # Another file system: copy beside the target, then rename there in one step.
            staging = self._settings.adapters / f".{self.id}.partial"
            shutil.copytree(self.folder, staging)
            os.rename(staging, target)
            shutil.rmtree(self.folder, ignore_errors=True)
        log.info("published adapter %s to %s", self.id, target)
        return target

    def metadata(self, complete: protocol.Complete) -> AdapterMetadata:
        """metadata.json from the run's parameters and the figures its events reported."""
        start = next(e for e in self.events if isinstance(e, protocol.Start))
        progress = [e for e in self.events if isinstance(e, protocol.Progress)]
        validations = [e.loss for e in self.events if isinstance(e, protocol.Validation)]
        trained = validations[1:]  # the first pass measures the untrained model
        return AdapterMetadata(
            adapterName=self.name,
            baseModelId=self.model.id,
            baseModelPath=str(self.model.path),
            trainingDataset=self.dataset.name,
            epochs=self.params.epochs,
            rank=self.params.rank,
            alpha=self.params.alpha,
            learningRate=self.params.learning_rate,
            batchSize=self.params.batch_size,
            loraLayers=self.model.num_layers
            if self.params.lora_layers == -1
            else self.params.lora_layers,
            trainingSteps=complete.steps,
            finalLoss=complete.final_loss,
            finalValidationLoss=trained[-1] if trained else None,
            bestValidationLoss=min(trained) if trained else None,
            initialValidationLoss=validations[0] if validations else None,
            layerCount=start.lora_modules,
            parameterCount=start.trainable_params,
            durationSeconds=round(time.time() - self.started, 2),
            tokensPerSecond=round(fmean(e.tokens_per_second for e in progress), 1)
            if progress
            else None,
            datasetFormat=self.dataset.format,
            trainExamples=start.num_train,
            validationExamples=start.num_val,
            targetModules=self.params.keys,
            maxSeqLength=self.params.max_seq_length,
            blas=start.blas,
        )

    def _kill_after_grace(self) -> None:
        process = self._process
        try:
            process.wait(CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("training %s ignored SIGTERM; killing it", self.id)
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


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
    """Starts trainings, one at a time per studio, and remembers the current one."""

    def __init__(self, settings: Settings, blas: Blas | None = None):
        self.settings = settings.ensure()
        self.blas = blas or choose_blas()
        self.current: TrainingRun | None = None
        self._remove_abandoned_runs()

    def _remove_abandoned_runs(self) -> None:
        """Run folders left by a studio that crashed mid-training (none runs: the lock is free)."""
        try:
            lock = self._take_lock()
        except StudioError:
            return  # a training is running in this studio: its folder is not abandoned
        with lock:
            for folder in self.settings.runs.iterdir():
                if folder.is_dir():
                    log.warning("removing the abandoned run folder %s", folder)
                    shutil.rmtree(folder, ignore_errors=True)

    def worker_command(self) -> list[str]:
        """How the training process is started: this interpreter, the installed package."""
        return [sys.executable, "-m", "core.worker"]

    def check(
        self,
        model: str | Path,
        data: str | Path,
        params: TrainingParams | None = None,
        *,
        dataset_name: str | None = None,
    ) -> tuple[ModelInfo, TrainingParams, Dataset]:
        """Everything ``start`` checks, without starting: the model, the parameters against
        it, and every line of the dataset. Raises StudioError (DatasetError for data)."""
        info = inspect_model(model)
        params = (params or TrainingParams()).for_model(info)
        dataset = load_dataset(
            data,
            batch_size=params.batch_size,
            validation_split=params.validation_split,
            seed=params.seed,
        )
        if dataset_name:
            dataset.name = dataset_name
        return info, params, dataset

    def start(
        self,
        model: str | Path,
        data: str | Path,
        params: TrainingParams | None = None,
        *,
        name: str | None = None,
        dataset_name: str | None = None,
    ) -> TrainingRun:
        """Check everything, then start the training process; returns the running run.

        Raises StudioError (DatasetError for data problems) before any process starts.
        ``dataset_name`` is the name to record when ``data`` is a stored upload.
        """
        info, params, dataset = self.check(model, data, params, dataset_name=dataset_name)
        lock = self._take_lock()
        run_id = str(uuid.uuid4())
        folder = self.settings.runs / run_id
        try:
            folder.mkdir(parents=True)
            dataset.write(folder / "data")
            run = TrainingRun(
                run_id=run_id,
                folder=folder,
                name=(name or "").strip() or f"Trained on {dataset.name}",
                model=info,
                dataset=dataset,
                params=params,
                settings=self.settings,
                lock=lock,
            )
            command = self.worker_command() + [
                "--model", str(info.path),
                "--data", str(folder / "data"),
                "--output", str(folder),
                *params.to_argv(),
            ]  # fmt: skip
            run._launch(command, with_blas(dict(os.environ), self.blas))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            lock.close()
            raise
        self.current = run
        log.info("training %s started (BLAS: %s)", run_id, self.blas.name)
        return run

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
