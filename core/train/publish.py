"""Publishing a finished run: metadata.json, then one rename from ``runs/`` into ``adapters/``
(or, for full fine-tuning, into ``models/``: the run made a new base model).

The folder appears whole or not at all. Anything that goes wrong on the way (a full
disk while writing metadata.json, a failed copy to another file system) leaves the run folder
as it was, with the only copy of the weights, and no partial folder among the adapters.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from statistics import fmean

from core import protocol
from core.adapters.layout import EVENTS_FILE
from core.adapters.store import AdapterMetadata
from core.files import write_text_atomic
from core.train.runs import ALIVE_FILE, CHECKPOINTS, DATA, STATE_FILE, RunRecord

log = logging.getLogger(__name__)

# what a run needs and an adapter does not
RUN_ONLY = (CHECKPOINTS, DATA, STATE_FILE, ALIVE_FILE)


def metadata(
    record: RunRecord, events: list[protocol.Event], complete: protocol.Complete
) -> AdapterMetadata:
    """metadata.json from the run's record and the figures its events reported."""
    start = next(e for e in events if isinstance(e, protocol.Start))
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    validations = [e.loss for e in events if isinstance(e, protocol.Validation)]
    trained = [e.loss for e in events if isinstance(e, protocol.Validation) and e.step > 0]
    params = record.params
    return AdapterMetadata(
        adapterName=record.name,
        baseModelId=record.model_id,
        baseModelPath=record.model_path,
        trainingDataset=record.dataset_name,
        epochs=params["epochs"],
        rank=params["rank"],
        alpha=params["alpha"],
        learningRate=params["learning_rate"],
        batchSize=params["batch_size"],
        loraLayers=record.model_layers if params["lora_layers"] == -1 else params["lora_layers"],
        trainingSteps=complete.steps,
        finalLoss=complete.final_loss,
        finalValidationLoss=trained[-1] if trained else None,
        bestValidationLoss=complete.best_loss,
        bestStep=complete.best_step,
        keptCheckpoint=complete.kept,
        keptStep=complete.kept_step,
        stoppedEarly=complete.stopped_early,
        initialValidationLoss=validations[0] if validations else None,
        layerCount=start.lora_modules,
        parameterCount=start.trainable_params,
        tokensPerSecond=round(fmean(e.tokens_per_second for e in progress), 1)
        if progress
        else None,
        tokensCounted="trained",
        trainExamples=start.num_train,
        validationExamples=start.num_val,
        targetModules=params["keys"],
        maxSeqLength=params["max_seq_length"],
        blas=start.blas,
        durationSeconds=round(record.elapsed_seconds, 2),
        datasetFormat=record.dataset_format,
        systemPrompt=record.dataset_system,
        baseQuantization=record.model_quantization,
        fineTuneType=params.get("fine_tune_type", "lora"),
        lossFunction=start.loss,
        leakedTestRows=len(record.leaked_test_rows),
        ranks=start.ranks,
        **_preference_fields(params, events, complete),
    )


def _preference_fields(params: dict, events: list, complete: protocol.Complete) -> dict:
    """A preference run's method and the figures of the weights it published (the
    validation at the kept step), and the untrained baseline's."""
    method = params.get("method", "sft")
    if method == "sft":
        return {"method": method}
    validations = {e.step: e for e in events if isinstance(e, protocol.Validation)}
    kept = validations.get(complete.kept_step if complete.kept_step is not None else complete.steps)
    first = validations.get(0)
    if method == "grpo":
        return {
            "method": method,
            "beta": params.get("beta"),
            "grpoLoss": params.get("grpo_loss"),
            "groupSize": params.get("group_size"),
            "rewards": params.get("reward"),
            "rewardFiles": [Path(f).name for f in params.get("reward_file") or []],
            "heldOutReward": kept and kept.reward,
            "initialHeldOutReward": first and first.reward,
        }
    return {
        "method": method,
        "beta": params.get("beta"),
        "dpoLoss": params.get("dpo_loss") if method == "dpo" else None,
        "rewardAccuracy": kept and kept.reward_accuracy,
        "rewardMargin": kept and kept.reward_margin,
        "initialRewardAccuracy": first and first.reward_accuracy,
        "initialRewardMargin": first and first.reward_margin,
    }


def publish(
    record: RunRecord, folder: Path, complete: protocol.Complete, *, adapters: Path, models: Path
) -> protocol.Complete:
    """Move a finished run folder into ``adapters/`` as one new adapter folder, or (full
    fine-tuning) into ``models/`` as a new base model; returns the run's final event, which
    names the published folder."""
    full = record.params.get("fine_tune_type") == "full"
    target = models / model_folder_name(record, models) if full else adapters / folder.name
    update = {"adapter_path": str(target)}
    update |= {"model_id": target.name} if full else {"adapter_id": record.id}
    final = complete.model_copy(update=update)
    events = [e for e in protocol.read_events(folder / EVENTS_FILE) if not _ending(e)]
    metadata(record, events, complete).write(folder)
    write_events(folder / EVENTS_FILE, [*events, final])
    aside = _set_aside(folder)
    try:
        os.rename(folder, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            _put_back(aside, folder)
            raise
        try:
            _copy_across(folder, target)
        except BaseException:
            _put_back(aside, folder)
            raise
    shutil.rmtree(aside, ignore_errors=True)
    log.info("published %s %s to %s", "model" if full else "adapter", folder.name, target)
    return final


def model_folder_name(record: RunRecord, models: Path) -> str:
    """A new base model's folder: the run's name as a folder name (``Pirate voice`` ->
    ``pirate-voice``), with the run id's start when a model already has that name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", record.name.lower()).strip("-.") or "model"
    return name if not (models / name).exists() else f"{name}-{record.id[:8]}"


def _set_aside(folder: Path) -> Path:
    """Move the run-only files out of the run folder (one rename each, same file system), so
    that the folder which appears among the adapters holds the adapter's files alone."""
    aside = folder.parent / f".{folder.name}.run-only"
    aside.mkdir(exist_ok=True)
    for name in RUN_ONLY:
        if (folder / name).exists():
            os.rename(folder / name, aside / name)
    return aside


def _put_back(aside: Path, folder: Path) -> None:
    """Publishing failed: the run folder gets its run-only files back, as it was."""
    for name in RUN_ONLY:
        if (aside / name).exists():
            os.rename(aside / name, folder / name)
    aside.rmdir()


def _copy_across(folder: Path, target: Path) -> None:
    """Another file system: copy beside the target, then rename there in one step."""
    staging = target.parent / f".{target.name}.partial"
    try:
        shutil.copytree(folder, staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)


def _ending(event: protocol.Event) -> bool:
    return isinstance(event, protocol.Complete | protocol.Error)


def write_events(path: Path, events: list[protocol.Event]) -> None:
    write_text_atomic(path, "".join(e.to_line() for e in events))
