"""An evaluation's numbers in words (core/eval/verdicts.py): better, worse, or not
distinguishable when the 95% intervals overlap; lower is better for loss and perplexity."""

from __future__ import annotations

from core.eval.verdicts import sentences, verdicts


def stat(mean: float, low: float, high: float, n: int = 20) -> dict:
    return {"mean": mean, "low": low, "high": high, "n": n}


def test_better_worse_and_not_distinguishable_by_the_intervals():
    metrics = {
        "base": {
            "rouge_l": stat(0.2, 0.1, 0.3),
            "loss": stat(3.0, 2.8, 3.2),
            "chrf": stat(30, 20, 40),
        },
        "lora/abc": {
            "rouge_l": stat(0.6, 0.5, 0.7),
            "loss": stat(3.5, 3.3, 3.7),
            "chrf": stat(35, 25, 45),
        },
    }
    found = {v.metric: v.outcome for v in verdicts(["base", "lora/abc"], metrics)}
    assert found == {"rouge_l": "better", "loss": "worse", "chrf": "not distinguishable"}
    (said,) = sentences(verdicts(["base", "lora/abc"], metrics), {"lora/abc": "Pirate (abc)"})
    assert said == (
        "Pirate (abc) is better than base on rouge_l (0.6 vs 0.2); worse than base on loss "
        "(3.5 vs 3); not distinguishable from base on chrf (the 95% intervals overlap)."
    )


def test_a_lower_loss_is_better_and_empty_figures_are_left_out():
    metrics = {
        "base": {"perplexity": stat(20, 18, 22), "exact_match": stat(0, 0, 0, n=0)},
        "tuned": {"perplexity": stat(9, 8, 10), "exact_match": stat(0, 0, 0, n=0)},
    }
    (only,) = verdicts(["base", "tuned"], metrics)
    assert (only.metric, only.outcome) == ("perplexity", "better")
