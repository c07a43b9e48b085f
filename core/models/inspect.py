"""Base-model discovery and validation: is this folder something mlx-lm can load?

Everything here reads only config.json, file names and safetensors headers, so checking a
multi-gigabyte model costs milliseconds and never loads a weight.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from pathlib import Path

from safetensors import SafetensorError, safe_open

from core.errors import StudioError
from core.files import write_json_atomic

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_SHARD = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")
_LAYER_WEIGHT = re.compile(r".*\.layers\.\d+\.(.+)\.weight")


@dataclass(frozen=True)
class ModelInfo:
    id: str
    path: Path
    architecture: str
    num_layers: int
    parameter_count: int
    tensors: dict[str, list[int]] = field(repr=False, compare=False, hash=False)
    quantization: dict | None = field(default=None, compare=False, hash=False)
    dtypes: dict[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)
    hub_id: str | None = None  # the Hugging Face repo the weights came from, where known

    def has_module(self, key: str) -> bool:
        """Whether some transformer layer has the linear ``key`` (e.g. ``self_attn.q_proj``)."""
        return key in self.layer_modules()

    def layer_modules(self) -> list[str]:
        """The linear modules of the transformer layers, by their name in a layer
        (``self_attn.q_proj``, ``mlp.switch_mlp.up_proj``: a mixture of experts' stacked
        experts): what LoRA can adapt. Norms (1-D weights) are not."""
        found = {
            match.group(1)
            for name, shape in self.tensors.items()
            if len(shape) >= 2 and (match := _LAYER_WEIGHT.fullmatch(name))
        }
        return sorted(found)

    def attention_keys(self) -> list[str]:
        """The attention's linear modules, the studio's default target: q, k, v and o in
        most families, Phi-3's fused ``qkv_proj`` and ``o_proj``."""
        return [key for key in self.layer_modules() if key.startswith("self_attn.")]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the model's weights, all of them present.

    Accepts one model.safetensors, an index whose shards all exist, or a complete set of
    model-0000k-of-0000N.safetensors shards; raises StudioError naming what is missing.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StudioError(f"{index} is not a valid safetensors index ({exc})") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise StudioError(
                f"{folder.name}: {len(missing)} weight shard(s) missing: {', '.join(missing[:5])}",
                hint="finish downloading or copying the model",
            )
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if shards:
        match = _SHARD.fullmatch(shards[0].name)
        total = int(match.group(2)) if match else 0
        expected = [f"model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
        missing = [n for n in expected if not (folder / n).is_file()]
        if missing or not total:
            raise StudioError(
                f"{folder.name}: weight shard(s) missing: {', '.join(missing[:5])}",
                hint="finish downloading or copying the model",
            )
        return [folder / n for n in expected]
    raise StudioError(
        f"{folder} has no weights (model.safetensors, an index, or model-*-of-*.safetensors)",
        hint="convert the model to MLX/safetensors (mlx_lm.convert) or pick another folder",
    )


def tensor_headers(path: Path) -> dict[str, tuple[list[int], str]]:
    """Each tensor's shape and dtype (``F32``, ``BF16``, ``U32``...) in a safetensors file,
    read from its header (no data)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            names = f.keys()  # safe_open handles are not iterable
            slices = {name: f.get_slice(name) for name in names}
            return {name: (list(t.get_shape()), t.get_dtype()) for name, t in slices.items()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise StudioError(f"{path} is not a readable safetensors file ({exc})") from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The tensor names and shapes of a safetensors file, read from its header (no data)."""
    return {name: shape for name, (shape, _) in tensor_headers(path).items()}


def inspect_model(folder: str | Path, model_id: str | None = None) -> ModelInfo:
    """Check that ``folder`` holds an MLX-loadable model and describe it. Its id is the
    folder's name unless given (a hub model's id is its repo id)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise StudioError(f"model folder {folder} does not exist")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise StudioError(f"{folder} has no config.json: it is not a model folder") from None
    except ValueError as exc:
        raise StudioError(f"{folder}/config.json is not valid JSON ({exc})") from None
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise StudioError(
            f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)})",
            hint="copy the tokenizer files from the original model",
        )
    text_config = config.get("text_config", config)
    num_layers = text_config.get("num_hidden_layers") or text_config.get("n_layers")
    if not isinstance(num_layers, int):
        raise StudioError(f"{folder}/config.json does not say how many layers the model has")
    headers: dict[str, tuple[list[int], str]] = {}
    for file in weight_files(folder):
        headers.update(tensor_headers(file))
    tensors = {name: shape for name, (shape, _) in headers.items()}
    return ModelInfo(
        id=model_id or folder.name,
        path=folder,
        architecture=str(config.get("model_type", "unknown")),
        num_layers=num_layers,
        parameter_count=_parameter_count(tensors, config.get("quantization")),
        tensors=tensors,
        quantization=config.get("quantization"),
        dtypes={name: dtype for name, (_, dtype) in headers.items()},
        hub_id=_hub_id(config),
    )


_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _hub_id(config: dict) -> str | None:
    """``_name_or_path`` when it names a hub repo (transformers writes it; the studio sets it
    when it fetches a model), not a local path."""
    name = config.get("_name_or_path")
    if isinstance(name, str) and _REPO_ID.fullmatch(name) and not Path(name).exists():
        return name
    return None


def record_hub_id(folder: Path, repo_id: str) -> None:
    """Note in the model's config.json which hub repo it came from (``_name_or_path``, the
    field transformers uses), so exports can name their base properly."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["_name_or_path"] = repo_id
    write_json_atomic(config_file, config)


def _parameter_count(tensors: dict[str, list[int]], quantization: dict | None) -> int:
    """Parameters the model has, counting a quantized weight by its unpacked size."""
    bits = (quantization or {}).get("bits")
    count = 0
    for name, shape in tensors.items():
        if name.endswith((".scales", ".biases")) and bits:
            continue
        size = prod(shape)
        if (
            bits
            and name.endswith(".weight")
            and name.removesuffix(".weight") + ".scales" in tensors
        ):
            size = size * 32 // bits
        count += size
    return count


CONTEXT_KEYS = ("max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


def context_length(folder: Path) -> int | None:
    """How many tokens the model at ``folder`` attends over (from config.json), if it says."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    return next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)


SAMPLING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens")


def generation_defaults(folder: Path) -> dict[str, float]:
    """The sampling settings the model's makers chose (generation_config.json), where it has
    them: temperature, top_p, repetition_penalty, max_new_tokens."""
    try:
        config = json.loads((Path(folder) / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    found = {k: config[k] for k in SAMPLING_KEYS if isinstance(config.get(k), int | float)}
    if config.get("do_sample") is False:
        found["temperature"] = 0.0  # greedy
    return found


def resolve_model(name_or_path: str | Path, models_folder: Path) -> Path:
    """A model given as a folder path, or by name in the studio's models folder.

    A name is one plain folder name: nothing in it may lead outside the models folder.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name and Path(name).name == name and name not in (".", ".."):
        candidate = models_folder / name
        if candidate.is_dir():
            return candidate
    raise StudioError(
        f"model {name_or_path} does not exist (not a folder, nor a model in {models_folder})"
    )


@lru_cache(maxsize=4)
def tokenizer(folder: Path):
    """The tokenizer of the model at ``folder`` (mlx-lm's loader), kept for the next check:
    the page re-checks a run at every edit of the form."""
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(Path(folder))
