"""Small inline SVG charts: the loss curve, a preference run's rewards, the token-length
histogram.

Drawn server-side because Gradio's plot components do not redraw reliably while their data
streams in during a run; an SVG string in an HTML component always shows what it is given.
"""

from __future__ import annotations

import html

WIDTH, HEIGHT, PAD = 640, 240, 40
COLOURS = {"train": "#6366f1", "validation": "#f97316"}
PALETTE = ("#6366f1", "#f97316", "#16a34a", "#dc2626", "#0891b2", "#a21caf", "#ca8a04", "#475569")


def _frame(body: str, x_label: str, y_label: str, title: str) -> str:
    return (
        f"<svg class='ls-chart' role='img' aria-label='{html.escape(title)}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' width='100%' xmlns='http://www.w3.org/2000/svg' "
        f"style='font:11px sans-serif'>"
        f"<line x1='{PAD}' y1='{HEIGHT - PAD}' x2='{WIDTH - 10}' y2='{HEIGHT - PAD}' "
        "stroke='#999'/>"
        f"<line x1='{PAD}' y1='10' x2='{PAD}' y2='{HEIGHT - PAD}' stroke='#999'/>"
        f"<text x='{WIDTH / 2}' y='{HEIGHT - 8}' text-anchor='middle'>{x_label}</text>"
        f"<text x='12' y='{HEIGHT / 2}' transform='rotate(-90 12 {HEIGHT / 2})' "
        f"text-anchor='middle'>{y_label}</text>{body}</svg>"
    )


def loss_chart(rows: list[dict], kept_step: int | None = None) -> str:
    """Train and validation loss against the step; ``rows`` hold step, loss and series.
    ``kept_step`` marks the step whose weights were published (keep-best). A GRPO run's
    validation "loss" is minus its held-out reward: that one is drawn as the reward."""
    losses = [r for r in rows if r.get("reward") is None or r["series"] == "train"]
    return line_chart(losses, "loss", kept_step=kept_step)


def method_charts(rows: list[dict], kept_step: int | None = None) -> str:
    """A preference run's reward accuracy and reward margin, or a GRPO run's reward (train
    and held-out) and KL to the base, against the step, each as wide as the loss chart
    above them (side by side, their text shrank to half: unreadable) (``rows`` hold step,
    series and the protocol's figures); "" for a run without them."""
    if any(r.get("reward") is not None for r in rows):
        shown = (("reward", None, None), ("kl", 0.0, None))
    elif any(r.get("reward_accuracy") is not None for r in rows):
        shown = (("reward_accuracy", 0.0, 1.0), ("reward_margin", None, None))
    else:
        return ""
    charts = [
        line_chart(rows, name, kept_step=kept_step, low=low, high=high) for name, low, high in shown
    ]
    return f"<div class='ls-preference-charts'>{''.join(charts)}</div>"


def line_chart(
    rows: list[dict],
    value: str,
    *,
    kept_step: int | None = None,
    low: float | None = None,
    high: float | None = None,
    colours: dict[str, str] = COLOURS,
    title: str | None = None,
) -> str:
    """``value`` of each series (``colours`` names them: train and validation by default)
    against the step, between ``low`` and ``high`` (default: the values' own range)."""
    label = value.replace("_", " ")
    points = [r for r in rows if r.get(value) is not None and r.get("step") is not None]
    if not points:
        return _frame("", "step", label, f"{label} chart (no data yet)")
    max_step = max(r["step"] for r in points) or 1
    low = min(r[value] for r in points) if low is None else low
    high = max(r[value] for r in points) if high is None else high
    span = (high - low) or 1.0

    def xy(r: dict) -> str:
        x = PAD + (WIDTH - PAD - 10) * r["step"] / max_step
        y = 10 + (HEIGHT - PAD - 10) * (high - r[value]) / span
        return f"{x:.1f},{y:.1f}"

    body = [
        f"<text x='{PAD - 4}' y='14' text-anchor='end'>{high:.2f}</text>",
        f"<text x='{PAD - 4}' y='{HEIGHT - PAD}' text-anchor='end'>{low:.2f}</text>",
        f"<text x='{WIDTH - 10}' y='{HEIGHT - PAD + 14}' text-anchor='end'>{max_step}</text>",
    ]
    for i, (series, colour) in enumerate(colours.items()):
        mine = sorted((r for r in points if r["series"] == series), key=lambda r: r["step"])
        if mine:
            coords = " ".join(xy(r) for r in mine)
            body.append(
                f"<polyline class='ls-{_css_name(series)}' data-series='{html.escape(series)}' "
                f"data-points='{len(mine)}' fill='none' "
                f"stroke='{colour}' stroke-width='2' points='{coords}'/>"
            )
            body += [
                f"<circle cx='{c.split(',')[0]}' cy='{c.split(',')[1]}' r='2.5' fill='{colour}'/>"
                for c in coords.split()
            ]
        body.append(_legend(i, series, colour))
    if kept_step is not None:
        x = PAD + (WIDTH - PAD - 10) * kept_step / max_step
        body.append(
            f"<g class='ls-kept' data-step='{kept_step}'><line x1='{x:.1f}' y1='10' x2='{x:.1f}' "
            f"y2='{HEIGHT - PAD}' stroke='#16a34a' stroke-dasharray='4 3'/>"
            f"<text x='{x - 3:.1f}' y='34' text-anchor='end' fill='#16a34a'>"
            f"kept: step {kept_step}</text></g>"
        )
    return _frame("".join(body), "step", label, title or f"{label} chart")


def compare_chart(rows: list[dict], names: list[str]) -> str:
    """Several runs' validation loss on one chart (``rows``' series are the runs' names)."""
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    return line_chart(rows, "loss", colours=colours, title="validation loss of the runs compared")


def _legend(i: int, series: str, colour: str) -> str:
    """Train and validation side by side at the top right; run names, one per line."""
    if series in COLOURS:
        return f"<text x='{WIDTH - 120 + 60 * i}' y='22' fill='{colour}'>{series}</text>"
    return (
        f"<text x='{WIDTH - 12}' y='{22 + 13 * i}' text-anchor='end' fill='{colour}'>"
        f"{html.escape(series)}</text>"
    )


def _css_name(series: str) -> str:
    return series if series in COLOURS else "run"


def histogram(lengths: list[int], bins: int = 12) -> str:
    """How many examples have how many tokens."""
    if not lengths:
        return ""
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * (-(-(high - low + 1) // width))
    for n in lengths:
        counts[(n - low) // width] += 1
    bar_w = (WIDTH - PAD - 10) / len(counts)
    tallest = max(counts)
    body = []
    for i, count in enumerate(counts):
        h = (HEIGHT - PAD - 20) * count / tallest
        x = PAD + i * bar_w
        body.append(
            f"<rect x='{x + 1:.1f}' y='{HEIGHT - PAD - h:.1f}' width='{bar_w - 2:.1f}' "
            f"height='{h:.1f}' fill='#6366f1'><title>{low + i * width}-"
            f"{low + (i + 1) * width - 1} tokens: {count}</title></rect>"
        )
    body += [
        f"<text x='{PAD}' y='{HEIGHT - PAD + 14}'>{low}</text>",
        f"<text x='{WIDTH - 10}' y='{HEIGHT - PAD + 14}' text-anchor='end'>{high}</text>",
        f"<text x='{PAD - 4}' y='24' text-anchor='end'>{tallest}</text>",
    ]
    return _frame("".join(body), "tokens per example", "examples", "token histogram")
