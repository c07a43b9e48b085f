"""An Ollama folder: the fused GGUF plus a Modelfile (``ollama create NAME -f Modelfile``).

The Modelfile names the stop tokens, the system prompt if one is given, and a TEMPLATE in
Ollama's Go template syntax for the chat formats Ollama's documentation shows (ChatML, Llama 3,
Zephyr-style tags); for any other chat template it leaves TEMPLATE out, and Ollama then uses the
template stored in the GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

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
    """What a Modelfile says (also what ``parse`` reads back)."""

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


def write_modelfile(folder: Path, template: str | None, eos: str | None, system: str | None):
    go_template, stops = ollama_template(template, eos)
    modelfile = Modelfile(f"./{GGUF_FILE}", go_template, (system or "").strip() or None, stops)
    (folder / MODELFILE).write_text(modelfile.render(), encoding="utf-8")
    return modelfile


_INSTRUCTION = re.compile(r"^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER)\s+(.*)$", re.S)


def parse(text: str) -> Modelfile:
    """Read a Modelfile back (the instructions this module writes)."""
    found: dict = {"stops": []}
    for block in _blocks(text):
        match = _INSTRUCTION.match(block)
        if match is None:
            raise ValueError(f"not a Modelfile instruction: {block[:60]!r}")
        verb, rest = match.groups()
        if verb == "PARAMETER":
            key, _, value = rest.partition(" ")
            if key == "stop":
                found["stops"].append(_unquoted(value.strip()))
        else:
            found[verb.lower()] = _unquoted(rest.strip())
    if "from" not in found:
        raise ValueError("a Modelfile needs FROM")
    return Modelfile(found["from"], found.get("template"), found.get("system"), found["stops"])


def _blocks(text: str) -> list[str]:
    """Instructions, a triple-quoted value spanning lines kept whole; comments dropped."""
    blocks, current = [], None
    for line in text.splitlines():
        if current is not None:
            current += "\n" + line
            if line.endswith('"""'):
                blocks.append(current)
                current = None
        elif line.strip() and not line.lstrip().startswith("#"):
            if line.count('"""') == 1:
                current = line
            else:
                blocks.append(line)
    if current is not None:
        raise ValueError('a """ block is not closed')
    return blocks


def _unquoted(value: str) -> str:
    if value.startswith('"""') and value.endswith('"""'):
        return value[3:-3]
    if value.startswith('"') and value.endswith('"'):
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value
