"""An Ollama folder: the fused GGUF plus a Modelfile (``ollama create NAME -f Modelfile``).

The Modelfile names the stop tokens, the system prompt if one is given, and a TEMPLATE in
Ollama's Go template syntax for the chat formats Ollama's documentation shows (ChatML, Llama 3,
Zephyr-style tags); for any other chat template it leaves TEMPLATE out, and Ollama then uses the
template stored in the GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.errors import StudioError

MODELFILE = "Modelfile"
GGUF_FILE = "model.gguf"

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# <|system|> / <|user|> / <|assistant|> tags closed by the end-of-sequence token
TAGS = """{{- if .System }}<|system|>
{{ .System }}{eos}
{{ end }}{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}{eos}
{{ end }}<|assistant|>
"""


@dataclass
class Modelfile:
    """What a Modelfile says."""

    source: str
    template: str | None = None
    system: str | None = None
    stops: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"FROM {self.source}"]
        if self.template:
            lines.append(f'TEMPLATE """{self.template}"""')
        else:
            lines.append("# TEMPLATE: none here, Ollama uses the chat template stored in the GGUF")
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {_quoted(stop)}" for stop in self.stops]
        return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ollama_template(chat_template: str | None, eos: str | None) -> tuple[str | None, list[str]]:
    """(Ollama TEMPLATE, stop tokens) for a Hugging Face chat template."""
    stops = [eos] if eos else []
    template = chat_template or ""
    if "<|im_start|>" in template:
        return CHATML, sorted({"<|im_end|>", "<|im_start|>", *stops})
    if "<|start_header_id|>" in template:
        return LLAMA3, sorted({"<|eot_id|>", "<|start_header_id|>", *stops})
    if "<|assistant|>" in template and "<|user|>" in template and eos:
        return TAGS.replace("{eos}", eos), sorted({eos, "<|user|>", "<|system|>"})
    return None, stops


def check_system(system: str | None) -> None:
    """Refuse a system prompt that Ollama's Modelfile cannot hold: its triple-quoted value
    has no escapes, so it ends at the first \"\"\" (and a quote next to the fence would
    merge with it)."""
    text = (system or "").strip()
    if '"""' in text or text.startswith('"') or text.endswith('"'):
        raise StudioError(
            'the system prompt cannot go into a Modelfile: it holds """ or starts or ends '
            'with a quote, and Ollama\'s SYSTEM """...""" value has no escapes',
            hint="remove the triple quotes, or end and start the prompt with another character",
        )


def write_modelfile(folder: Path, template: str | None, eos: str | None, system: str | None):
    check_system(system)
    go_template, stops = ollama_template(template, eos)
    modelfile = Modelfile(f"./{GGUF_FILE}", go_template, (system or "").strip() or None, stops)
    (folder / MODELFILE).write_text(modelfile.render(), encoding="utf-8")
    return modelfile
