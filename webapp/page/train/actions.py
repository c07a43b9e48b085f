"""What the Train tab's events do: each method of ``TrainActions`` is a Gradio handler;
generators stream the run's progress view, the others return the outputs they are wired to."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from core import protocol
from core.data.uploads import store_upload
from core.errors import StudioError
from core.models.inspect import inspect_model
from core.params import default_rank
from webapp.page import hosts_panel, quantize_panel, runs_panel
from webapp.page.background import with_progress
from webapp.page.studio import Studio, explain
from webapp.page.train import mapping, rewards_panel, sweep_panel, teach_panel
from webapp.page.train.form import params as form_params
from webapp.page.train.view import render, summary

# the import form left as it is, hidden: a studio .jsonl needs no mapping
NO_FORM = (gr.update(visible=False), None, "", *([gr.skip()] * len(mapping.TARGETS)), gr.skip(), "")
STARTING = "starting"  # a page's ``shown`` while its own Start or Resume launches a run
# the progress view from the click until the run's first view: the bar says what happens,
# Start is off (a second click would be refused anyway)
STARTING_VIEW = (
    "<div class='ls-bar'><div style='width:0%'></div></div>"
    "<p id='ls-progress-text'>starting: checking the dataset, the model and the memory...</p>",
    *(gr.skip(),) * 5,
    gr.update(interactive=False),
    *(gr.skip(),) * 4,
)


class TrainActions:
    """What the Train tab's events do. Methods are Gradio handlers: generators stream the
    run's progress view, the others return the outputs they are wired to."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.teaching = teach_panel.Teaching(studio)  # a dataset made by a teacher
        self.sweeping = sweep_panel.Sweeping(studio)  # several settings tried

    def check_dataset(self, base_model: str, dataset_path: str, dataset_name: str, **form):
        """Check a dataset (and, with a base model, the parameters against it) before training.

        Returns the summary, the token histogram, the trained/masked preview, why Start is
        (not) ready, and Start's state."""
        return summary(self.studio, base_model, dataset_path, dataset_name, form)

    def check_hosts(self, mode: str, processes, base_model: str | None) -> str:
        """Check the chosen hosts over ssh (this machine without): their status as Markdown."""
        return hosts_panel.check(self.studio, mode, processes, base_model)

    def quantize(self, base_model: str | None, bits: int, group_size: int):
        """A quantized copy of the picked base, then picked."""
        return quantize_panel.make(self.studio, base_model, bits, group_size)

    def reward_choices(self):
        """The rewards and reward files the GRPO panel offers (the owner's, as they are now)."""
        return rewards_panel.choices(self.studio)

    def preview_rewards(self, base_model: str, dataset_path: str, **form) -> str:
        """What each reward gives the base model's own answers to the dataset's first rows."""
        return rewards_panel.preview(self.studio, base_model, dataset_path, form)

    def preselect(self):
        """The base model to start with: the only one, or the one used last (with the list
        as it is now: the page may be older than the models)."""
        model_id = self.studio.preferred_base()
        if not model_id:
            return gr.skip()
        return gr.update(choices=self.studio.base_choices(), value=model_id)

    def demo_offer(self):
        """The demo model's box: for a studio with no base model only."""
        return gr.update(visible=not self.studio.base_choices())

    def pick_model(self, model_id, current_layers, follows, current_alpha):
        """Rank, alpha, layers and target modules fitted to the picked base: its modules to
        choose from, its attention projections picked (nothing picked: as they are; a
        studio with no model yet opens on that)."""
        if not model_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            info = inspect_model(self.studio.registry.get(model_id).path)
        except StudioError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()  # gone: the check says why
        new_rank = default_rank(info.parameter_count)
        new_layers = min(int(current_layers or 8), info.num_layers)
        keys = gr.update(choices=info.layer_modules(), value=info.attention_keys())
        return new_rank, (2 * new_rank if follows else current_alpha), new_layers, keys

    def take_upload(self, path):
        """(dataset path, name, *the import form, the upload box, the path box): a .jsonl is
        stored as it is, any other file imported (``mapping.arrive``). One dataset is in
        play at a time: an upload empties the path box; a refused upload empties its own
        box, says why, and leaves the dataset that was there."""
        if not path:
            return "", "", *NO_FORM, gr.skip(), gr.skip()
        try:
            if not mapping.is_studio_dataset(path):
                return *mapping.arrive(self.studio, path), gr.skip(), ""
            stored = store_upload(Path(path), self.studio.settings.datasets)
        except (StudioError, gr.Error) as exc:
            gr.Warning(f"{Path(path).name} was not taken: {getattr(exc, 'message', exc)}")
            return (gr.skip(),) * (2 + len(NO_FORM)) + (None, gr.skip())
        return str(stored), Path(path).name, *NO_FORM, gr.skip(), ""

    def take_path(self, text, model_id: str | None = None):
        """The same for a path on the server, or a Hugging Face dataset's name (it empties
        the upload box); a folder of documents becomes text chunks of the picked base's
        tokens, for continued pretraining."""
        text = (text or "").strip()
        if not text:
            return "", "", *NO_FORM, gr.skip(), gr.skip()
        try:
            source = self.studio.access.source(text)  # expanded, resolved, then confined
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        if mapping.is_studio_dataset(source):
            return source, Path(source).name, *NO_FORM, None, gr.skip()
        if mapping.is_documents(source):
            return *mapping.arrive_documents(self.studio, source, model_id), None, gr.skip()
        return *mapping.arrive(self.studio, source), None, gr.skip()

    def preview_import(self, source, *mapped):
        return mapping.show(source, *mapped)

    def save_import(self, source, name, replace, *mapped):
        return mapping.save(self.studio, source, name, replace, *mapped)

    def train(
        self, base_model: str, dataset_path: str, dataset_name: str, adapter_name: str, **form
    ):
        """Start a training run and stream its progress until it ends.

        base_model is a base model's id; dataset_path a .jsonl file on the server (what
        /check_dataset accepted); the form's fields (rank, alpha, learning_rate, epochs, ...)
        are named parameters, any left out keeps its default."""
        yield STARTING_VIEW  # the checks before the process starts take seconds: say so
        try:
            if not base_model or not dataset_path:
                raise StudioError("pick a base model and add a dataset first")
            run = self.studio.training.start(
                self.studio.registry.get(base_model).path,
                self.studio.dataset_path(dataset_path),
                self.studio.gated_params(form_params(form)),
                name=adapter_name,
                dataset_name=dataset_name,
                launch=hosts_panel.launch(self.studio, form.get("hosts"), form.get("processes")),
            )
        except StudioError as exc:
            yield self._refused(exc)
            return
        self.studio.evaluate_when_published(run)
        yield from self._follow(run)

    def resume(self, run_id: str):
        """Resume a stopped or interrupted run and stream its progress until it ends."""
        yield STARTING_VIEW
        try:
            if not run_id:
                raise StudioError("pick a run to resume")
            run = self.studio.training.resume(run_id)
        except StudioError as exc:
            yield self._refused(exc)
            return
        self.studio.evaluate_when_published(run)
        yield from self._follow(run)

    def show_current(self):
        """A page opened (or reloaded) during a run shows it: the service owns the run."""
        run = self.studio.training.active()
        if run is None:
            yield (gr.skip(),) * 9 + runs_panel.view(self.studio)
        elif run.done:  # its last view; Start and why are the form check's to set
            view = render(run)
            yield view[:6] + (gr.skip(), view[7], gr.skip()) + runs_panel.view(self.studio)
        else:
            yield from self._follow(run)

    def shown_at_load(self) -> str | None:
        """The run a page shows from its load on (see ``watch``)."""
        run = self.studio.training.active()
        return run.id if run is not None and not run.done else None

    def watch(self, shown: str | None):
        """(shown, join): a run started elsewhere (another page, the API, the CLI) after this
        page loaded gets ``join`` set, which makes the page follow it; a run this page is
        starting itself (``shown`` is STARTING) is only noted, its Start already follows it."""
        run = self.studio.training.active()
        if run is None or run.done or run.id == shown:
            return gr.skip(), gr.skip()
        return run.id, (gr.skip() if shown == STARTING else run.id)

    def stop(self):
        """Stop the current run after a checkpoint; it stays resumable."""
        run = self.studio.training.active()
        if run is not None:
            run.stop()  # this studio's run, or a request to the process that trains it

    def discard(self, run_id, confirmed):
        try:
            if not confirmed:
                raise StudioError("tick the box to confirm")
            self.studio.training.runs.discard(run_id or "")
        except StudioError as exc:
            return explain(exc), *runs_panel.view(self.studio)
        return "Discarded.", *runs_panel.view(self.studio)

    def _follow(self, run):
        """The run's view at each event, the runs table and picker with it (one source: the
        run's record, which the service writes as the events come). A page that joins a run
        gets its history in one view, not one view per past event."""
        history, first = len(run.events), True
        if history:
            yield render(run) + runs_panel.view(self.studio)
            first = False
        for index, _ in enumerate(run.follow()):
            if index < history:
                continue
            if isinstance(run.last_event, protocol.Complete):
                # "Done" on the page means chat and /v1 know the adapter already; the
                # folder watcher would see it a moment later
                self.studio.registry.reload()
            yield render(run, first) + runs_panel.view(self.studio)
            first = False
        yield render(run, first=False) + runs_panel.view(self.studio)

    def _refused(self, exc: StudioError) -> tuple:
        """A start that did not happen: the message, and the view left as it was (a run
        that goes on keeps its bar, its chart and its Stop button)."""
        run = self.studio.training.active()
        running = run is not None and not run.done
        return (
            gr.skip() if running else "",  # the "starting" bar goes: nothing started
            gr.skip(),
            explain(exc),
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.update(interactive=not running),
            gr.skip(),
            gr.skip(),
            *runs_panel.view(self.studio),
        )

    def get_demo(self):
        """Fetch and import the demo model, reporting each step; then pick it and its data."""
        from core.models.demo import get_demo as fetch

        studio = self.studio

        def work(progress):
            return fetch(studio.settings.models, studio.settings.datasets, progress)

        for steps, paths, error in with_progress(work):
            text = "  \n".join(steps)
            if error is not None:
                yield explain(error), gr.skip(), gr.skip(), gr.skip()
                return
            if paths is None:
                yield text or "starting...", gr.skip(), gr.skip(), gr.skip()
                continue
            model_path, dataset_path = paths
            studio.registry.reload()
            yield (
                text + "  \nReady: the demo model and the sample dataset are picked.",
                gr.update(choices=studio.base_choices(), value=model_path.name),
                str(dataset_path),
                dataset_path.name,
            )
