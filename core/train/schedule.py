"""When a run reports, validates and saves, and its learning rate: all in steps, all
derived from the parameters and the epoch's size, so a resumed run has the same."""

from __future__ import annotations

from dataclasses import dataclass

from core.params import TrainingParams


@dataclass
class Schedule:
    """When the loop reports, validates and saves, in steps."""

    steps_per_epoch: int
    total_steps: int
    report_every: int
    eval_every: int
    save_every: int

    accumulation: int = 1

    @classmethod
    def for_run(cls, params: TrainingParams, steps_per_epoch: int) -> Schedule:
        accumulate = params.grad_accumulation_steps
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * params.epochs,
            report_every=report_interval(steps_per_epoch),
            eval_every=_multiple(params.eval_every or steps_per_epoch, accumulate),
            save_every=_multiple(params.save_every or steps_per_epoch, accumulate),
            accumulation=accumulate,
        )

    def updates_at(self, step: int) -> bool:
        """Whether the optimizer updates after ``step`` (batches are 1-based)."""
        return step % self.accumulation == 0

    def evaluates_at(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def saves_at(self, step: int) -> bool:
        # the last step's weights are written as the adapter itself
        return step % self.save_every == 0 and step < self.total_steps


def _multiple(steps: int, of: int) -> int:
    """``steps`` rounded up to a multiple of ``of``: checkpoints fall on optimizer updates."""
    return -(-steps // of) * of


def lr_schedule(params: TrainingParams, steps_per_epoch: int) -> dict | None:
    """The run's schedule in mlx-lm's ``lr_schedule`` format (what ``build_schedule`` reads
    and adapter_config.json records), in optimizer steps; None for a constant rate."""
    warmup = params.warmup(steps_per_epoch)
    if params.lr_schedule == "constant" and not warmup:
        return None
    lr, decay = params.learning_rate, params.optimizer_steps(steps_per_epoch) - warmup
    name, arguments = {
        "constant": ("linear_schedule", [lr, lr, 1]),
        "cosine": ("cosine_decay", [lr, decay, 0.0]),
        "linear": ("linear_schedule", [lr, 0.0, decay]),
    }[params.lr_schedule]
    config: dict = {"name": name, "arguments": arguments}
    if warmup:
        config |= {"warmup": warmup, "warmup_init": 0.0}
    return config


def learning_rate(params: TrainingParams, steps_per_epoch: int):
    """What the optimizer takes: mlx-lm's ``build_schedule`` of the schedule, or the rate."""
    from mlx_lm.tuner.utils import build_schedule

    config = lr_schedule(params, steps_per_epoch)
    return build_schedule(config) if config else params.learning_rate


def report_interval(steps_per_epoch: int, target: int = 10) -> int:
    """Steps between progress lines: the largest divisor of an epoch up to ``target``, so
    every epoch ends on a report."""
    return max(d for d in range(1, min(target, steps_per_epoch) + 1) if steps_per_epoch % d == 0)
