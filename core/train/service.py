"""TrainingService: validate, start or resume a run's training process, publish again.

The service, not a browser tab or a terminal, owns a run (``core.train.process``). A run lives
in ``runs/<id>/`` with its state (``core.train.runs``) and checkpoints until it succeeds; then
it is published into the adapters folder in one rename (``core.train.publish``). Stopped,
interrupted and failed runs stay, to be resumed, published again or discarded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import IO

from core import protocol
from core.adapters.layout import EVENTS_FILE, TEST_FILE
from core.data.check import RowReader
from core.data.scan import DatasetScan, scan_dataset
from core.data.tools import supports_tools
from core.errors import StudioError
from core.judge import read_rubric
from core.machine.blas import Blas, with_blas
from core.machine.blas_choice import choose_blas
from core.machine.hosts import copy_to_hosts
from core.machine.jit import native_jit
from core.machine.launch import Launch, is_this_machine
from core.machine.memory import available_memory_gb
from core.models.inspect import ModelInfo, inspect_model, tokenizer
from core.params import TrainingParams
from core.settings import Settings
from core.train import checkpoints, rewards
from core.train.plan import DataShape, MemoryPlan, ModelShape, plan, refusal
from core.train.process import TrainingRun
from core.train.publish import publish, write_events
from core.train.runs import (
    CHECKPOINTS,
    DATA,
    REWARDS,
    RunRecord,
    RunStore,
    hold_alive,
    latest_checkpoint_step,
    take_runs_lock,
)
from core.train.watch import WatchedRun, watched_run

log = logging.getLogger(__name__)
LOOK_SECONDS = 1.0  # how often pages' questions look for a run of another process


class BusyError(StudioError):
    """Another training holds the studio (its runs lock): nothing is wrong with this one."""


class TrainingService:
    """Starts and resumes trainings, one at a time per studio, and remembers the current one."""

    def __init__(self, settings: Settings, blas: Blas | None = None):
        self.settings = settings.ensure()
        self.blas = blas or choose_blas()
        self.runs = RunStore(self.settings.runs)
        self.current: TrainingRun | None = None  # the last run this service started
        self._watched: dict[str, WatchedRun] = {}
        self._looked = (0.0, None)  # when another process's run was looked for, and found
        self.mark_interrupted()

    def active(self) -> TrainingRun | WatchedRun | None:
        """The run going on in this studio's folders: this service's own, else one that
        another process trains (a `lora-studio train` in a terminal), looked for at most
        once a second; else the last run this service started, finished."""
        own = self.current
        if own is not None and not own.done:
            return own
        when, found = self._looked
        if time.monotonic() - when >= LOOK_SECONDS:
            found = watched_run(self.settings.runs, self.settings.adapters, self._watched)
            self._looked = (time.monotonic(), found)
        if found is not None and not found.done:
            return found
        return own

    def mark_interrupted(self) -> None:
        """Runs left ``running`` by a process that died are ``interrupted`` (with their last
        checkpoint). Takes no lock that a start needs: listing never refuses a start."""
        for record in self.runs.mark_interrupted():
            step = record.checkpoint_step
            log.warning("run %s was interrupted (last checkpoint: step %s)", record.id, step)

    def list_runs(self) -> list[RunRecord]:
        """Every unfinished run, newest first, with up-to-date states."""
        self.mark_interrupted()
        return self.runs.list()

    def worker_command(self) -> list[str]:
        """How the training process is started: this interpreter, the installed package."""
        return [sys.executable, "-m", "core.train.worker"]

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
            test_split=params.test_split,
        )
        if dataset_name:
            dataset.name = dataset_name
        params = self.fit(info, dataset, params)
        (launch or Launch()).check(params.batch_size, dataset.valid_count)
        return info, params, dataset

    def fit(self, info: ModelInfo, dataset: DatasetScan, params: TrainingParams) -> TrainingParams:
        """The parameters against a model and a dataset already checked (a sweep checks each
        trial's settings so, before its first trial): what the method, the steps, the tool
        rows and the rewards need."""
        params = params.for_model(info)
        params.check_data(dataset.format)
        params.check_steps(dataset.train_count // params.batch_size)
        if dataset.tool_rows and not supports_tools(tokenizer(info.path)):
            raise StudioError(
                f"{dataset.tool_rows} row(s) call tools, and {info.id}'s chat template does not "
                "write tools: the model would learn calls to tools it is never shown",
                hint="train them on a base whose template has tools (Qwen 2.5, Llama 3.1, "
                "...), or write the tools and calls into the rows' text",
            )
        if params.method == "grpo":
            judge = bool(params.judge_url and params.judge_model)
            rewards.check(params.reward, params.reward_file, judge)
            read_rubric(params.rubric)  # a rubric that does not read is said now
        return params

    def plan(
        self,
        info: ModelInfo,
        params: TrainingParams,
        dataset: DatasetScan,
        launch: Launch | None = None,
    ) -> MemoryPlan:
        """The memory the run needs on this machine (``core.train.plan``), against what it has:
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
        test_data: str | Path | None = None,
        slot: int = 0,
    ) -> TrainingRun:
        """Check everything, then start the training process; returns the running run.

        Raises StudioError (DatasetError for data problems) before any process starts, and
        when the memory plan says the run would not fit, unless ``force``. ``dataset_name``
        is the name to record when ``data`` is a stored upload; ``launch`` spreads the run
        over several processes or hosts. The run keeps its test rows (``test_data``, the
        ``test_split``, or a dataset folder's test.jsonl) as ``test.jsonl``, which is
        published with the adapter for an evaluation. ``slot``: the runs lock's slot (a
        sweep's trials side by side, ``take_runs_lock``).
        """
        launch = launch or Launch()
        info, params, dataset = self.check(
            model, data, params, dataset_name=dataset_name, launch=launch
        )
        if test_data:
            check_test_data(test_data, params)
        memory = self.plan(info, params, dataset, launch)
        if not memory.fits and not force:
            raise refusal(memory)
        record = _new_record(name, info, dataset, params, launch)
        record.leaked_test_rows = [
            [leak.held_out_line, leak.training_line, leak.similarity]
            for leak in dataset.test_leaks(Path(test_data).expanduser() if test_data else None)
        ]
        folder = self.settings.runs / record.id
        locks = [self._take_lock(slot)]
        try:
            folder.mkdir(parents=True)
            locks.append(hold_alive(folder))
            _write_data(folder, dataset, test_data)
            params = _keep_reward_files(folder, params)
            record.params = params.model_dump(mode="json")
            record.write(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            _release(locks)
            raise
        run = self._launch(record, folder, info, dataset, params, locks, history=[])
        run.memory = memory
        log.info("training %s started (BLAS: %s; %s)", record.id, self.blas.name, memory.summary())
        return run

    def resume(self, run_id: str, slot: int = 0) -> TrainingRun:
        """Continue a stopped or interrupted run from its last checkpoint (from the start if
        it has none): same step numbering, data order, optimizer state and history."""
        locks = [self._take_lock(slot)]
        try:
            self.runs.mark_interrupted()
            record = self.runs.get(run_id)
            if not record.resumable:
                raise _not_resumable(record)
            folder = self.runs.path(run_id)
            locks.append(hold_alive(folder))
            info = inspect_model(record.model_path)
            params = TrainingParams(**record.params)
            dataset = scan_dataset(folder / DATA, batch_size=params.batch_size, seed=params.seed)
            dataset.name = record.dataset_name
            step = latest_checkpoint_step(folder)
            history = _history_until(protocol.read_events(folder / EVENTS_FILE), step)
            write_events(folder / EVENTS_FILE, history)
            record.state, record.error, record.hint, record.pruned = "running", None, None, None
            record.step = record.checkpoint_step = step
            record.write(folder)
        except BaseException:
            _release(locks)
            raise
        run = self._launch(record, folder, info, dataset, params, locks, history=history)
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
                    protocol.Complete(**record.completed),
                    adapters=self.settings.adapters,
                    models=self.settings.models,
                )
            except OSError as exc:
                raise StudioError(f"publishing run {run_id} failed again: {exc}") from exc

    def _launch(self, record, folder, info, dataset, params, locks, history) -> TrainingRun:
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
                locks=locks,
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
            _release(locks)
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
        # the exact checkpoint this side chose: every rank resumes from it, or says it cannot
        step = checkpoints.step_folder(folder / CHECKPOINTS, record.checkpoint_step)
        return [*command, "--resume", str(step)], [data, step]

    def _take_lock(self, slot: int = 0) -> IO:
        """An exclusive lock on the studio's runs folder, held for the whole run; it also
        holds across processes (a CLI run and the page on one studio)."""
        lock = take_runs_lock(self.settings.runs, slot)
        if lock is None:
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
            raise BusyError(
                f"a training is already running in this studio{detail}",
                hint="wait for it to finish, or end it with the Stop button (Ctrl-C in a "
                "terminal), then start again",
            )
        return lock


def _new_record(
    name: str | None, info: ModelInfo, dataset: DatasetScan, params: TrainingParams, launch
) -> RunRecord:
    """A new run's record: what it trains, on what, with what (a new id)."""
    return RunRecord(
        id=str(uuid.uuid4()),
        name=(name or "").strip() or f"Trained on {dataset.name}",
        state="running",
        model_id=info.id,
        model_path=str(info.path),
        model_layers=info.num_layers,
        model_quantization=info.quantization,
        dataset_name=dataset.name,
        dataset_format=dataset.format,
        dataset_system=dataset.system_prompt,
        params=params.model_dump(mode="json"),
        launch=launch.model_dump(mode="json") if launch.distributed else None,
    )


def _keep_reward_files(folder: Path, params: TrainingParams) -> TrainingParams:
    """GRPO's reward files copied into the run (``rewards/``), which trains with the copies:
    a resumed run scores as it began, whatever became of the originals."""
    if not params.reward_file:
        return params
    kept = folder / REWARDS
    kept.mkdir()
    copies = []
    for index, file in enumerate(params.reward_file):  # one folder each: names may clash
        copy = kept / str(index) / Path(file).name
        copy.parent.mkdir()
        shutil.copyfile(file, copy)
        copies.append(str(copy))
    return params.model_copy(update={"reward_file": copies})


def _write_data(folder: Path, dataset: DatasetScan, test_data: str | Path | None) -> None:
    """The run's rows: its train and validation split, and its test rows (a file given, a
    split, or the dataset folder's own) as the run's test.jsonl."""
    own_test = folder / TEST_FILE if dataset.test_count and not test_data else None
    dataset.write(folder / DATA, test_file=own_test)
    if test_data:
        shutil.copyfile(Path(test_data).expanduser(), folder / TEST_FILE)


def check_test_data(path: str | Path, params: TrainingParams) -> int:
    """The rows of a --test-data file, every line checked as training's are."""
    if params.test_split:
        raise StudioError("give a test split or a test file, not both")
    reader = RowReader()
    count = sum(1 for _ in reader.rows(Path(path).expanduser()))
    reader.out.raise_if_any()
    return count


def _release(locks: list[IO]) -> None:
    for lock in locks:
        lock.close()


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
    """The events a resumed run keeps: what the killed session reported (its figures,
    validations and samples, beyond the checkpoint too), and the checkpoints up to the one
    it resumes from. The worker redoes the steps after that checkpoint; their events are the
    same figures (resuming is exact) and the run keeps the first said (``TrainingRun``), so
    the history, the chart and the trackers never hold a step twice."""
    said = protocol.Start | protocol.Progress | protocol.Validation | protocol.Samples
    return [
        e
        for e in events
        if isinstance(e, said) or (isinstance(e, protocol.Checkpoint) and e.step <= (step or 0))
    ]
