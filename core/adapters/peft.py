"""PEFT's LoRA layout, both ways: export a studio adapter for transformers / vLLM, import a
PEFT adapter trained elsewhere.

mlx-lm keeps ``lora_a`` as (in, r) and ``lora_b`` as (r, out) and scales by ``alpha / rank``;
PEFT keeps ``lora_A.weight`` as (r, in) and ``lora_B.weight`` as (out, r) under
``base_model.model.`` and scales by ``lora_alpha / r``. The weight delta is the same:
``scale * (x @ a @ b)`` = ``scale * x @ (B @ A).T``. A DoRA adapter's magnitude ``m`` (one
per output) is PEFT's ``lora_magnitude_vector``: both scale each output row of the adapted
weight ``W + scale * delta`` to it, over that row's norm. A DoRA import needs every module of
every adapted layer in the file: a magnitude left out would have to be computed from the base.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.adapters.layout import CONFIG_FILE, WEIGHTS_FILE
from core.adapters.store import AdapterMetadata, AdapterStore
from core.errors import StudioError
from core.models.inspect import ModelInfo

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# where the transformer layers are: mlx-lm's name -> transformers' (a model whose text part
# sits beside others, such as Qwen 3.5's, has it under its language model)
LAYERS = {
    "model.layers": "model.layers",
    "language_model.model.layers": "model.language_model.layers",
}
_MLX_NAME = re.compile(
    r"((?:language_model\.)?model\.layers)\.(\d+)\.(\w+)\.(\w+)\.(lora_a|lora_b|m)"
)
_PEFT_NAME = re.compile(
    r"(?:base_model\.model\.)?model\.(?:language_model\.)?layers\.(\d+)\.(\w+)\.(\w+)\."
    r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)"
)
_MLX_SIDE = {"lora_A.weight": "lora_a", "lora_B.weight": "lora_b"}  # else: the magnitude, m


def _numpy(folder: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {
        k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(folder / WEIGHTS_FILE)).items()
    }


# what transformers' tokenizer loads from a folder: shipped beside the adapter, so
# ``AutoTokenizer.from_pretrained(adapter)`` writes the prompts it was trained on
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def export_peft(
    folder: Path, target: Path, base_name: str | None = None, tokenizer_from: Path | None = None
) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` (PEFT's LoRA) for the
    studio adapter in ``folder``; ``target`` appears whole. ``base_name`` is what PEFT loads
    the base by (its Hugging Face id, where the studio knows it)."""
    from safetensors.numpy import save_file

    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise StudioError(
            f"a {kind} adapter has no PEFT LoRA layout to export to",
            hint="only LoRA and DoRA adapters export to PEFT",
        )
    meta = AdapterMetadata.read(folder)
    lora = config["lora_parameters"]
    tensors, layers, modules = {}, set(), set()
    for name, value in _numpy(folder).items():
        found = _MLX_NAME.fullmatch(name)
        if found is None:
            raise StudioError(f"{name} is not a LoRA tensor of a transformer layer")
        prefix, layer, block, module, which = found.groups()
        layers.add(int(layer))
        modules.add(module)
        stem = f"{PEFT_PREFIX}{LAYERS[prefix]}.{layer}.{block}.{module}"
        if which == "m":
            tensors[f"{stem}.lora_magnitude_vector"] = value
        else:
            side = "A" if which == "lora_a" else "B"
            tensors[f"{stem}.lora_{side}.weight"] = np.ascontiguousarray(value.T)
    if kind == "dora":
        stems = {key.removesuffix(".weight").rsplit(".", 1)[0] for key in tensors}
        missing = sorted(s for s in stems if f"{s}.lora_magnitude_vector" not in tensors)
        if missing:
            raise StudioError(f"the DoRA adapter has no magnitude for {missing[0]}")
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora["rank"],
        "lora_alpha": lora["scale"] * lora["rank"],
        "lora_dropout": lora.get("dropout", 0.0),
        "target_modules": sorted(modules),
        "layers_to_transform": sorted(layers),
        "base_model_name_or_path": base_name or meta.baseModelId,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": kind == "dora",
        "inference_mode": True,
        "modules_to_save": None,
    }
    with _staging(target) as staging:
        save_file(tensors, str(staging / PEFT_WEIGHTS), metadata={"format": "pt"})
        (staging / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2))
        for name in TOKENIZER_FILES if tokenizer_from else ():
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, staging / name)
    return target


class _staging:
    """A folder beside ``target`` that becomes ``target`` in one rename, or vanishes."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        if self.target.exists() and any(self.target.iterdir()):
            raise StudioError(f"{self.target} already exists and is not empty")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=self.target.parent))
        return self.path

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            if self.target.exists():
                self.target.rmdir()
            self.path.chmod(0o755)  # mkdtemp made it private
            self.path.rename(self.target)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def is_peft_folder(folder: Path) -> bool:
    config = folder / PEFT_CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("peft_type") is not None


def import_peft(folder: Path, store: AdapterStore, base: ModelInfo, name: str | None = None) -> str:
    """A PEFT LoRA adapter (folder with adapter_config.json + adapter_model.safetensors) as a
    new studio adapter on ``base``. Returns its id."""
    import mlx.core as mx

    config = _peft_config(folder)
    rank, keys = config["r"], _keys(folder, config)
    scale = config["lora_alpha"] / (rank**0.5 if config.get("use_rslora") else rank)
    weights, first_layer = _mlx_weights(folder, base, rank)
    num_layers = base.num_layers - first_layer
    kind = "dora" if config.get("use_dora") else "lora"
    for layer in range(first_layer, first_layer + num_layers):
        for key in keys:  # layers and modules PEFT left out: a zero delta, as mlx-lm needs all
            _fill(weights, base, layer, key, rank, dora=kind == "dora")
    mlx_config = {
        "fine_tune_type": kind,
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": keys},
        "model": str(base.path),
        "base_model_id": base.id,
    }
    label = name or f"PEFT adapter {folder.name}"
    with tempfile.TemporaryDirectory(dir=store.folder, prefix=".peft-") as tmp:
        staging = Path(tmp)
        mx.save_safetensors(
            str(staging / WEIGHTS_FILE), {k: mx.array(v) for k, v in weights.items()}
        )
        (staging / CONFIG_FILE).write_text(json.dumps(mlx_config, indent=2))
        AdapterMetadata(
            adapterName=label,
            baseModelId=base.id,
            rank=rank,
            alpha=config["lora_alpha"],
            loraLayers=num_layers,
            targetModules=keys,
            importedFrom="peft",
            peftBaseModel=config.get("base_model_name_or_path"),
            fineTuneType=kind,
        ).write(staging)
        return store.import_folder(staging, base, label)


def _peft_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(f"{PEFT_CONFIG} is missing or invalid ({exc})") from None
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise StudioError(f"only PEFT LoRA adapters can be imported, not {kind}")
    if config.get("fan_in_fan_out"):
        raise StudioError("fan-in-fan-out (GPT-2 style) PEFT adapters cannot be imported yet")
    if not (folder / PEFT_WEIGHTS).is_file():
        raise StudioError(f"the PEFT adapter has no {PEFT_WEIGHTS} (only safetensors is read)")
    return config


def _keys(folder: Path, config: dict) -> list[str]:
    from core.models.inspect import tensor_shapes

    keys = set()
    for name in tensor_shapes(folder / PEFT_WEIGHTS):
        found = _PEFT_NAME.fullmatch(name)
        if found is None:
            raise StudioError(f"{name}: not a LoRA tensor of a llama-family transformer layer")
        keys.add(f"{found.group(2)}.{found.group(3)}")
    return sorted(keys)


def _mlx_weights(folder: Path, base: ModelInfo, rank: int) -> tuple[dict, int]:
    from safetensors.numpy import load_file

    weights, layers = {}, []
    for name, value in load_file(str(folder / PEFT_WEIGHTS)).items():
        layer, block, module, tensor = _PEFT_NAME.fullmatch(name).groups()
        stem = f"{_layers(base)}.{layer}.{block}.{module}"
        value = value.astype(np.float32)
        if tensor in _MLX_SIDE:
            weights[f"{stem}.{_MLX_SIDE[tensor]}"] = np.ascontiguousarray(value.T)
        else:
            weights[f"{stem}.m"] = value.reshape(-1)
        layers.append(int(layer))
    return weights, min(layers)


def _layers(base: ModelInfo) -> str:
    """Where ``base`` keeps its transformer layers, in mlx-lm's names."""
    return next(
        (p for p in LAYERS if any(n.startswith(f"{p}.") for n in base.tensors)), "model.layers"
    )


def _fill(weights: dict, base: ModelInfo, layer: int, key: str, rank: int, dora: bool) -> None:
    stem = f"{_layers(base)}.{layer}.{key}"
    if f"{stem}.lora_a" in weights and (not dora or f"{stem}.m" in weights):
        return
    shape = base.tensors.get(f"{stem}.weight")
    if shape is None and any(n.endswith(f".{key}.weight") for n in base.tensors):
        return  # a layer without this module (Qwen 3.5's linear attention): none to adapt
    if shape is None:
        raise StudioError(f"{base.id} has no {stem}: the PEFT adapter does not fit it")
    if dora:
        raise StudioError(
            f"the DoRA PEFT adapter leaves out {stem} (or its magnitude)",
            hint="a DoRA adapter imports when each layer from its first to the model's last "
            "has all its target modules: a left-out magnitude depends on the base's weights",
        )
    out_dim, in_dim = shape
    if base.quantization:  # packed: 32 / bits values per stored uint32
        in_dim = in_dim * 32 // base.quantization["bits"]
    weights[f"{stem}.lora_a"] = np.zeros((in_dim, rank), np.float32)
    weights[f"{stem}.lora_b"] = np.zeros((rank, out_dim), np.float32)
