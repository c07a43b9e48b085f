"""The page: Train, Adapters, Chat and Evaluate tabs over one Studio, on the API's FastAPI
app."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from core.machine import device
from core.serve.api import create_app
from webapp.page import adapters_tab, chat_tab, evaluate_tab
from webapp.page.concurrency import DEFAULT_LIMIT, QUICK, WATCH
from webapp.page.studio import Studio
from webapp.page.train import wiring as train_tab

CSS = """
.ls-bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
.ls-bar > div { height: 100%; background: #6366f1; transition: width .3s; }
.ls-preview { white-space: pre-wrap; font-size: 12px; }
.ls-masked { color: #9ca3af; }
.ls-eval td, .ls-eval th, .ls-compare td, .ls-compare th { padding: 2px 8px; font-size: 13px; }
.ls-verdict { margin: 4px 0; }
#ls-eval-rows td, #ls-eval-rows th { font-size: 13px; vertical-align: top; }
"""
REFRESH_SECONDS = 1.0


def build_page(studio: Studio, notice: str = "") -> gr.Blocks:
    # Gradio keeps a copy of every file it serves (uploads, exports): drop those older than
    # an hour, hourly, so a long-running studio does not fill its temp folder
    with gr.Blocks(title="LoRA Studio", delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            "# LoRA Studio\nTrain LoRA adapters on local models with MLX, then chat "
            "with them here or through the OpenAI-compatible API at `/v1`.  \n"
            f"Computing on: **{device.describe()}**",
            elem_id="ls-header",
        )
        if notice:
            gr.Markdown(notice, elem_id="ls-notice")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = train_tab.build(studio, page)
            with gr.Tab("Adapters", id="adapters"):
                adapters = adapters_tab.build(studio, page)
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab.build(studio, page)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate = evaluate_tab.build(studio, page)

        _refresh_every_second(studio, train, adapters, chat, evaluate)
        private = {"api_visibility": "private", **QUICK}
        train.chat_with.click(
            _opening(studio, "chat"), train.new_adapter, [tabs, chat.model], **private
        )
        adapters.merge.evaluate.click(
            _opening(studio, "evaluate"), adapters.merge.models, [tabs, evaluate.models], **private
        )
    return page


def _opening(studio: Studio, tab: str):
    """A handler that opens ``tab`` with its model picker set to what it is given (an id,
    or a list of them)."""
    return lambda chosen: (
        gr.Tabs(selected=tab),
        gr.update(choices=studio.chat_choices(), value=chosen),
    )


def _refresh_every_second(studio: Studio, train, adapters, chat, evaluate) -> None:
    """The page's one timer: each tick is a round trip through Gradio's queue, which an idle
    page pays for (docs/benchmarks.md, "An idle page"), so one tick does all the polling: a
    run started elsewhere is joined (``train.watch``) and the pickers follow the registry;
    everything else is skipped."""
    seen = gr.State(-1)

    def refresh(last_version: int, shown: str | None):
        runs = train.watch(shown)
        version = studio.registry.version
        if version == last_version:
            return (gr.skip(),) * 10 + runs
        bases, models = studio.base_choices(), studio.chat_choices()
        adapters_picked = gr.update(choices=adapters_tab.picker_choices(studio))
        return (
            version,
            gr.update(choices=bases),
            gr.update(choices=models),
            adapters_tab.table_update(studio),
            adapters_picked,
            gr.update(choices=bases),
            adapters_picked,
            adapters_picked,
            gr.update(choices=models),
            gr.update(choices=[("no judge", ""), *models]),
            *runs,
        )

    outputs = [seen, train.model, chat.model, adapters.table, adapters.picker]
    outputs += [adapters.import_base, adapters.compared, adapters.merge.picked]
    outputs += [evaluate.models, evaluate.judge]
    gr.Timer(REFRESH_SECONDS).tick(
        refresh,
        [seen, train.shown],
        [*outputs, train.shown, train.join],
        api_name="refresh",
        api_visibility="undocumented",
        show_progress="hidden",
        **WATCH,
    )


def create_server(
    studio: Studio,
    *,
    auth: tuple[str, str] | None = None,
    api_key: str | None = None,
    notice: str = "",
    max_file_size: str = "1gb",
) -> FastAPI:
    """One FastAPI app: the OpenAI-compatible API under /v1, the page at /."""
    app = create_app(studio.registry, studio.engine, api_key=api_key)
    page = build_page(studio, notice)
    page.queue(default_concurrency_limit=DEFAULT_LIMIT)
    return gr.mount_gradio_app(
        app,
        page,
        path="/",
        auth=auth,
        max_file_size=max_file_size,
        css=CSS,
        ssr_mode=False,
        allowed_paths=[str(studio.settings.exports)],  # the exports to download
    )
