"""TrainingParams: the knobs of a LoRA run, their defaults and their guards.

The same model feeds the training script's flags, the ``lora-studio train`` flags and (later)
the page, so a rule is written once and every entry point reports it the same way.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Literal, Protocol, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import StudioError

ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_KEYS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TARGET_KEYS = ATTENTION_KEYS + MLP_KEYS  # llama's names: the page's choices before a model
TRACKERS = ("tensorboard", "mlflow", "wandb")  # --report-to (core.train.reporters)
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_0-9]\w*)*")


class ModelFacts(Protocol):
    """What the parameters are checked against: a model as ``core.models.inspect`` reads it
    (named by its shape here, so the shared vocabulary imports no wing)."""

    id: str
    num_layers: int
    parameter_count: int
    quantization: dict | None

    def has_module(self, key: str) -> bool: ...

    def layer_modules(self) -> list[str]: ...

    def attention_keys(self) -> list[str]: ...


class MethodError(StudioError):
    """A training method that does not suit the dataset's rows (the rows themselves are
    fine: a page can still show them)."""


def default_rank(parameter_count: int) -> int:
    """Rank by model size: 8 below 1B parameters, 16 below 10B, 32 from 10B up.

    Small models saturate early and larger ranks only cost memory there; bigger models have
    more capacity per layer to adapt, so a larger rank pays off.
    """
    if parameter_count < 1_000_000_000:
        return 8
    if parameter_count < 10_000_000_000:
        return 16
    return 32


class TrainingParams(BaseModel):
    """Parameters of one LoRA training run (``None`` means: derive it from the model)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rank: int | None = Field(None, ge=1, le=256, description="LoRA rank (default: by model size)")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; scale = alpha/rank (2 x rank)")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Adam learning rate")
    epochs: int = Field(3, ge=1, le=1000, description="passes over the training set")
    batch_size: int = Field(4, ge=1, le=1024, description="examples per step")
    lora_layers: int = Field(8, ge=-1, description="last N transformer layers to adapt (-1: all)")
    keys: list[str] | None = Field(
        None,
        description="modules to adapt in each layer, comma-separated, e.g. "
        + ",".join(TARGET_KEYS)
        + " (default: the model's own attention projections)",
    )
    validation_split: float = Field(
        0.2, gt=0, lt=1, description="share held out for validation when no valid.jsonl"
    )
    test_split: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share held out of training and validation, to evaluate the adapter on "
        "once published (0: none)",
    )
    max_seq_length: int = Field(2048, ge=16, le=131072, description="longer examples truncated")
    seed: int = Field(0, ge=0, description="seed for the split, batching and LoRA init")
    mask_prompt: bool = Field(
        True, description="train on the answers only (prompt tokens are masked from the loss)"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    save_every: int | None = Field(
        None, ge=1, description="steps between checkpoints (default: every epoch)"
    )
    eval_every: int | None = Field(
        None, ge=1, description="steps between validations (default: every epoch)"
    )
    keep: Literal["best", "last"] = Field(
        "best", description="publish the step with the best validation loss, or the last step"
    )
    early_stop: int = Field(
        0, ge=0, description="stop after N validations without improvement (0: never)"
    )
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="learning rate after the warmup: constant, or decaying to 0"
    )
    warmup_steps: float = Field(
        0, ge=0, description="optimizer steps of linear warmup from 0 (below 1: a share of the run)"
    )
    grad_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="batches whose gradients make one optimizer step"
    )
    grad_checkpoint: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower"
    )
    fine_tune_type: Literal["lora", "dora", "full"] = Field(
        "lora",
        description="lora; dora: LoRA plus a trained magnitude per output (DoRA); full: "
        "every weight of the last lora_layers layers, published as a new base model",
    )
    method: Literal["sft", "dpo", "orpo", "grpo"] = Field(
        "sft",
        description="sft: learn the answers; dpo or orpo: learn which of two answers is "
        "better, from preference rows (prompt, chosen, rejected); grpo: answer prompts "
        "and learn from the rewards the answers get",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=10,
        description="DPO: how far from the base the adapter may move (its temperature); "
        "ORPO: the weight of the odds-ratio term; GRPO: the weight of the KL to the base",
    )
    group_size: int = Field(
        4, ge=2, le=64, description="GRPO: answers drawn for each prompt (compared as a group)"
    )
    max_completion_tokens: int = Field(
        128, ge=1, le=8192, description="GRPO: the longest answer drawn, in tokens"
    )
    temperature: float = Field(1.0, gt=0, le=5, description="GRPO: sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="GRPO: nucleus sampling's probability mass")
    epsilon: float = Field(
        0.2, gt=0, lt=1, description="GRPO: the clip of the policy ratio (PPO's epsilon)"
    )
    grpo_loss: Literal["grpo", "dr_grpo", "bnpo"] = Field(
        "grpo",
        description="GRPO's normalisation: grpo (each answer's tokens averaged), bnpo (the "
        "batch's tokens averaged) or dr_grpo (over answers x max completion tokens, rewards "
        "not scaled by their spread)",
    )
    reward: list[str] | None = Field(
        None,
        description="GRPO: a reward, NAME[:WEIGHT], repeatable: exact, contains, "
        "regex:PATTERN, length:MIN-MAX, json, judge (1-10, with --judge-url), or a function "
        "of --reward-file",
        json_schema_extra={"repeat": True},
    )
    judge_url: str | None = Field(
        None,
        description="GRPO's judge reward: an OpenAI-compatible endpoint (…/v1), e.g. "
        "another `lora-studio serve`, Ollama",
    )
    judge_model: str | None = Field(None, description="GRPO's judge reward: the model there")
    judge_key_env: str | None = Field(
        None, description="GRPO's judge reward: the variable holding the endpoint's key"
    )
    rubric: str | None = Field(
        None,
        description="GRPO's judge reward: a prompt file with {question} and {answer} asking "
        "for Rating: [[N]] (a row's own rubric field wins)",
    )
    reward_file: list[str] | None = Field(
        None,
        description="GRPO: a .py file whose functions f(prompt, completion, row) -> float "
        "are rewards (repeatable; without --reward, each public function is one)",
        json_schema_extra={"repeat": True},
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="DPO's loss: sigmoid (the DPO paper's) or ipo (squared, IPO's)"
    )
    samples: int = Field(
        3,
        ge=0,
        le=16,
        description="at each validation, greedy answers to the first N validation prompts "
        "(0: none)",
    )
    sample_tokens: int = Field(64, ge=1, le=2048, description="tokens of each sample answer")
    report_to: list[str] | None = Field(
        None,
        description="trackers the run reports to, comma-separated: tensorboard, mlflow, "
        "wandb (each needs pip install 'mlx-lora-studio[tracking]')",
    )

    @field_validator("lora_layers")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 layers would train nothing")
        return value

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, value: list[str] | None) -> list[str] | None:
        if not value:
            return None
        unknown = [name for name in value if name not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {', '.join(unknown)}: choose {', '.join(TRACKERS)}")
        return list(dict.fromkeys(value))

    @field_validator("keys")
    @classmethod
    def _module_names(cls, value: list[str] | None) -> list[str] | None:
        """Module names only (``self_attn.q_proj``): which exist is the model's to say
        (``for_model``)."""
        if value is None:
            return None
        bad = [k for k in value if not _MODULE_NAME.fullmatch(k)]
        if bad or not value:
            raise ValueError(f"not module names: {bad}" if bad else "no target modules")
        return value

    def optimizer_steps(self, steps_per_epoch: int) -> int:
        """Optimizer updates in the run (one per ``grad_accumulation_steps`` batches)."""
        return steps_per_epoch * self.epochs // self.grad_accumulation_steps

    def warmup(self, steps_per_epoch: int) -> int:
        """Warmup in optimizer steps (a value below 1 is a share of the run)."""
        total = self.optimizer_steps(steps_per_epoch)
        return round(self.warmup_steps * total) if self.warmup_steps < 1 else int(self.warmup_steps)

    def check_steps(self, steps_per_epoch: int) -> None:
        """What only the dataset's size decides: warmup and accumulation must fit the run."""
        total = self.optimizer_steps(steps_per_epoch)
        if total < 1:
            raise StudioError(
                f"grad_accumulation_steps = {self.grad_accumulation_steps}: the run has only "
                f"{steps_per_epoch * self.epochs} batches",
                hint="lower it, or train more epochs",
            )
        if self.warmup(steps_per_epoch) >= total:
            raise StudioError(
                f"warmup_steps = {self.warmup_steps:g}: the run has {total} optimizer steps",
                hint="a warmup must end before the run does: lower it",
            )

    def check_data(self, data_format: str) -> None:
        """The method must suit the rows: preference rows for DPO and ORPO, answers for SFT,
        prompts for GRPO."""
        if (self.method == "grpo") != (data_format == "prompts"):
            self._refuse_prompts(data_format)
        preference = data_format == "preference"
        if self.method == "sft" and preference:
            raise MethodError(
                "method = sft: the dataset holds preference rows (prompt, chosen, rejected), "
                "which have no single answer to learn",
                hint="train them with --method dpo or --method orpo",
            )
        if self.method in ("dpo", "orpo") and not preference:
            raise MethodError(
                f"method = {self.method} needs preference rows "
                '({"prompt", "chosen", "rejected"}); '
                f"the dataset holds {data_format} rows",
                hint="train them with --method sft, or import preference data "
                "(lora-studio data import SOURCE --shape preference)",
            )

    def _refuse_prompts(self, data_format: str) -> None:
        if self.method == "grpo":
            raise MethodError(
                f'method = grpo needs prompts to answer ({{"prompt": ...}}, or messages '
                f"ending on a user turn); the dataset holds {data_format} rows",
                hint="train them with --method sft (or dpo/orpo for preference rows)",
            )
        raise MethodError(
            f"method = {self.method}: the dataset holds prompts without answers, which only "
            "GRPO can learn from (it answers them itself and scores the answers)",
            hint="train them with --method grpo --reward ..., or add the answers",
        )

    @property
    def scale(self) -> float:
        """mlx-lm's LoRA scale, alpha / rank (known once ``for_model`` filled both in)."""
        if self.rank is None or self.alpha is None:
            raise ValueError("rank and alpha are resolved by for_model()")
        return self.alpha / self.rank

    def for_model(self, model: ModelFacts) -> TrainingParams:
        """Fill in what depends on the model (rank, alpha) and check what must fit it."""
        if self.fine_tune_type == "full" and model.quantization:
            raise StudioError(
                f"fine_tune_type = full: {model.id} is quantized "
                f"({model.quantization.get('bits')}-bit), and quantized weights cannot be "
                "trained directly",
                hint="train LoRA on it (QLoRA: --fine-tune-type lora), or fully fine-tune "
                "the unquantized model",
            )
        if self.method == "grpo" and self.fine_tune_type != "lora":
            raise StudioError(
                f"method = grpo with fine_tune_type = {self.fine_tune_type}: GRPO's reference "
                "is the base, computed at each step by switching the LoRA adapter off, which a "
                f"{self.fine_tune_type} run does not have (a frozen copy is not kept)",
                hint="train GRPO with --fine-tune-type lora",
            )
        if self.lora_layers > model.num_layers:
            raise StudioError(
                f"lora_layers = {self.lora_layers}: {model.id} has {model.num_layers} layers",
                hint=f"choose 1 to {model.num_layers}, or -1 for all",
            )
        # by default the attention projections the model has, by its own names (q, k, v and
        # o in most families; Phi-3's fused qkv_proj and o_proj)
        keys = self.keys or model.attention_keys()
        missing = [key for key in keys if not model.has_module(key)]
        if missing or not keys:
            what = ", ".join(missing) if missing else "attention projection"
            raise StudioError(
                f"keys: {model.id} has no {what} modules to adapt",
                hint=f"choose among its modules: {', '.join(model.layer_modules())}",
            )
        rank = self.rank if self.rank is not None else default_rank(model.parameter_count)
        alpha = self.alpha if self.alpha is not None else 2.0 * rank
        return self.model_copy(update={"rank": rank, "alpha": alpha, "keys": keys})

    def to_argv(self) -> list[str]:
        """The flags that reproduce these parameters (see ``add_arguments``)."""
        argv: list[str] = []
        for name, value in self.model_dump(exclude_none=True).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list) and _repeated(name):
                argv += [part for item in value for part in (flag, item)]
            elif isinstance(value, list):
                argv += [flag, ",".join(value)]
            else:
                argv += [flag, repr(value) if isinstance(value, float) else str(value)]
        return argv


def allowed_range(name: str) -> str:
    """The range a numeric field accepts, read from its declared constraints."""
    low = high = ""
    for rule in TrainingParams.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = f"{rule.ge} <= "
        elif isinstance(rule, annotated_types.Gt):
            low = f"{rule.gt} < "
        elif isinstance(rule, annotated_types.Le):
            high = f" <= {rule.le}"
        elif isinstance(rule, annotated_types.Lt):
            high = f" < {rule.lt}"
    return f"{low}{name}{high}"


def validate_params(values: dict[str, Any]) -> TrainingParams:
    """Build TrainingParams, turning every violation into one sentence naming the field,
    the value and what is allowed."""
    try:
        return TrainingParams(**values)
    except ValidationError as exc:
        raise StudioError(
            "invalid training parameters:\n" + "\n".join(map(_describe, exc.errors())),
            hint="fix the values above and start again",
        ) from None


def _describe(error: dict[str, Any]) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "parameters"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"- {name}: unknown parameter"
    if error["type"].startswith(("greater", "less")):
        return f"- {name} = {value} is out of range: allowed {allowed_range(name)}"
    detail = error["msg"].removeprefix("Value error, ")
    return f"- {name} = {value}: {detail}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainingParams field, with its default and description as help."""
    for name, field in TrainingParams.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = field.description + ("" if default is None else f" (default: {default})")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif _repeated(name):
            parser.add_argument(flag, action="append", help=help_text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, choices=get_args(field.annotation), help=help_text)
        else:
            parser.add_argument(flag, help=help_text)


def params_from_args(args: argparse.Namespace) -> TrainingParams:
    """TrainingParams from parsed flags; values stay strings until pydantic checks them, so a
    bad number gets the same message as an out-of-range one."""
    values: dict[str, Any] = {}
    for name in TrainingParams.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        listed = name in ("keys", "report_to")
        values[name] = [v.strip() for v in value.split(",") if v.strip()] if listed else value
    return validate_params(values)


def _repeated(name: str) -> bool:
    """A flag given once per value (``--reward exact --reward json``): values that may hold
    commas themselves, as a regular expression may."""
    extra = TrainingParams.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("repeat"))
