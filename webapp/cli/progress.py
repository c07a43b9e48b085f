"""A training run's events on a terminal: a rich progress bar (step, ETA, loss, validation
loss, trained tokens/s, a method's own figures); when stderr is not a terminal (a log file,
CI), one plain line per event."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from core import protocol


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def method_figures(event: protocol.Progress | protocol.Validation) -> str:
    """A preference run's reward accuracy and margin (and ORPO's log-odds ratio), a GRPO
    run's reward (each reward's too when there are several), KL, answer length and share
    without signal; "" for SFT."""
    if event.reward is not None:
        return grpo_figures(event)
    if event.reward_accuracy is None:
        return ""
    text = f"reward accuracy {event.reward_accuracy:.2f}, margin {event.reward_margin:.3f}"
    if event.log_odds_ratio is not None:
        text += f", log-odds ratio {event.log_odds_ratio:.3f}"
    return text


def grpo_figures(event: protocol.Progress | protocol.Validation) -> str:
    text = f"reward {event.reward:.3f}"
    if event.rewards and len(event.rewards) > 1:
        text += " (" + ", ".join(f"{n} {v:.2f}" for n, v in event.rewards.items()) + ")"
    if event.kl is not None:
        text += f", KL {event.kl:.4f}"
    text += f", {event.completion_length:.0f} tokens"
    if isinstance(event, protocol.Progress):
        text += f", {event.no_signal:.0%} without signal"
    return text


class ProgressBar:
    """The run's progress: a rich bar on a terminal, one plain line per event otherwise."""

    def __init__(self, stream=sys.stderr):
        self.console = Console(file=stream, highlight=False)
        self.live = self.console.is_terminal
        self.val_loss: float | None = None
        self.stats = ""  # the last report's figures, shown until the next one
        self.progress: Progress | None = None
        self.task = None

    def show(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Start):
            self._start(event)
        elif isinstance(event, protocol.Validation):
            self.val_loss = event.loss
            self._validation(event)
        elif isinstance(event, protocol.Notice):
            self._line(f"note: {event.message}", always=True)
        elif isinstance(event, protocol.Checkpoint):
            self._line(f"checkpoint at step {event.step}")
        elif isinstance(event, protocol.Progress):
            self._progress(event)
        elif isinstance(event, protocol.Activity):
            self._activity(event)
        elif isinstance(event, protocol.Samples):
            self._line(f"samples at step {event.step} ({event.seconds:.1f} s):")
            for sample in event.samples:
                reward = f" (reward {sample.reward:g})" if sample.reward is not None else ""
                self._line(f"  {_short(sample.prompt)} -> {_short(sample.answer)}{reward}")

    def _validation(self, event: protocol.Validation) -> None:
        figures = method_figures(event)
        what = (
            f"held-out {figures}"
            if event.reward is not None
            else f"validation loss {event.loss:.3f}{figures and ', ' + figures}"
        )
        took = f", {event.seconds:.1f} s" if event.seconds is not None else ""
        self._line(f"{what} (step {event.step}{took})")

    def _start(self, event: protocol.Start) -> None:
        if event.ready_seconds is not None:
            parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in event.phases.items())
            self._line(f"ready in {event.ready_seconds:.1f} s ({parts})", always=True)
        if event.resumed_from:
            self._line(f"resuming at step {event.resumed_from}/{event.total_steps}", always=True)
        else:
            self._line(
                f"training {event.total_steps} steps ({event.epochs} epoch(s) x "
                f"{event.steps_per_epoch}), {event.trainable_params:,} trainable parameters, "
                f"BLAS: {event.blas}",
                always=True,
            )
        if event.method != "sft":
            self._line(f"method {event.method}, beta {event.beta:g}", always=True)
        if event.ranks > 1:
            self._line(
                f"{event.ranks} ranks share each batch: tok/s is their sum, memory the "
                "largest rank's",
                always=True,
            )
        if self.live and self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps · ETA"),
                TimeRemainingColumn(),
                TextColumn("· {task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
            done = event.resumed_from or 0
            self.task = self.progress.add_task(
                "", total=event.total_steps, completed=done, stats=""
            )

    def _progress(self, event: protocol.Progress) -> None:
        val = ""
        if self.val_loss is not None:  # GRPO's validation "loss" is minus the held-out reward
            val = f" held-out {-self.val_loss:.3f}" if event.reward is not None else ""
            val = val or f" val {self.val_loss:.3f}"
        figures = method_figures(event)
        stats = (
            f"loss {event.loss:.3f}{val}{figures and ' · ' + figures} · "
            f"{event.tokens_per_second:.0f} trained tok/s · {event.peak_memory_gb:.2f} GB"
        )
        self.stats = stats
        if self.progress is not None:
            self.progress.update(self.task, completed=event.step, stats=stats)
        else:
            self._line(f"step {event.step}/{event.total_steps} epoch {event.epoch} {stats}")

    def _activity(self, event: protocol.Activity) -> None:
        """A sign of life between reports: the bar moves; a validation says how far it is."""
        validating = event.phase in ("validate", "reference")
        doing = "validating" if event.phase == "validate" else "the base's log-probabilities"
        where = f"{doing}: batch {event.batch} of {event.batches}" if validating else ""
        if self.progress is not None:
            stats = f"{where} · {self.stats}" if where else self.stats
            self.progress.update(self.task, completed=event.step, stats=stats)
        elif validating:
            self._line(where)

    def _line(self, text: str, always: bool = False) -> None:
        """A line above the bar on a terminal (if ``always``), or a plain log line."""
        if self.progress is not None or always or not self.live:
            self.console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
