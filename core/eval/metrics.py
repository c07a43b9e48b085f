"""Reference metrics of one answer, and a mean with its 95% bootstrap interval.

Exact match, contains and token F1 use SQuAD's normalization (lower case, no punctuation, no
articles, single spaces), so "Paris." matches "paris". ROUGE-L comes from Google's
``rouge-score`` and chrF and BLEU from ``sacrebleu`` (sentence level, as each row is scored on
its own; the table shows their mean), not re-implemented. The reference's loss under a model
(mean negative log-likelihood per token, and its exp, the perplexity) is computed where the
model is, by ``core.eval.generation``.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Callable

import numpy as np

from core.data.tools import calls_in
from core.errors import StudioError

BOOTSTRAP_SAMPLES = 1000
# the metrics an answer gets against a reference; "loss" and "perplexity" need the model
REFERENCE_METRICS = ("exact_match", "contains", "token_f1", "rouge_l", "chrf", "bleu")
MODEL_METRICS = ("loss", "perplexity")
METRICS = REFERENCE_METRICS + MODEL_METRICS
# what an answer is, not how good: asked for by name only (a GRPO length reward's effect)
ANSWER_METRICS = ("answer_words",)
# a reference that calls tools: the calls the answer makes, name and arguments, exactly
TOOL_METRICS = ("tool_call",)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD's answer normalization."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    """Whether the answer says the reference somewhere (a short fact in a long reply)."""
    wanted = normalize(reference)
    return float(bool(wanted) and f" {wanted} " in f" {normalize(answer)} ")


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1: the overlap of the two bags of normalized words."""
    said, wanted = normalize(answer).split(), normalize(reference).split()
    common = sum((Counter(said) & Counter(wanted)).values())
    if not said or not wanted or not common:
        return float(said == wanted)
    precision, recall = common / len(said), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming)."""
    return _rouge().score(reference, answer)["rougeL"].fmeasure


def chrf(answer: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(answer, [reference]).score


def bleu(answer: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(answer, [reference]).score


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "chrf": chrf,
    "bleu": bleu,
}


def tool_call(answer: str, calls: list[dict]) -> float:
    """1 when the answer makes exactly the reference's calls, in order: the same names and
    the same arguments as JSON values (key order ignored)."""
    return float(calls_in(answer) == calls)


def reference_scores(answer: str, reference: str, metrics: tuple[str, ...]) -> dict[str, float]:
    """The reference metrics of ``metrics`` for one answer."""
    return {name: SCORERS[name](answer, reference) for name in metrics if name in SCORERS}


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """``--metrics`` (comma-separated; none: all that apply)."""
    if not text:
        return METRICS + TOOL_METRICS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRICS + ANSWER_METRICS + TOOL_METRICS]
    if unknown or not names:
        raise StudioError(
            f"unknown metric {', '.join(unknown) or '(none)'}",
            hint=f"choose among {', '.join(METRICS + ANSWER_METRICS + TOOL_METRICS)}",
        )
    return names


def bootstrap(values: list[float], seed: int = 0) -> dict[str, float]:
    """The mean and its 95% percentile-bootstrap interval (the rows resampled)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (BOOTSTRAP_SAMPLES, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(data.mean()), "low": float(low), "high": float(high), "n": int(data.size)}


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
