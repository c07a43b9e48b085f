"""What a finished run leaves in its output folder: an adapter, or a whole model.

LoRA and DoRA runs write mlx-lm's adapter files (``adapters.safetensors`` and
``adapter_config.json``), which ``mlx_lm.load(base, adapter_path=...)`` reads. A full fine-tuning
run trained the base's own weights: it writes a whole model in the base's layout (mlx-lm's
``save``: safetensors shards and their index, config.json, the tokenizer), which loads like any
base, serves in Chat and can carry adapters of its own. Either way the weights are those of the
kept step: the best validation's checkpoint (``--keep best``) or the last step's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import load_config, save

from core import protocol
from core.adapters.layout import CONFIG_FILE, TRAINING_FILE, WEIGHTS_FILE
from core.models.inspect import ModelInfo
from core.params import TrainingParams
from core.train import checkpoints


def lora_parameters(params: TrainingParams) -> dict:
    """mlx-lm's ``lora_parameters``: what ``linear_to_lora_layers`` and adapter_config.json take."""
    return {
        "rank": params.rank,
        "scale": params.scale,
        "dropout": params.dropout,
        "keys": params.keys,
    }


def adapter_config(params: TrainingParams, info: ModelInfo) -> dict:
    """adapter_config.json in mlx-lm's format (what ``mlx_lm.load(adapter_path=)`` reads),
    plus the base model it was trained on."""
    return {
        "fine_tune_type": params.fine_tune_type,
        "num_layers": params.lora_layers,
        "lora_parameters": lora_parameters(params),
        "model": str(info.path),
        "base_model_id": info.id,
        "max_seq_length": params.max_seq_length,
        "mask_prompt": params.mask_prompt,
        "seed": params.seed,
        "grad_accumulation_steps": params.grad_accumulation_steps,
        "grad_checkpoint": params.grad_checkpoint,
    }


def write(loop, output: Path, config: dict, base: ModelInfo, tokenizer) -> protocol.Complete:
    """The kept step's weights in ``output``: the adapter files, or (full fine-tuning) the
    whole model, with the same configuration as the record of how it was trained (not as
    adapter_config.json: the folder is a model, not an adapter)."""
    state = loop.state
    kept = "best" if loop.params.keep == "best" and state.best_step is not None else "last"
    kept_step = state.best_step if kept == "best" else state.step
    output.mkdir(parents=True, exist_ok=True)
    best = checkpoints.step_folder(loop.checkpoint_folder, kept_step) / WEIGHTS_FILE
    if config["fine_tune_type"] == "full":
        if kept_step != state.step:
            loop.model.load_weights(list(mx.load(str(best)).items()), strict=False)
        save(output, base.path, loop.model, tokenizer, load_config(base.path), donate_model=False)
    elif kept_step == state.step:
        weights = dict(tree_flatten(loop.model.trainable_parameters()))
        mx.save_safetensors(str(output / WEIGHTS_FILE), weights)
    else:
        shutil.copyfile(best, output / WEIGHTS_FILE)
    full = config["fine_tune_type"] == "full"
    (output / (TRAINING_FILE if full else CONFIG_FILE)).write_text(json.dumps(config, indent=2))
    return protocol.Complete(
        adapter_path=str(output),
        steps=state.step,
        final_loss=loop.last_loss,
        kept=kept,
        kept_step=kept_step,
        best_step=state.best_step,
        best_loss=state.best_loss,
        stopped_early=loop.stopped_early,
    )
