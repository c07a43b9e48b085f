"""Render an Ollama Modelfile TEMPLATE in Python, so an export can prove its template writes
the prompt the model was trained on before it ships it.

Ollama's templates are Go's ``text/template``; no Python package renders them. This is the
part of it Ollama's chat templates use: text, ``{{ .Field }}`` and ``{{ $.Field }}``,
``{{ $v := ... }}`` and ``{{ $v = ... }}``, ``if`` / ``else if`` / ``else``, ``range``, the
functions ``eq``, ``ne``, ``and``, ``or``, ``not``, parentheses, and the ``{{-`` / ``-}}``
whitespace trims. Anything else is a ``ValueError``: a template this cannot read is not used.

``ollama_values`` builds what Ollama hands a template for a chat request (its ``collate``):
``.Messages`` every message, consecutive ones of the same role joined by a blank line, and
``.System`` the system messages' text joined the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_WORD = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')


@dataclass
class _Node:
    kind: str  # text, out, set, if, range
    value: object = None
    branches: list = field(default_factory=list)  # if: [(condition, body)]; range: [(expr, body)]
    otherwise: list = field(default_factory=list)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", ...) or ("action", ...)] with the trims applied."""
    parts, position = [], 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip()
        if parts and parts[-1][0] == "trim":
            parts.pop()
            text = text.lstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2)))
        if match.group(3):
            parts.append(("trim", ""))
        position = match.end()
    tail = template[position:]
    if parts and parts[-1][0] == "trim":
        parts.pop()
        tail = tail.lstrip()
    parts.append(("text", tail))
    return parts


def _parse(parts: list, stop: tuple[str, ...] = ()) -> tuple[list[_Node], str | None]:
    """Nodes up to an action starting with a word in ``stop`` (returned, and consumed)."""
    nodes = []
    while parts:
        kind, text = parts.pop(0)
        if kind == "text":
            nodes.append(_Node("text", text))
            continue
        head = text.split(" ", 1)[0]
        if head in stop:
            return nodes, text
        if head == "if":
            nodes.append(_parse_if(text[3:], parts))
        elif head == "range":
            body, end = _parse(parts, ("end",))
            if end is None:
                raise ValueError("range without end")
            nodes.append(_Node("range", branches=[(text[6:], body)]))
        elif re.match(r"\$\w+\s*:?=", text):
            name, expression = re.split(r"\s*:?=\s*", text, maxsplit=1)
            nodes.append(_Node("set", (name, expression)))
        else:
            nodes.append(_Node("out", text))
    if stop:
        raise ValueError(f"the template ends before {{{{ {stop[-1]} }}}}")
    return nodes, None


def _parse_if(condition: str, parts: list) -> _Node:
    node = _Node("if")
    while True:
        body, ended = _parse(parts, ("else", "end"))
        node.branches.append((condition, body))
        if ended.startswith("else if "):
            condition = ended[8:]
            continue
        if ended == "else":
            node.otherwise, _ = _parse(parts, ("end",))
        return node


def _words(expression: str) -> list:
    """The expression as nested lists: ``eq .Role "user"`` -> ["eq", ".Role", '"user"']."""
    stack: list[list] = [[]]
    for word in _WORD.findall(expression):
        if word == "(":
            stack.append([])
        elif word == ")":
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(word)
    return stack[0]


_FUNCTIONS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "and": lambda *v: next((x for x in v if not x), v[-1]),
    "or": lambda *v: next((x for x in v if x), v[-1]),
    "not": lambda a: not a,
}


class _Scope:
    def __init__(self, root: dict):
        self.root, self.variables = root, {}

    def value(self, word, dot):
        if isinstance(word, list):
            return self.call(word, dot)
        if word.startswith('"'):
            return word[1:-1].encode().decode("unicode_escape")
        if word in ("true", "false"):
            return word == "true"
        if word == ".":
            return dot
        if word.startswith("$."):
            return self.root.get(word[2:])
        if word.startswith("$"):
            return self.variables[word]
        if word.startswith("."):
            return dot.get(word[1:]) if isinstance(dot, dict) else None
        raise ValueError(f"cannot read {word!r} in a template")

    def call(self, words: list, dot):
        head, *arguments = words
        if not arguments:
            return self.value(head, dot)
        if head not in _FUNCTIONS:
            raise ValueError(f"the template calls {head!r}, which this renderer does not know")
        return _FUNCTIONS[head](*(self.value(word, dot) for word in arguments))


def _run(nodes: list[_Node], scope: _Scope, dot, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "out":
            value = scope.call(_words(node.value), dot)
            out.append("" if value is None else str(value))
        elif node.kind == "set":
            name, expression = node.value
            scope.variables[name] = scope.call(_words(expression), dot)
        elif node.kind == "if":
            chosen = next(
                (body for cond, body in node.branches if scope.call(_words(cond), dot)),
                node.otherwise,
            )
            _run(chosen, scope, dot, out)
        else:
            expression, body = node.branches[0]
            for item in scope.call(_words(expression), dot) or []:
                _run(body, scope, item, out)


def render(template: str, values: dict) -> str:
    nodes, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, _Scope(values), values, out)
    return "".join(out)


def ollama_values(messages: list[dict]) -> dict:
    """What Ollama gives a chat template for ``messages`` (OpenAI-style role/content)."""
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"]:
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    system = [m["content"] for m in messages if m["role"] == "system"]
    return {"System": "\n\n".join(system), "Messages": collated}
