"""The training loop: mlx-lm's loss, batches, evaluation and optimizer, driven one step at a
time so that a run can start at any step.

mlx-lm's ``trainer.train()`` always starts at step 1 with a fresh optimizer and a data order
drawn from the global NumPy state, so it cannot resume, keep the best checkpoint or stop early.
This loop uses the same parts (``default_loss``, ``evaluate``, the compiled value-and-grad step
with ``average_gradients``) and adds what it lacks:

- each epoch's batch order comes from ``seed + epoch``, so the order of any epoch can be drawn
  again after a restart, and the batches already trained are skipped (``core.train.batches``;
  with ``core.train.frozen``'s batches a step starts at the first adapted layer);
- checkpoints hold the optimizer state and the random key as well as the weights;
- validation every ``eval_every`` steps keeps track of the best step, which is checkpointed so
  it can be published, and of the patience left for early stopping;
- over several ranks (``mlx.launch``), gradients and losses are weighted by each rank's token
  count, so a run's numbers do not depend on how many ranks share its batches; a stop asked
  of any rank is agreed by all at the next step; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.utils import average_gradients
from mlx.utils import tree_map
from mlx_lm.tuner import trainer

from core import protocol
from core.params import TrainingParams
from core.train import checkpoints
from core.train.batches import sft_batches, validation_batch
from core.train.checkpoints import TrainerState
from core.train.loss import MLX_LM_LOSS, Loss
from core.train.schedule import Schedule

# the longest the run stays silent between steps or validation batches (an activity line)
HEARTBEAT_SECONDS = 2.0
# seconds to pause after each step: shows a slow machine's page on a fast one (tests, demos)
STEP_DELAY = float(os.environ.get("LORA_STUDIO_STEP_DELAY") or 0)


class Stopped(Exception):
    """Raised between steps once a stop was asked for (SIGTERM, or the studio went away)."""


class TrainingLoop:
    """Trains ``model`` (already wrapped in LoRA layers) and emits protocol events."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer,
        train_set,
        valid_set,
        params: TrainingParams,
        schedule: Schedule,
        checkpoint_folder: Path,
        emit: Callable[[protocol._Message], None],
        stop: threading.Event,
        loss: Loss = MLX_LM_LOSS,
        batches: Callable[..., Iterator] = sft_batches,
        sampler: Callable[[int], protocol.Samples | None] | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.train_set = train_set
        self.valid_set = valid_set
        self.params = params
        self.schedule = schedule
        self.checkpoint_folder = checkpoint_folder
        self.emit = emit
        self.stop = stop
        self.loss = loss
        self.batches = batches
        self.sampler = sampler  # the samples after each validation (rank 0 only)
        self.state = TrainerState(seed=params.seed)
        self.last_checkpoint: int | None = None
        self.stopped_early = False
        self.last_loss = float("nan")
        self.group = mx.distributed.init()
        self.writes = self.group.rank() == 0  # the other ranks hold the same weights
        self._said_at = time.monotonic()  # when the run last said something
        self._validation_batches = 1  # of the validation under way
        self._compiled_validation: Callable | None = None

    # -- resuming ---------------------------------------------------------------------------

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimizer moments, random key, position."""
        from mlx.utils import tree_unflatten

        weights, optimizer_state, self.state = checkpoints.load(path)
        self.model.load_weights(list(weights.items()), strict=False)
        self.optimizer.state = tree_unflatten(list(optimizer_state.items()))
        if self.state.random_key:
            high, low = self.state.random_key
            mx.random.seed((high << 32) | low)
        self.last_checkpoint = self.state.step

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainerState:
        """Train from ``self.state`` to the last step (or an early stop); returns the state."""
        self.optimizer.init(self.model.trainable_parameters())
        if self.params.grad_checkpoint:
            trainer.grad_checkpoint(self.model.layers[0])  # mlx-lm's: every layer of that type
        step_fn, compiled_state = self.compiled_step()
        accumulated = None
        self.model.train()
        if self.state.step == 0 or self._evaluation_pending():
            self.validate()
        s = self.schedule
        window = _Window()
        while self.state.step < s.total_steps and not self.stopped_early:
            epoch, position = divmod(self.state.step, s.steps_per_epoch)
            batches = self._epoch_batches(epoch, start=position)
            while True:
                self._check_stop()
                tic = time.perf_counter()  # making a batch is a step's work too
                batch = next(batches, None)
                if batch is None:
                    break
                update = s.updates_at(self.state.step + 1)
                weighted, weight, sums, accumulated = step_fn(batch, accumulated, update)
                mx.eval(compiled_state, weighted, weight, sums, accumulated)
                window.add(weighted, weight, sums, time.perf_counter() - tic)
                self._advance()
                if STEP_DELAY:
                    time.sleep(STEP_DELAY)
                self._heartbeat("train")
                if self.state.step % s.report_every == 0 or self.state.step == s.total_steps:
                    self._report(window)
                if s.evaluates_at(self.state.step):
                    self.validate()
                if s.saves_at(self.state.step) and self.last_checkpoint != self.state.step:
                    self.save()
                if self.stopped_early:
                    break
        return self.state

    def compiled_step(self):
        """mlx-lm's training step, with gradients weighted by tokens: summed over
        ``accumulation`` batches and over ranks, then divided by the tokens of them all (the
        gradient of one big batch), and one optimizer update.

        Returns the step and the state it updates. The step takes the batch as a tuple and
        gives its loss times its weight (tokens, or pairs), the weight, the sums of the figures
        the loss reports, and what to pass as ``previous`` to the next batch."""
        value_and_grad = nn.value_and_grad(self.model, self.loss.fn)
        state = [self.model.state, self.optimizer.state, mx.random.state]
        ranks = self.group.size()

        @partial(mx.compile, inputs=state, outputs=state)
        def step(batch, previous, update: bool):
            (loss, tokens, *sums), grad = value_and_grad(self.model, *batch)
            sums = sums[0] if sums else {}
            grad = tree_map(lambda g: g * tokens, grad)
            total = tokens
            if previous is not None:
                grad = tree_map(lambda g, p: g + p, grad, previous[0])
                total = total + previous[1]
            if update:
                # average_gradients is mlx's batched all-reduce; its mean times the ranks
                # is the sum
                scale = ranks / mx.distributed.all_sum(total)
                grad = tree_map(lambda g: g * scale, average_gradients(grad))
                self.optimizer.update(self.model, grad)
                return loss * tokens, tokens, sums, None
            return loss * tokens, tokens, sums, (grad, total)

        return step, state

    def _epoch_batches(self, epoch: int, start: int) -> Iterator:
        return self.batches(
            dataset=self.train_set,
            batch_size=self.params.batch_size,
            max_seq_length=self.params.max_seq_length,
            seed=self.params.seed + epoch,
            comm_group=self.group,
            start=start,
        )

    def _advance(self) -> None:
        state = self.state
        state.step += 1
        state.epoch, state.batch_in_epoch = divmod(state.step, self.schedule.steps_per_epoch)

    def _check_stop(self) -> None:
        if self._stop_agreed():
            # a stop loses no finished optimizer step: the weights have not changed since the
            # last update, so the checkpoint is that update's (batches after it are redone)
            updated = self.state.step - self.state.step % self.schedule.accumulation
            if updated > 0 and self.last_checkpoint != updated:
                self.save(at=updated)
            raise Stopped

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: every rank must leave at the same step, or
        the others would wait for it in the next all-reduce."""
        if self.group.size() == 1:
            return self.stop.is_set()
        asked = mx.array(1.0 if self.stop.is_set() else 0.0)
        return mx.distributed.all_max(asked, stream=mx.cpu).item() > 0

    def _evaluation_pending(self) -> bool:
        step = self.state.step
        return self.schedule.evaluates_at(step) and self.state.last_eval_step != step

    # -- reporting, validation, checkpoints ---------------------------------------------------

    def _say(self, message: protocol._Message) -> None:
        self.emit(message)
        self._said_at = time.monotonic()

    def _heartbeat(self, phase: str, batch: int | None = None, batches: int | None = None):
        """An activity line when the run has said nothing for HEARTBEAT_SECONDS: a page
        never goes silent for a minute between reports on a slow machine."""
        if time.monotonic() - self._said_at < HEARTBEAT_SECONDS:
            return
        self._say(
            protocol.Activity(
                phase=phase,
                step=self.state.step,
                total_steps=self.schedule.total_steps,
                batch=batch,
                batches=batches,
            )
        )

    def _report(self, window: _Window) -> None:
        s, step = self.schedule, self.state.step
        loss, tokens, seconds, figures = window.take()
        self.last_loss = loss
        self.state.trained_tokens += tokens
        self.state.train_seconds += seconds
        self._say(
            protocol.Progress(
                step=step,
                total_steps=s.total_steps,
                epoch=(step - 1) // s.steps_per_epoch + 1,
                loss=loss,
                learning_rate=self.optimizer.learning_rate.item(),
                tokens_per_second=tokens / seconds if seconds else 0.0,
                peak_memory_gb=self._peak_memory_gb(),
                progress=100.0 * step / s.total_steps,
                trained_tokens=self.state.trained_tokens,
                train_seconds=self.state.train_seconds,
                **figures,
            )
        )

    def _peak_memory_gb(self) -> float:
        """This process's peak, or the largest over ranks."""
        peak = mx.array(mx.get_peak_memory() / 1e9)
        if self.group.size() > 1:
            peak = mx.distributed.all_max(peak, stream=mx.cpu)
        return peak.item()

    def validate(self) -> float:
        """Validation loss over the whole validation set; tracks the best and the patience."""
        state = self.state
        started = time.perf_counter()
        loss, figures = self.evaluate()
        state.last_eval_step = state.step
        self._say(
            protocol.Validation(
                step=state.step,
                epoch=state.step // self.schedule.steps_per_epoch,
                loss=loss,
                seconds=round(time.perf_counter() - started, 3),
                **figures,
            )
        )
        if self.sampler is not None and self.writes:
            sampled = self.sampler(state.step)
            if sampled is not None:
                self._say(sampled)
        if state.step > 0:  # the untrained baseline is not a candidate
            self._track_best(loss)
        return loss

    def evaluate(self) -> tuple[float, dict[str, float]]:
        """The loss and figures over the whole validation set, weighted as in training (by
        tokens, or pairs) and summed over ranks: mlx-lm's ``evaluate``, with the figures."""
        batch_size = validation_batch(
            self.params.batch_size, len(self.valid_set), self.group.size()
        )
        self._validation_batches = max(1, len(self.valid_set) // batch_size)
        self.model.eval()
        window = _Window()
        batches = self.batches(
            dataset=self.valid_set,
            batch_size=batch_size,
            max_seq_length=self.params.max_seq_length,
            comm_group=self.group,
        )
        validation_loss = self._validation_loss()
        for number, batch in enumerate(batches, start=1):
            self._check_stop()
            loss, weight, *sums = validation_loss(*batch)
            window.add(loss * weight, weight, sums[0] if sums else {}, 0.0)
            mx.eval(window.weighted, window.weight, window.sums)
            self._heartbeat("validate", number, self._validation_batches)
        self.model.train()
        loss, _, _, figures = window.take()
        return loss, figures

    def _validation_loss(self) -> Callable:
        """The loss compiled once for validation (traced in eval mode: no dropout), reading
        the weights at each call; a validation batch has a training batch's widths, so the
        shapes compiled are reused from one validation to the next."""
        if self.loss.validation is not None:
            return partial(self.loss.validation, self.model)
        if self._compiled_validation is None:
            self._compiled_validation = mx.compile(
                partial(self.loss.fn, self.model), inputs=[self.model.state]
            )
        return self._compiled_validation

    def _track_best(self, loss: float) -> None:
        state = self.state
        if state.best_loss is None or loss < state.best_loss:
            state.best_step, state.best_loss, state.evals_since_best = state.step, loss, 0
            if self.params.keep == "best" and state.step < self.schedule.total_steps:
                self.save()  # the best weights must outlive later steps
            return
        state.evals_since_best += 1
        patience = self.params.early_stop
        if patience and state.evals_since_best >= patience:
            self.stopped_early = True

    def save(self, at: int | None = None) -> Path:
        """Checkpoint the current weights as step ``at`` (default: the current step); on
        rank 0 only. Returns the checkpoint's folder."""
        key = mx.random.state[0].tolist()
        self.state.random_key = [int(k) for k in key]
        state = self.state
        if at is not None and at != state.step:
            epoch, position = divmod(at, self.schedule.steps_per_epoch)
            state = replace(state, step=at, epoch=epoch, batch_in_epoch=position)
        path = checkpoints.step_folder(self.checkpoint_folder, state.step)
        self.last_checkpoint = state.step
        if not self.writes:
            return path
        path = checkpoints.save(self.checkpoint_folder, self.model, self.optimizer, state)
        keep = {self.state.best_step} if self.state.best_step is not None else set()
        whole_layers = self.params.fine_tune_type == "full"  # only the newest and the best
        last = 1 if whole_layers else checkpoints.KEEP_LAST
        checkpoints.prune(self.checkpoint_folder, keep, last=last)
        self._say(protocol.Checkpoint(step=state.step, path=str(path)))
        return path


class _Window:
    """Weighted losses, weights (tokens, or pairs) and the sums of the loss's figures since
    the last report (kept as MLX arrays: no sync per step)."""

    def __init__(self) -> None:
        self.weighted, self.weight, self.seconds = mx.array(0.0), mx.array(0), 0.0
        self.sums: dict[str, mx.array] = {}

    def add(self, weighted_loss, weight, sums: dict, seconds: float) -> None:
        self.weighted = self.weighted + weighted_loss
        self.weight = self.weight + weight
        for name, value in sums.items():
            self.sums[name] = self.sums.get(name, 0) + value
        self.seconds += seconds

    def take(self) -> tuple[float, int, float, dict[str, float]]:
        """(loss per unit of weight, tokens, seconds, each figure per unit of weight) over
        the window and every rank; then reset."""

        def total(value) -> float:
            return mx.distributed.all_sum(value, stream=mx.cpu).item()

        weight = max(total(self.weight), 1)
        sums = {name: total(value) for name, value in self.sums.items()}
        tokens = int(sums.pop("tokens", weight))
        figures: dict = {}
        for name, value in sums.items():  # "rewards.exact" -> figures["rewards"]["exact"]
            group, dot, key = name.partition(".")
            if dot:
                figures.setdefault(group, {})[key] = value / weight
            else:
                figures[name] = value / weight
        result = total(self.weighted) / weight, tokens, self.seconds, figures
        self.__init__()
        return result
