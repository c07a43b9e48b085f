"""The chat formats the families ship: each one's Hugging Face chat template (Jinja), its
special tokens and which of them begins a text, ends one, and ends a turn.

The toy models of each family (``core.models.families``) carry their family's format, so
every step the tests prove (the completion-only mask, samples, chat, the exports' templates
and stop tokens) runs on the tokens and template a real checkpoint of the family has. The
templates are the families' own, kept to what a conversation of system, user and assistant
turns uses (no thinking switches; tools in ChatML's, Qwen 2.5's way, for tool-calling rows);
each note says what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    template: str
    special_tokens: tuple[str, ...]
    bos: str | None  # what a text begins with, if anything
    eos: str  # tokenizer_config's eos_token
    end_of_turn: str  # what closes an assistant turn: generation stops there
    pad: str | None = None

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.end_of_turn, self.eos)))


# <|role|>content</s>: the toy llama's own (core.models.toy)
TOY = ChatFormat(
    template=(
        "{{ bos_token }}{% for message in messages %}"
        "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    ),
    special_tokens=("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"),
    bos="<s>",
    eos="</s>",
    end_of_turn="</s>",
    pad="</s>",
)

# Llama 3.x Instruct (its template also writes a date and tools into the system turn)
LLAMA3 = ChatFormat(
    template=(
        "{{- bos_token }}{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
    special_tokens=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    end_of_turn="<|eot_id|>",
    pad="<|end_of_text|>",
)

# Mistral Instruct's [INST] turns, the system prompt leading the first user turn (v0.3 puts
# it before the last one; Ollama's library template, the first)
MISTRAL = ChatFormat(
    template=(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% endif %}{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
    special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
    bos="<s>",
    eos="</s>",
    end_of_turn="</s>",
)

# Qwen 2 / 2.5 / 3 and SmolLM3, with Qwen 2.5's tools: the tools' JSON schemas in the system
# turn, each call a <tool_call> JSON object, each result a <tool_response> in a user turn
# (Qwen 2.5's also writes a default system prompt; Qwen 3's adds <think> handling; SmolLM3's a
# metadata system turn)
_TOOLS_INTRO = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
_CALL_FORMAT = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>'
)
CHATML = ChatFormat(
    template=(
        "{%- if tools %}{{- '<|im_start|>system\\n' }}"
        "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}"
        '{%- endif %}{{- "' + _TOOLS_INTRO + '" }}'
        "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
        '{{- "' + _CALL_FORMAT + '<|im_end|>\\n" }}{%- endif %}'
        "{%- for message in messages %}"
        "{%- if tools and loop.first and message['role'] == 'system' %}"
        "{%- elif message['role'] == 'assistant' and message.tool_calls %}"
        "{{- '<|im_start|>assistant' }}"
        "{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
        "{%- for call in message.tool_calls %}"
        "{%- if call.function is defined %}{%- set call = call.function %}{%- endif %}"
        '{{- \'\\n<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' }}'
        "{{- call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}"
        "{{- '<|im_end|>\\n' }}"
        "{%- elif message['role'] == 'tool' %}"
        "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] }}"
        "{{- '\\n</tool_response><|im_end|>\\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos=None,
    eos="<|im_end|>",
    end_of_turn="<|im_end|>",
    pad="<|endoftext|>",
)

# Gemma 3 (Gemma 2's refuses a system turn; Gemma 3's leads the first user turn with it)
GEMMA = ChatFormat(
    template=(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
    bos="<bos>",
    eos="<eos>",
    end_of_turn="<end_of_turn>",
    pad="<pad>",
)

# Phi-4-mini (Phi-3's adds a newline after each tag and a BOS)
PHI = ChatFormat(
    template=(
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    special_tokens=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    bos=None,
    eos="<|endoftext|>",
    end_of_turn="<|end|>",
    pad="<|endoftext|>",
)
