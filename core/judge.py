"""An LLM as a judge: pairwise verdicts and rubric scores, from any OpenAI-compatible endpoint
(Ollama, vLLM, OpenAI, another ``lora-studio serve``) or a model of this studio.

Pairwise, each model is compared with the first one given, and asked in both orders: a
judge that prefers whatever comes first (a known bias of LLM judges) then disagrees with
itself, and the pair counts as a tie. A win needs both orders to agree. The rubric asks for a
1-10 score. Replies follow MT-Bench's conventions (``[[A]]``, ``[[B]]``, ``[[C]]`` for a tie,
``Rating: [[7]]``); a reply that says none of them is counted as unparseable, never guessed,
and every reply is kept.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import StudioError

PAIRWISE = (
    "Please act as an impartial judge and compare two AI assistants' answers to the user's "
    "question below. {reference}Judge correctness, helpfulness and faithfulness to the "
    "question; ignore the answers' order and length. Explain briefly, then give your verdict "
    'strictly as "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, or '
    '"[[C]]" for a tie.\n\n[Question]\n{question}\n\n[Assistant A]\n{a}\n\n[Assistant B]\n{b}'
)
RUBRIC = (
    "Please act as an impartial judge and rate the AI assistant's answer to the user's "
    "question below for correctness, helpfulness and faithfulness to the question. "
    "{reference}Explain briefly, then give a rating from 1 to 10 strictly in this format: "
    '"Rating: [[5]]".\n\n[Question]\n{question}\n\n[Answer]\n{answer}'
)
log = logging.getLogger(__name__)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


@dataclass(frozen=True)
class Verdict:
    """One pairwise comparison of ``model`` with the baseline: win, tie, loss or
    unparseable, and the judge's two replies (baseline as A, then as B)."""

    outcome: str
    replies: tuple[str, str]


def pairwise(
    ask: Callable[[str], str], question: str, reference: str | None, baseline: str, other: str
) -> Verdict:
    """``other`` against ``baseline``, asked in both orders."""
    hint = _reference_hint(reference)
    first = ask(fill(PAIRWISE, reference=hint, question=question, a=baseline, b=other))
    second = ask(fill(PAIRWISE, reference=hint, question=question, a=other, b=baseline))
    verdicts = _last(_VERDICT, first), _last(_VERDICT, second)
    if None in verdicts:
        return Verdict("unparseable", (first, second))
    # "other" wins as B in the first reply and as A in the second
    wins = (verdicts[0] == "B") + (verdicts[1] == "A")
    losses = (verdicts[0] == "A") + (verdicts[1] == "B")
    outcome = "win" if wins == 2 else "loss" if losses == 2 else "tie"
    return Verdict(outcome, (first, second))


def rubric_score(
    ask: Callable[[str], str],
    question: str,
    reference: str | None,
    answer: str,
    rubric: str = RUBRIC,
) -> tuple[float | None, str]:
    """(score from 1 to 10, or None when the reply gives none, and the reply)."""
    reply = ask(
        fill(rubric, reference=_reference_hint(reference), question=question, answer=answer)
    )
    found = _last(_RATING, reply)
    score = float(found) if found is not None else None
    return (score if score is not None and 1 <= score <= 10 else None), reply


def read_rubric(path: str | None) -> str:
    """``--rubric FILE``: a prompt with ``{question}`` and ``{answer}`` (``{reference}``
    optional), asking for ``Rating: [[N]]``."""
    if not path:
        return RUBRIC
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise StudioError(f"cannot read the rubric {path}: {exc.strerror}") from None
    missing = [k for k in ("{question}", "{answer}") if k not in text]
    if missing:
        raise StudioError(
            f"the rubric {path} lacks {', '.join(missing)}",
            hint="write the prompt with {question} and {answer} where they go",
        )
    return text


def fill(template: str, **fields: str) -> str:
    """``template`` with each ``{name}`` of ``fields`` replaced, in one pass: every other
    brace stays as written (a rubric may show JSON like ``{"score": 5}``), and a field's
    text is never searched for more fields (an answer may say ``{question}``)."""
    names = "|".join(re.escape(name) for name in fields)
    return re.sub(rf"\{{({names})\}}", lambda found: fields[found.group(1)], template)


def _reference_hint(reference: str | None) -> str:
    if not reference:
        return ""
    return f"A reference answer is given to help you: {reference!r}. "


def _last(pattern: re.Pattern, reply: str) -> str | None:
    found = pattern.findall(reply or "")
    return found[-1] if found else None


class EndpointJudge:
    """A judge behind an OpenAI-compatible ``/chat/completions``: greedy, short replies,
    and a clear error within seconds when the endpoint refuses or does not answer."""

    def __init__(self, url: str, model: str, key_env: str | None = None, timeout: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        headers = {}
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise StudioError(f"--judge-key-env {key_env}: that variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=5.0))

    def __call__(self, prompt: str) -> str:
        return self.complete([{"role": "user", "content": prompt}])

    def complete(
        self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 384
    ) -> str:
        """The endpoint's reply to ``messages`` (a judge's is greedy; a teacher may sample)."""
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        try:
            reply = self._client.post(f"{self.url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise StudioError(f"the judge at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise StudioError(f"the judge at {self.url} cannot be reached: {exc}") from None
        if reply.status_code != 200:
            # the body goes to the server's log, never into the message: on a shared studio
            # the message reaches whoever typed the URL, and the URL may be anyone's server
            log.warning(
                "the judge at %s answered %s: %.300s", self.url, reply.status_code, reply.text
            )
            raise StudioError(
                f"the judge at {self.url} answered HTTP {reply.status_code} "
                f"{reply.reason_phrase}".rstrip(),
                hint="the studio's log has the reply's text",
            )
        try:
            return reply.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise StudioError(f"the judge at {self.url} sent no chat completion") from None

    def describe(self) -> str:
        return f"{self.model} at {self.url}"
