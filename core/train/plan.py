"""MemoryPlan: a run's peak memory, predicted before Start from what the studio already knows.

A LoRA step's peak is the base weights, the LoRA parameters with their gradients and Adam
moments, the activations the backward pass keeps for every adapted layer, and the logits of
the loss window (``core.train.loss``: the head runs only where targets are). Each term is a count of
elements from the model's shape (config.json and safetensors headers), the run's parameters
and the dataset (its longest examples, tokenized, and its size): the plan loads no weight.

The per-layer coefficients (values kept per token, per attention score) are what the studio's
own worker keeps; they were fitted and are checked on real runs of several sizes by
``bench/memory_plan.py`` (docs/benchmarks.md). When the plan does not fit, it says which
single changes would make it fit, each with its own estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from core.data.scan import DatasetScan
from core.errors import StudioError
from core.machine.memory import available_memory_gb
from core.models.inspect import ModelInfo, weight_files
from core.params import TrainingParams
from core.train.frozen import MEMORY_SHARE

GB = 1e9
# Python, MLX, mlx-lm and the tokenizer in the worker before any weight (peak RSS minus MLX's
# peak, measured 0.12 GB with a 512-word tokenizer to 0.19 GB)
RUNTIME_GB = 0.13
# values the backward pass keeps per token in an adapted layer: of hidden width (norms, q/k/v,
# attention output, residuals) and of MLP width (gate, up, activation, product)
KEPT_PER_HIDDEN = 6.0
KEPT_PER_INTERMEDIATE = 5.25
KEPT_PER_SCORE = 1.25  # per attention score (heads x width x width)
LOGIT_COPIES = 3.0  # the window's logits, their exponentials, their gradient
# float32 LoRA parameter, its gradient, its accumulated gradient, Adam's two moments
TRAINED_BYTES = 20
# full fine-tuning: a trained weight is already among the base's; add its gradient and Adam's
# two moments, in the weight's own dtype (mlx-lm trains the weights as they are stored).
# Fitted by bench/memory_plan.py --only full: 3 copies predicts the peak RSS of 8 and 30
# trained layers of the demo model and 8 of a 300M model within 12%; 5 (a gradient kept
# whole beside its accumulation, and the old weights beside the new) overestimated by 52%
FULL_COPIES = 3
# a token in the worker's tokenized dataset: a Python int in a list (measured 34 bytes); the
# rows themselves take about their size in the file
TOKEN_BYTES = 34
PAD_TO = 8  # core.train.batches.trimmed's widths
QUANTIZED_BITS = 4  # the "quantized base" alternative
QUANTIZED_GROUP = 64
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
SEQUENCES_PER_ROW = {"dpo": 2, "orpo": 2}  # a preference row is its two answers (GRPO: G)


@dataclass(frozen=True)
class ModelShape:
    """What of a base model decides a run's memory."""

    hidden: int
    intermediate: int
    heads: int
    layers: int
    vocab: int
    dtype_bytes: int  # of activations: the model's float weights' dtype
    weights_bytes: int
    quantized_bytes: int  # the weights as a 4-bit copy (``models quantize --bits 4``)
    quantized: bool
    projections: dict[str, tuple[int, int]]  # LoRA key -> (inputs, outputs)
    head_softcap: bool  # a logit soft-cap: mlx-lm's default loss over every position
    layer_bytes: int = 0  # one transformer layer's weights (what full fine-tuning trains)

    @classmethod
    def of(cls, info: ModelInfo) -> ModelShape:
        config = json.loads((info.path / "config.json").read_text())
        config = config.get("text_config", config)
        hidden = int(config["hidden_size"])
        embedding = next((s for n, s in info.tensors.items() if "embed_tokens" in n), [0, 0])
        return cls(
            hidden=hidden,
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            heads=int(config.get("num_attention_heads") or 1),
            layers=info.num_layers,
            vocab=int(config.get("vocab_size") or embedding[0]),
            dtype_bytes=max((DTYPE_BYTES.get(d, 0) for d in info.dtypes.values()), default=4),
            weights_bytes=sum(f.stat().st_size for f in weight_files(info.path)),
            quantized_bytes=_quantized_bytes(info),
            quantized=bool(info.quantization),
            projections=_projections(info),
            head_softcap=bool(config.get("final_logit_softcapping")),
            layer_bytes=_layer_bytes(info),
        )


def _layer_bytes(info: ModelInfo) -> int:
    """The last transformer layer's weights, in bytes (every layer of most families is the
    same size; where they differ, the last is as large as any)."""
    last = f".layers.{info.num_layers - 1}."
    return sum(
        math.prod(shape) * DTYPE_BYTES.get(info.dtypes.get(name, ""), 4)
        for name, shape in info.tensors.items()
        if last in name
    )


def _quantized_bytes(info: ModelInfo) -> int:
    """The weights' size once mlx-lm quantizes every matrix whose rows split into groups."""
    if info.quantization:
        return 0
    total = 0
    for name, shape in info.tensors.items():
        size, dtype = math.prod(shape), DTYPE_BYTES.get(info.dtypes.get(name, ""), 4)
        if len(shape) == 2 and shape[-1] % QUANTIZED_GROUP == 0:
            groups = size // QUANTIZED_GROUP
            total += size * QUANTIZED_BITS // 8 + 2 * groups * dtype  # values, scales, biases
        else:
            total += size * dtype
    return total


def _projections(info: ModelInfo) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each linear layer LoRA may wrap, from the last layer's weights
    (a quantized weight packs 32 / bits values in each of its columns)."""
    bits = (info.quantization or {}).get("bits")
    last = f".layers.{info.num_layers - 1}."
    shapes = {}
    for name, shape in info.tensors.items():
        if last in name and name.endswith(".weight") and len(shape) == 2:
            key = name.split(last, 1)[1].removesuffix(".weight")
            packed = bits and name.removesuffix(".weight") + ".scales" in info.tensors
            shapes[key] = (shape[1] * 32 // bits if packed else shape[1], shape[0])
    return shapes


@dataclass(frozen=True)
class DataShape:
    """The dataset in tokens: its longest example, its widest span of trained tokens, and
    about how many it has in all (the worker holds them all, tokenized)."""

    longest: int
    window: int
    tokens: int = 0
    size_bytes: int = 0

    @classmethod
    def of(cls, scan: DatasetScan, tokenizer: Any, *, mask_prompt: bool) -> DataShape:
        """From mlx-lm's own tokenization (chat template, prompt mask) of the scan's longest
        rows and its sample; the total scaled from the sample's tokens per byte."""
        rows = scan.sample + scan.longest
        items = scan.tokenized(tokenizer, mask_prompt)
        tokens_per_byte = sum(len(tokens) for tokens, _ in items) / sum(
            len(json.dumps(row).encode()) for row in rows
        )
        return cls(
            longest=max(len(tokens) for tokens, _ in items),
            window=max(len(tokens) - max(offset - 1, 0) for tokens, offset in items),
            tokens=round(scan.size_bytes * tokens_per_byte),
            size_bytes=scan.size_bytes,
        )


@dataclass(frozen=True)
class Estimate:
    """A run's predicted peak memory, by part, in GB."""

    weights_gb: float
    trained_gb: float  # LoRA parameters (or full fine-tuning's), gradients, Adam moments
    activations_gb: float
    loss_gb: float
    data_gb: float  # the dataset's rows and tokens in the worker, and the frozen outputs kept
    runtime_gb: float = RUNTIME_GB

    @property
    def peak_gb(self) -> float:
        return sum(vars(self).values())


def estimate(
    model: ModelShape, params: TrainingParams, data: DataShape, ranks: int = 1
) -> Estimate:
    """The peak of one worker process (one rank of ``ranks``, which share each batch). A
    preference row is two sequences (its chosen and rejected answers, in one batch); DPO's
    reference pass runs before training, forward only, and holds less than a step."""
    grpo = params.method == "grpo"
    per_row = params.group_size if grpo else SEQUENCES_PER_ROW.get(params.method, 1)
    batch = max(1, params.batch_size // ranks) * per_row
    if grpo:  # G answers a prompt, each up to the longest answer drawn
        data = replace(
            data,
            longest=data.longest + params.max_completion_tokens,
            window=params.max_completion_tokens + 1,
        )
    length = min(data.longest, params.max_seq_length)
    width = min(PAD_TO * math.ceil(length / PAD_TO), params.max_seq_length)
    window = width if model.head_softcap else min(data.window, width)
    adapted = model.layers if params.lora_layers < 0 else min(params.lora_layers, model.layers)
    tokens = batch * width
    per_token = KEPT_PER_HIDDEN * model.hidden + KEPT_PER_INTERMEDIATE * model.intermediate
    layer = tokens * per_token + KEPT_PER_SCORE * batch * model.heads * width * width
    kept = adapted * layer
    if params.grad_checkpoint:  # each layer keeps its input; one layer is recomputed at a time
        kept = adapted * 2 * tokens * model.hidden + layer
    logits = LOGIT_COPIES * batch * window * model.vocab
    frozen_gb = _frozen_outputs_gb(model, params, data, adapted)
    return Estimate(
        weights_gb=model.weights_bytes / GB,
        trained_gb=_trained_bytes(model, params, adapted) / GB,
        activations_gb=kept * model.dtype_bytes / GB,
        loss_gb=logits * model.dtype_bytes / GB,
        data_gb=(data.size_bytes + data.tokens * TOKEN_BYTES) / GB + frozen_gb,
    )


def _frozen_outputs_gb(model: ModelShape, params: TrainingParams, data: DataShape, adapted):
    """The frozen layers' outputs an SFT run keeps (``core.train.frozen``): a hidden vector
    per token, when the run leaves layers frozen and they fit its share of the memory."""
    if params.method != "sft" or adapted >= model.layers:
        return 0.0
    kept = data.tokens * model.hidden * model.dtype_bytes / GB
    free = available_memory_gb()
    return kept if free is None or kept <= MEMORY_SHARE * free else 0.0


def _trained_bytes(model: ModelShape, params: TrainingParams, adapted: int) -> int:
    """The trained parameters' own memory: LoRA's with theirs, or full fine-tuning's."""
    if params.fine_tune_type == "full":
        return adapted * model.layer_bytes * FULL_COPIES
    rank = params.rank or 8
    per_layer = 0
    for key in params.keys:
        inputs, outputs = model.projections.get(key, (model.hidden, model.hidden))
        per_layer += rank * (inputs + outputs) + (outputs if params.fine_tune_type == "dora" else 0)
    return adapted * per_layer * TRAINED_BYTES


@dataclass(frozen=True)
class Alternative:
    """One change to the run, and the plan's peak with it."""

    change: str
    flags: str
    peak_gb: float
    fits: bool


@dataclass(frozen=True)
class MemoryPlan:
    """The run's estimate against the memory this machine has for it."""

    estimate: Estimate
    data: DataShape
    available_gb: float | None
    processes_here: int = 1  # ranks on this machine, each with its own copy of the model
    alternatives: tuple[Alternative, ...] = ()

    @property
    def peak_gb(self) -> float:
        return self.estimate.peak_gb * self.processes_here

    @property
    def fits(self) -> bool:
        return self.available_gb is None or self.peak_gb <= self.available_gb

    def summary(self) -> str:
        """ "needs about X GB of Y GB available", and what would fit when it does not."""
        of = f" of {_gb(self.available_gb)} available" if self.available_gb else ""
        here = f" ({self.processes_here} processes here)" if self.processes_here > 1 else ""
        return f"needs about {_gb(self.peak_gb)}{of}{here}"

    def advice(self) -> list[str]:
        """Each alternative as "change [flags]: X GB", marked when it would not be enough."""
        return [
            f"{a.change}"
            + (f" [{a.flags}]" if a.flags else "")
            + f": {_gb(a.peak_gb)}"
            + ("" if a.fits else " (not enough alone)")
            for a in self.alternatives
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_gb": round(self.peak_gb, 3),
            "available_gb": None if self.available_gb is None else round(self.available_gb, 3),
            "fits": self.fits,
            "processes_here": self.processes_here,
            "longest_tokens": self.data.longest,
            "loss_window_tokens": self.data.window,
            "parts_gb": {name: round(gb, 3) for name, gb in vars(self.estimate).items()},
            "alternatives": [
                {**vars(a), "peak_gb": round(a.peak_gb, 3)} for a in self.alternatives
            ],
        }


def _gb(value: float) -> str:
    return f"{value:.1f} GB" if value >= 10 else f"{value:.2f} GB"


@dataclass(frozen=True)
class _Change:
    text: str
    flags: str
    update: dict[str, Any]
    quantize: bool = False


def plan(
    model: ModelShape,
    params: TrainingParams,
    data: DataShape,
    available_gb: float | None,
    *,
    ranks: int = 1,
    processes_here: int = 1,
) -> MemoryPlan:
    """The run's plan on this machine, with the changes that would lower it."""

    def peak(change: _Change) -> float:
        shape = replace(model, weights_bytes=model.quantized_bytes) if change.quantize else model
        changed = params.model_copy(update=change.update)
        return estimate(shape, changed, data, ranks).peak_gb * processes_here

    def fits(change: _Change) -> bool:
        return available_gb is None or peak(change) <= available_gb

    changes = _changes(model, params, data, ranks, fits)
    if changes and not any(map(fits, changes)):
        together = {k: v for c in changes for k, v in c.update.items()}
        flags = " ".join(c.flags for c in changes if c.flags)
        quantize = any(c.quantize for c in changes)
        text = "all of these together" + (f", on a {QUANTIZED_BITS}-bit base" if quantize else "")
        changes.append(_Change(text, flags, together, quantize))
    return MemoryPlan(
        estimate(model, params, data, ranks),
        data,
        available_gb,
        processes_here,
        tuple(Alternative(c.text, c.flags, peak(c), fits(c)) for c in changes),
    )


def refusal(memory: MemoryPlan) -> StudioError:
    """The error that keeps a run that would not fit from starting."""
    return StudioError(
        f"this run {memory.summary()}: it would not fit in memory",
        hint="change one of these (or give `lora-studio train` --force to start it anyway):"
        + "".join(f"\n    - {line}" for line in memory.advice()),
    )


def _changes(model: ModelShape, params: TrainingParams, data: DataShape, ranks: int, fits):
    """Single changes, the least costly to the result first: recomputing activations, a
    smaller batch with accumulation (the same effective batch), fewer adapted layers, a
    shorter maximum length, a 4-bit base (for full fine-tuning, LoRA first, and no 4-bit
    base: quantized weights cannot be trained). Of each kind, the mildest that fits (or the
    strongest, when none does)."""
    full = params.fine_tune_type == "full"
    changes = []
    if full:
        lora = {"fine_tune_type": "lora"}
        changes.append(_Change("LoRA instead of full fine-tuning", "--fine-tune-type lora", lora))
    if not params.grad_checkpoint:
        changes.append(
            _Change("gradient checkpointing", "--grad-checkpoint", {"grad_checkpoint": True})
        )
    for kind in (
        _smaller_batches(params, ranks),
        _fewer_layers(model, params),
        _shorter(data, params),
    ):
        changes += _mildest(fits, kind)
    if not model.quantized and not full:
        command = f"lora-studio models quantize MODEL --bits {QUANTIZED_BITS}"
        changes.append(_Change(f"a {QUANTIZED_BITS}-bit base (`{command}`)", "", {}, True))
    return changes


def _smaller_batches(params: TrainingParams, ranks: int) -> list[_Change]:
    effective = params.batch_size * params.grad_accumulation_steps
    return [
        _Change(
            f"batch {b} x {effective // b} accumulation steps (the same effective batch)",
            f"--batch-size {b} --grad-accumulation-steps {effective // b}",
            {"batch_size": b, "grad_accumulation_steps": effective // b},
        )
        for b in _halvings(params.batch_size)
        if b % ranks == 0
    ]


def _fewer_layers(model: ModelShape, params: TrainingParams) -> list[_Change]:
    method = "full fine-tuning" if params.fine_tune_type == "full" else "LoRA"
    adapted = model.layers if params.lora_layers < 0 else params.lora_layers
    return [
        _Change(
            f"{method} on the last {n} layers" if n > 1 else f"{method} on the last layer only",
            f"--lora-layers {n}",
            {"lora_layers": n},
        )
        for n in _halvings(adapted)
    ]


def _shorter(data: DataShape, params: TrainingParams) -> list[_Change]:
    longest = min(data.longest, params.max_seq_length)
    return [
        _Change(
            f"max sequence length {n} (longer examples truncated)",
            f"--max-seq-length {n}",
            {"max_seq_length": n},
        )
        for n in (4096, 2048, 1024, 512, 256)
        if n < longest
    ]


def _halvings(value: int) -> list[int]:
    """value / 2, value / 4, ... down to 1."""
    found = []
    while value > 1:
        value //= 2
        found.append(value)
    return found


def _mildest(fits, candidates: list[_Change]) -> list[_Change]:
    """The first candidate that fits, or the last one; none when there are none."""
    if not candidates:
        return []
    return [next((c for c in candidates if fits(c)), candidates[-1])]
