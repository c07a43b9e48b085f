"""A run's samples (the model's answers to a few validation prompts at each validation), as
the page shows them under the loss chart: the newest step first."""

from __future__ import annotations

import html

from core import protocol


def samples_html(events: list) -> str:
    """Every ``samples`` event of a run, newest first; "" when it has none."""
    found = [e for e in events if isinstance(e, protocol.Samples)]
    if not found:
        return ""
    blocks = []
    for event in reversed(found):
        answers = "".join(
            f"<tr><td>{html.escape(s.prompt)}</td><td class='ls-sample-answer'>"
            f"{html.escape(s.answer) or '<i>(nothing)</i>'}</td>"
            + (
                f"<td class='ls-sample-reward'>reward {s.reward:g}</td>"
                if s.reward is not None
                else ""
            )
            + "</tr>"
            for s in event.samples
        )
        blocks.append(
            f"<details class='ls-samples-step' data-step='{event.step}'"
            f"{' open' if not blocks else ''}><summary>step {event.step} "
            f"({event.seconds:.1f} s)</summary><table>{answers}</table></details>"
        )
    return (
        "<div id='ls-samples' style='max-height:320px;overflow-y:auto'>"
        "<p><b>Samples</b>: greedy answers to validation prompts at each validation</p>"
        + "".join(blocks)
        + "</div>"
    )


def _row(sample: protocol.Sample) -> str:
    """A sample's table row: the prompt, the answer, and (GRPO) its reward."""
    reward = sample.reward
    return (
        f"<tr><td>{html.escape(sample.prompt)}</td><td class='ls-sample-answer'>"
        f"{html.escape(sample.answer) or '<i>(nothing)</i>'}</td>"
        + (f"<td class='ls-sample-reward'>reward {reward:g}</td>" if reward is not None else "")
        + "</tr>"
    )
