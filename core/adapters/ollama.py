"""An Ollama folder: the fused GGUF plus a Modelfile (``ollama create NAME -f Modelfile``).

The Modelfile names the stop tokens, the system prompt if one is given, and a TEMPLATE in
Ollama's Go template syntax. The TEMPLATE is chosen by rendering, not by a guess from the
template's text: each known family format is rendered (``core.adapters.go_template``, with
the values Ollama hands a template) for a few conversations and compared with the model's
own chat template's rendering; the first that writes the same prompt every time is used.
When none does, TEMPLATE is left out and the Modelfile says so (Ollama then picks a template
from the chat template stored in the GGUF).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.adapters.go_template import ollama_values, render
from core.errors import StudioError

MODELFILE = "Modelfile"
GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class OllamaFormat:
    """A family's chat format in Ollama's template language, and the tokens that end or
    begin a turn (Ollama stops at them; the model's end-of-sequence token is added)."""

    name: str
    template: str
    stops: tuple[str, ...]


# Ollama keeps system messages in .Messages and gives their text as .System too: formats
# with a system turn render it from .Messages; those that lead the first user turn with it
# (Gemma, Mistral) skip it there and write .System once
FORMATS = (
    OllamaFormat(
        "chatml",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        ("<|im_end|>", "<|im_start|>"),
    ),
    OllamaFormat(
        "llama3",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>", "<|start_header_id|>"),
    ),
    OllamaFormat(
        "gemma",
        '{{- $first := true }}{{- range .Messages }}{{- if ne .Role "system" }}'
        '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n"
        "{{ $first = false }}{{- end }}{{- end }}<start_of_turn>model\n",
        ("<end_of_turn>", "<start_of_turn>"),
    ),
    OllamaFormat(
        "mistral",
        '{{- $first := true }}{{- range .Messages }}{{- if eq .Role "user" }}[INST] '
        "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }} [/INST]"
        '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- end }}'
        '{{- if ne .Role "system" }}{{ $first = false }}{{- end }}{{- end }}',
        ("</s>", "[INST]"),
    ),
    OllamaFormat(
        "phi",
        "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>",
        ("<|end|>", "<|user|>", "<|system|>"),
    ),
    # <|role|>content, each turn closed by the end-of-sequence token (the toy llama's)
    OllamaFormat(
        "tags",
        "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}{eos}{{ end }}<|assistant|>",
        ("<|user|>", "<|system|>"),
    ),
)

# conversations both renderings must agree on: a system prompt, several turns, neither
PROBES = (
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And the sea?"},
    ],
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "user", "content": "Name a city."},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Another?"},
    ],
)


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
            lines.append(
                "# TEMPLATE: none of the known formats renders this model's chat template"
                " exactly; Ollama picks one from the template stored in the GGUF"
            )
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {_quoted(stop)}" for stop in self.stops]
        return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ollama_template(
    hf_render: Callable[[list[dict]], str], bos: str | None, eos: str | None
) -> tuple[str | None, list[str]]:
    """(Ollama TEMPLATE, stop tokens) for a model whose own chat template renders a
    conversation as ``hf_render(messages)`` does (with the generation prompt). ``bos`` is
    left off the model's rendering: llama.cpp adds it while tokenizing, as the GGUF says."""
    expected = []
    for messages in PROBES:
        try:
            text = hf_render(messages)
        except Exception:  # the model's template refuses this conversation (Gemma 2: system)
            continue
        expected.append((messages, text[len(bos) :] if bos and text.startswith(bos) else text))
    for form in FORMATS:
        template = form.template.replace("{eos}", eos or "")
        if "{eos}" in form.template and not eos:
            continue
        if expected and all(render(template, ollama_values(m)) == t for m, t in expected):
            return template, sorted({*form.stops, *([eos] if eos else [])})
    return None, [eos] if eos else []


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


def write_modelfile(
    folder: Path,
    hf_render: Callable[[list[dict]], str] | None,
    tokens: tuple[str | None, str | None],
    system: str | None,
) -> Modelfile:
    """Write the Modelfile; ``tokens`` is (bos, eos) as the tokenizer names them."""
    check_system(system)
    bos, eos = tokens
    go_template, stops = (
        ollama_template(hf_render, bos, eos) if hf_render else (None, [eos] if eos else [])
    )
    modelfile = Modelfile(f"./{GGUF_FILE}", go_template, (system or "").strip() or None, stops)
    (folder / MODELFILE).write_text(modelfile.render(), encoding="utf-8")
    return modelfile
