"""A sweep's result for people and programs: its trials ranked (``lora-studio sweep --json``),
which adapters the held-out rows cannot tell apart, and which setting mattered."""

from __future__ import annotations

from typing import Any

import optuna

from core.sweep.space import words
from core.sweep.store import STUDY_FILE, SweepSpec, SweepStore
from core.sweep.study import TrialResult, importances, results


def load(store: SweepStore, spec: SweepSpec) -> optuna.Study | None:
    """The sweep's study, read only; None before its first trial."""
    if not (store.path(spec.id) / STUDY_FILE).is_file():
        return None
    try:
        return optuna.load_study(study_name="sweep", storage=store.study_storage(spec.id))
    except KeyError:
        return None


def summary(store: SweepStore, spec: SweepSpec, trials: bool = True) -> dict[str, Any]:
    """One object: the sweep, its trials best first (each with its settings, state, adapter
    and objective), the best one, the importances and the sentences that say it."""
    study = load(store, spec)
    found = results(study) if study else []
    best = found[0] if found and found[0].rank == 1 else None
    out = {
        "id": spec.id,
        "name": spec.name,
        "state": spec.state,
        "error": spec.error,
        "objective": spec.objective,
        "direction": spec.direction,
        "held_out": spec.held_out,
        "vary": spec.vary,
        "measured": spec.measured,
        "trials_asked": spec.trials,
        "done": sum(r.state in ("complete", "pruned", "failed") for r in found),
        "seconds": round(spec.seconds, 1),
        "best": best.to_json() if best else None,
    }
    if not trials:
        return out
    weights = importances(study) if study else None
    return out | {
        "trials": [r.to_json() for r in found],
        "importances": weights,
        "said": said(spec, found, weights),
    }


def said(spec: SweepSpec, found: list[TrialResult], weights: dict[str, float] | None) -> list[str]:
    """What the ranking says, in words: the best trial, those the rows cannot tell from it,
    the pruned and failed ones, and which setting mattered."""
    ranked = [r for r in found if r.rank]
    if not ranked:
        return ["no trial has completed yet"]
    best = ranked[0]
    lines = [
        f"best: trial {best.number} ({words(best.settings)}), {spec.measured} "
        f"{best.objective:.4g}{_interval(best)}; adapter {best.adapter}"
    ]
    tied = [r for r in ranked[1:] if r.tied_with_best]
    if tied:
        numbers = ", ".join(str(r.number) for r in tied)
        lines.append(
            f"trial(s) {numbers} cannot be told apart from it on these rows "
            "(their 95% intervals overlap)"
        )
    elif spec.held_out and len(ranked) > 1:
        lines.append("its 95% interval overlaps no other trial's")
    for state in ("pruned", "failed"):
        numbers = [str(r.number) for r in found if r.state == state]
        if numbers:
            lines.append(f"{state}: trial(s) {', '.join(numbers)}")
    if weights:
        parts = ", ".join(f"{name} {share:.0%}" for name, share in weights.items())
        lines.append(f"which setting mattered (Optuna's importances): {parts}")
    return lines


def _interval(result: TrialResult) -> str:
    return f" [{result.low:.4g}, {result.high:.4g}]" if result.low is not None else ""
