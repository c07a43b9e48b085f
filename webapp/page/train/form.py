"""The Train tab's parameter fields, derived from ``TrainingParams``: a knob added there
appears here (and in argparse, through ``core.params.add_arguments``) without another line.

Only the page's own words live here: short labels, the names of choices, which fields sit
above the fold, and what a field shows for a default that the model decides (``None``).
Ranges are not given to the components: an out-of-range value goes through the studio's own
check, which names the field, the value and the range.
"""

from __future__ import annotations

from typing import Literal, get_args, get_origin

import gradio as gr

from core.params import ATTENTION_KEYS, TARGET_KEYS, TRACKERS, TrainingParams, validate_params

DEFAULTS = TrainingParams()
EVERY_EPOCH = 0  # what the "every N steps" fields show for "at each epoch's end"
LAUNCH_FIELDS = ("hosts", "processes")
# the form's fields, in the order the events receive them
FORM_FIELDS = (*TrainingParams.model_fields, *LAUNCH_FIELDS)
MAIN_FIELDS = (
    "method",
    "beta",
    "rank",
    "alpha",
    "learning_rate",
    "epochs",
    "batch_size",
    "lora_layers",
)
LABELS = {
    "rank": "Rank (1-256)",
    "alpha": "Alpha (2 x rank)",
    "learning_rate": "Learning rate",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lora_layers": "LoRA layers (-1: all)",
    "keys": "Target modules",
    "validation_split": "Validation split",
    "max_seq_length": "Max sequence length",
    "seed": "Seed",
    "mask_prompt": "Train on answers only (mask prompts)",
    "dropout": "LoRA dropout",
    "save_every": "Checkpoint every N steps (0: each epoch)",
    "eval_every": "Validate every N steps (0: each epoch)",
    "keep": "Publish the weights of the",
    "early_stop": "Early stopping: validations without improvement (0: off)",
    "lr_schedule": "Learning rate schedule (after the warmup)",
    "warmup_steps": "Warmup steps (below 1: a share of the run)",
    "grad_accumulation_steps": "Gradient accumulation steps (batches per optimizer step)",
    "grad_checkpoint": "Gradient checkpointing (less memory, slower)",
    "fine_tune_type": "Fine-tune type",
    "method": "Method",
    "beta": "β (DPO: how far from the base; ORPO: weight of the odds ratio)",
    "dpo_loss": "DPO loss",
    "group_size": "GRPO: answers per prompt",
    "max_completion_tokens": "GRPO: longest answer (tokens)",
    "temperature": "GRPO: sampling temperature",
    "top_p": "GRPO: top-p",
    "epsilon": "GRPO: clip ε",
    "grpo_loss": "GRPO loss",
    "reward": "GRPO rewards: pick, or type regex:PATTERN, length:MIN-MAX; :WEIGHT after any",
    "reward_file": "GRPO reward files (the studio's rewards/ folder)",
    "judge_url": "GRPO judge reward: an OpenAI-compatible URL (…/v1)",
    "judge_model": "GRPO judge reward: the model there",
    "judge_key_env": "GRPO judge reward: the variable with its key (owner only)",
    "rubric": "GRPO judge reward: a rubric file (default: the studio's)",
    "report_to": "Report to (pip install 'mlx-lora-studio[tracking]')",
}
GRPO_FIELDS = (
    "reward",
    "reward_file",
    "group_size",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "epsilon",
    "grpo_loss",
    "judge_url",
    "judge_model",
    "judge_key_env",
    "rubric",
)
REWARD_CHOICES = ["exact", "contains", "json", "regex:", "length:20-80", "judge"]
CHOICES = {
    "keep": {"best": "best validation loss", "last": "last step"},
    "fine_tune_type": {
        "lora": "LoRA",
        "dora": "DoRA (LoRA + a magnitude per output)",
        "full": "Full fine-tuning (the layers' own weights; makes a new base model)",
    },
    "method": {
        "sft": "SFT: learn the answers",
        "dpo": "DPO: prefer the chosen answer",
        "orpo": "ORPO: SFT + odds ratio, no reference",
        "grpo": "GRPO: answer prompts, learn from rewards",
    },
    "dpo_loss": {"sigmoid": "sigmoid (DPO's)", "ipo": "IPO (squared)"},
    "grpo_loss": {
        "grpo": "GRPO (per answer)",
        "bnpo": "BNPO (per token)",
        "dr_grpo": "Dr. GRPO (unscaled)",
    },
}
# what a field whose default the model decides shows before a model is picked
SHOWN = {"rank": 8, "alpha": 16, "save_every": EVERY_EPOCH, "eval_every": EVERY_EPOCH}
SHOWN["keys"] = list(ATTENTION_KEYS)  # until a model is picked: then its own modules


def preference_only(method: str) -> dict:
    """β means something to DPO, ORPO and GRPO only: shown for them."""
    return gr.update(visible=method != "sft")


def field(name: str) -> gr.components.Component:
    """The component for one TrainingParams field, by its type."""
    spec = TrainingParams.model_fields[name]
    label = LABELS.get(name) or spec.description.capitalize()
    value = SHOWN.get(name, spec.get_default(call_default_factory=True))
    kind = spec.annotation
    if name in ("reward", "reward_file"):  # the rewards/ folder's names come at page load
        choices = REWARD_CHOICES if name == "reward" else []
        return gr.Dropdown(
            choices, value=[], label=label, multiselect=True, allow_custom_value=True
        )
    if name == "report_to":
        return gr.CheckboxGroup(list(TRACKERS), value=[], label=label)
    if kind is bool:
        return gr.Checkbox(value, label=label)
    if str in get_args(kind):  # optional text: a URL, a name, a file
        return gr.Textbox(value or "", label=label)
    if get_origin(kind) is Literal:
        names = CHOICES.get(name, {})
        options = [(names.get(choice, choice), choice) for choice in get_args(kind)]
        return gr.Radio(options, value=value, label=label)
    if list in (get_origin(kind), *map(get_origin, get_args(kind))):
        return gr.CheckboxGroup(list(TARGET_KEYS), value=value, label=label)
    integer = int in (kind, *get_args(kind))
    return gr.Number(value, label=label, precision=0 if integer else None)


def main_fields() -> dict[str, gr.components.Component]:
    """The fields above the fold, two to a row."""
    form: dict[str, gr.components.Component] = {}
    for left, right in zip(MAIN_FIELDS[::2], MAIN_FIELDS[1::2], strict=True):
        with gr.Row():
            form[left], form[right] = field(left), field(right)
    form["beta"].visible = DEFAULTS.method != "sft"  # then the method's choice shows it
    return form


def advanced_fields() -> dict[str, gr.components.Component]:
    """Every other field but GRPO's (``rewards_panel``), in TrainingParams' order (placed
    where the caller opened them)."""
    mine = (n for n in TrainingParams.model_fields if n not in MAIN_FIELDS + GRPO_FIELDS)
    return {name: field(name) for name in mine}


def params(form: dict) -> TrainingParams:
    """The form's values as checked TrainingParams (0 in the "every" fields: each epoch).
    Fields a script leaves out keep their defaults."""
    form = {k: v for k, v in form.items() if v not in (None, [], "") and k not in LAUNCH_FIELDS}
    form["keys"] = form.get("keys") or DEFAULTS.keys
    for name in ("save_every", "eval_every"):
        if form.get(name) == EVERY_EPOCH:
            form[name] = None
    return validate_params(form)
