"""Taking an adapter anywhere: one entry point for every export format, and for imports.

| format | writes | loads in |
| --- | --- | --- |
| zip | the studio's own archive | LoRA Studio (Import) |
| peft | adapter_model.safetensors + adapter_config.json | transformers + PEFT, vLLM, TGI |
| gguf | the base with the adapter fused in, f32 / f16 / q8_0 | llama.cpp, LM Studio, Ollama |
| ollama | model.gguf + Modelfile | ``ollama create NAME -f Modelfile`` |
| gguf-adapter | a GGUF LoRA adapter | llama.cpp ``--lora``, Ollama ``ADAPTER`` |

Everything that can refuse (an unknown format or type, an architecture or tokenizer GGUF cannot
carry, a DoRA adapter for PEFT) refuses before any work.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.adapters.layout import CONFIG_FILE
from core.adapters.store import AdapterStore, adapter_root, safe_extract
from core.errors import StudioError
from core.models.inspect import ModelInfo

log = logging.getLogger(__name__)

FORMATS = ("zip", "peft", "gguf", "ollama", "gguf-adapter")


def export_adapter(
    store: AdapterStore,
    adapter_id: str,
    base: ModelInfo,
    fmt: str,
    out: Path,
    *,
    kind: str = "f16",
    system: str | None = None,
    progress: Callable[[str], None] = log.info,
) -> Path:
    """Write adapter ``adapter_id`` (trained on ``base``) to ``out`` in ``fmt``."""
    from core.adapters import gguf_export, peft

    folder = store.path(adapter_id)
    if fmt not in FORMATS:
        raise StudioError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt in ("gguf", "ollama", "gguf-adapter"):
        gguf_export.check_exportable(base)
    if fmt in ("gguf", "ollama"):
        check_disk(out, base, kind)
    if fmt == "ollama":
        from core.adapters import ollama

        # by default, the system prompt every training row had: it answers as in training
        meta = store.read(adapter_id).metadata
        system = system or (meta.model_extra.get("systemPrompt") if meta else None)
        ollama.check_system(system)
    if fmt == "zip":
        return store.export(adapter_id, out)
    if fmt == "peft":
        return peft.export_peft(folder, out, base.hub_id, tokenizer_from=base.path)
    if fmt == "gguf-adapter":
        return gguf_export.write_adapter_gguf(folder, base, out)

    def fuse(into: Path) -> Path:
        dequantize = base.quantization is not None
        return store.fuse(adapter_id, base, into, "fused", dequantize=dequantize)

    if fmt == "gguf":
        return gguf_export.export_fused_gguf(fuse, base, out, kind, progress)
    return _ollama_folder(fuse, base, out, kind, system, progress)


EXPORTS_KEPT_SECONDS = 24 * 3600


def export_folder(root: Path, fmt: str) -> Path:
    """A new folder of its own for one export under ``root`` (two exports never share one),
    after removing the exports older than a day: cleaned up by age, never by the next
    export."""
    root.mkdir(parents=True, exist_ok=True)
    prune_exports(root, EXPORTS_KEPT_SECONDS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(dir=root, prefix=f"{stamp}-{fmt}-"))


def prune_exports(root: Path, max_age_seconds: float) -> None:
    """Remove the export folders under ``root`` last changed more than ``max_age_seconds``
    ago."""
    oldest = time.time() - max_age_seconds
    for folder in root.iterdir():
        with contextlib.suppress(OSError):
            if folder.is_dir() and folder.stat().st_mtime < oldest:
                shutil.rmtree(folder, ignore_errors=True)


BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + an f16 scale


def check_disk(out: Path, base: ModelInfo, kind: str) -> None:
    """Refuse a fused export, before any work, when the disk cannot hold the fused model
    (written in the base's float width) and the GGUF beside it."""
    folder = next(p for p in (out, *out.parents) if p.exists())
    needed = base.parameter_count * (4 + BYTES_PER_WEIGHT.get(kind, 4.0))
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StudioError(
            f"not enough disk space in {folder}: the export needs about {needed / 1e9:.1f} GB "
            f"(the fused model and the GGUF), {free / 1e9:.1f} GB are free",
            hint="free some space, choose another --out, or a smaller --type",
        )


def _ollama_folder(fuse, base: ModelInfo, out: Path, kind, system, progress) -> Path:
    from transformers import AutoTokenizer

    from core.adapters import gguf_export, ollama

    if out.exists() and any(out.iterdir()):
        raise StudioError(f"{out} already exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    gguf_export.export_fused_gguf(fuse, base, out / ollama.GGUF_FILE, kind, progress)
    tokenizer = AutoTokenizer.from_pretrained(str(base.path))

    def hf_render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    tokens = (tokenizer.bos_token, tokenizer.eos_token)
    ollama.write_modelfile(out, hf_render if tokenizer.chat_template else None, tokens, system)
    return out


def import_any(source: Path, store: AdapterStore, base: ModelInfo | None, name: str | None) -> str:
    """Import a studio .zip, a PEFT adapter (folder or .zip) or an mlx-lm adapter folder."""
    from core.adapters import peft

    with tempfile.TemporaryDirectory(dir=store.folder, prefix=".unpack-") as tmp:
        folder = source
        if zipfile.is_zipfile(source):
            safe_extract(source, Path(tmp))
            folder = adapter_root(Path(tmp))
        elif not source.is_dir():
            raise StudioError(f"{source} is neither a folder nor a .zip")
        if peft.is_peft_folder(folder):
            if base is None:
                raise StudioError(
                    "a PEFT adapter needs its base model", hint="name it with --base (a base id)"
                )
            return peft.import_peft(folder, store, base, name)
        if not (folder / CONFIG_FILE).is_file():
            raise StudioError(f"{source.name} holds no adapter (no {CONFIG_FILE})")
        return store.import_folder(folder, base, name)
