"""What an evaluation's numbers say, in words: for each model against the baseline (the first
model), metric by metric, which one did better, or that the two cannot be told apart.

Two models are called different on a metric only when their 95% bootstrap intervals do not
overlap; overlapping intervals are "not distinguishable" on these rows. (Non-overlap is a
conservative test: a real difference of modest size can still overlap. The wording says what
the rows show, never more.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LOWER_IS_BETTER = {"loss", "perplexity"}
NEITHER = {"answer_words"}  # a description of the answers: no better or worse


@dataclass(frozen=True)
class Verdict:
    metric: str
    model: str
    baseline: str
    outcome: Literal["better", "worse", "not distinguishable"]
    mean: float
    baseline_mean: float


def verdicts(models: list[str], metrics: dict[str, dict[str, dict]]) -> list[Verdict]:
    """Each later model against ``models[0]`` on every metric both have a figure for
    (``metrics``: model -> metric -> {mean, low, high, n}, an evaluation's summary)."""
    baseline, found = models[0], []
    for model in models[1:]:
        for metric, theirs in metrics.get(baseline, {}).items():
            ours = metrics.get(model, {}).get(metric)
            if not ours or not ours.get("n") or not theirs.get("n") or metric in NEITHER:
                continue
            overlap = ours["low"] <= theirs["high"] and theirs["low"] <= ours["high"]
            higher = ours["mean"] > theirs["mean"]
            better = higher != (metric in LOWER_IS_BETTER)
            outcome = "not distinguishable" if overlap else "better" if better else "worse"
            found.append(Verdict(metric, model, baseline, outcome, ours["mean"], theirs["mean"]))
    return found


def sentences(found: list[Verdict], names: dict[str, str]) -> list[str]:
    """One sentence per model: the metrics it did better and worse on, and those where the
    two are not distinguishable. ``names``: a model id's name for people."""
    said = []
    for model in dict.fromkeys(v.model for v in found):
        mine = [v for v in found if v.model == model]
        name, base = names.get(model, model), names.get(mine[0].baseline, mine[0].baseline)
        parts = []
        for outcome, words in (("better", "better than"), ("worse", "worse than")):
            listed = [
                f"{v.metric} ({v.mean:.3g} vs {v.baseline_mean:.3g})"
                for v in mine
                if v.outcome == outcome
            ]
            if listed:
                parts.append(f"{words} {base} on {', '.join(listed)}")
        same = [v.metric for v in mine if v.outcome == "not distinguishable"]
        if same:
            parts.append(
                f"not distinguishable from {base} on {', '.join(same)} (the 95% intervals overlap)"
            )
        said.append(f"{name} is " + "; ".join(parts) + ".")
    return said
