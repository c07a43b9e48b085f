"""The Chat tab: any model of the registry, streamed, optionally beside its base model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from core.errors import StudioError
from core.models.inspect import generation_defaults
from core.serve.engine import GenerationParams, base_path
from webapp.page.concurrency import CHAT, QUICK
from webapp.page.studio import Studio


@dataclass
class ChatTab:
    model: gr.Dropdown


def _messages(system: str, history: list[dict]) -> list[dict]:
    """The conversation for the engine: the system prompt, then plain role/content pairs."""
    system = (system or "").strip()
    messages = [{"role": "system", "content": system}] if system else []
    for turn in history:
        content = turn.get("content")
        if isinstance(content, list):  # Gradio may give content as a list of parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append({"role": turn["role"], "content": str(content or "")})
    return messages


WAITING = "⏳ Waiting for the model: it is answering another chat..."
UPDATE_SECONDS = 0.05


def _stream_into(studio: Studio, model_id: str, system: str, history: list, params):
    """Append the model's reply to ``history`` as it streams; yields at most every
    UPDATE_SECONDS (a page cannot show hundreds of updates a second, and sending them would
    keep the server from everyone else's events). The engine answers one chat at a time:
    while another is answered, the reply says so."""
    asked = _messages(system, history)
    waiting = studio.engine.busy
    history.append({"role": "assistant", "content": WAITING if waiting else ""})
    if waiting:
        yield
    shown = time.monotonic()
    try:
        for chunk in studio.engine.stream(model_id, asked, params):
            if waiting:
                history[-1]["content"], waiting = "", False
            history[-1]["content"] += chunk.text
            if time.monotonic() - shown >= UPDATE_SECONDS:
                shown = time.monotonic()
                yield
    except StudioError as exc:
        history[-1]["content"] = f"⚠️ {exc.message}"
    yield


# Send while a reply streams: off, with Stop beside it (a message typed meanwhile stays in
# the box, and the page ignores Enter until the reply ends); and back
REPLYING = (gr.update(interactive=False), gr.update(visible=True))
READY = (gr.update(interactive=True), gr.update(visible=False))


class Interruptions:
    """Stop and Clear pressed in a page while its reply streams, by the page's session: the
    reply's own generator sees them between two updates and ends itself, with READY as its
    last word (cancelling it from outside could let an update already on its way arrive
    after the buttons were set back)."""

    def __init__(self) -> None:
        self.replying: set[str] = set()  # the sessions whose reply streams now
        self.stopped: set[str] = set()
        self.cleared: set[str] = set()

    def start(self, session: str) -> None:
        self.replying.add(session)

    def end(self, session: str) -> None:
        for sessions in (self.replying, self.stopped, self.cleared):
            sessions.discard(session)

    def stop(self, session: str, clear: bool = False) -> None:
        if session in self.replying:
            self.stopped.add(session)
            if clear:
                self.cleared.add(session)


def _respond(
    studio: Studio,
    text,
    history,
    base_history,
    model_id,
    compare_on,
    system,
    *sampling,
    stopped: Callable[[], bool] = lambda: False,
):
    """The chat event: the reply streamed into the history, then the base's when comparing;
    Send and Stop follow it (``REPLYING``, then ``READY``). ``stopped()`` ends the reply
    where it is."""
    history, base_history = list(history or []), list(base_history or [])
    if not model_id:
        gr.Warning("Pick a model to chat with first.")
        yield history, base_history, text, *READY
        return
    if not (text or "").strip():
        gr.Warning("Type a message first.")
        yield history, base_history, text, *READY
        return
    studio.last_chat = model_id
    t, p, n, r = sampling
    penalty = r if r and r > 1.0 else None
    params = GenerationParams(temperature=t, top_p=p, max_tokens=int(n), repetition_penalty=penalty)
    history.append({"role": "user", "content": text})
    # the box is emptied once, as the message goes: what is typed meanwhile stays there
    yield history, base_history, "", *REPLYING
    for _ in _stream_into(studio, model_id, system, history, params):
        if stopped():
            break  # closing the stream stops the engine at its next token
        yield history, base_history, gr.skip(), *REPLYING
    entry = studio.registry.get(model_id)
    if compare_on and entry.kind == "adapter" and entry.base_id and not stopped():
        base_history.append({"role": "user", "content": text})
        for _ in _stream_into(studio, entry.base_id, system, base_history, params):
            if stopped():
                break
            yield history, base_history, gr.skip(), *REPLYING
    yield history, base_history, gr.skip(), *READY


@dataclass
class _Components:
    model: gr.Dropdown
    compare: gr.Checkbox
    chat: gr.Chatbot
    base_chat: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    system: gr.Textbox
    settings: list  # temperature, top p, max tokens, repetition penalty
    defaults: gr.Markdown


def layout(studio: Studio) -> _Components:
    with gr.Row():
        # models come and go while a page is open: the engine checks the id
        model = gr.Dropdown(
            studio.chat_choices(),
            label="Model",
            scale=3,
            elem_id="ls-chat-model",
            allow_custom_value=True,
        )
        compare = gr.Checkbox(False, label="Compare with the base model", scale=1)
    with gr.Row():
        chat = gr.Chatbot(label="Model", height=420, elem_id="ls-chat")
        base_chat = gr.Chatbot(
            label="Base model", height=420, visible=False, elem_id="ls-base-chat"
        )
    with gr.Row():
        message = gr.Textbox(placeholder="Message", show_label=False, scale=5, elem_id="ls-msg")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="ls-send")
        stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="ls-chat-stop")
        clear = gr.Button("Clear", scale=1, elem_id="ls-chat-clear")
    with gr.Accordion("Sampling and system prompt", open=False):
        system = gr.Textbox(label="System prompt", lines=2)
        with gr.Row():
            temperature = gr.Slider(
                0, 2, 0.7, step=0.05, label="Temperature", elem_id="ls-temperature"
            )
            top_p = gr.Slider(0.05, 1, 1.0, step=0.05, label="Top p")
            max_tokens = gr.Slider(
                1, 4096, 256, step=1, label="Max tokens", elem_id="ls-max-tokens"
            )
            penalty = gr.Slider(1.0, 2.0, 1.0, step=0.01, label="Repetition penalty (1: off)")
        defaults = gr.Markdown(elem_id="ls-sampling-defaults")
    settings = [temperature, top_p, max_tokens, penalty]
    return _Components(
        model, compare, chat, base_chat, message, send, stop, clear, system, settings, defaults
    )


def _handlers(studio: Studio, interruptions: Interruptions):
    """(the page's chat, the API's /chat): one conversation, with and without the buttons."""

    def respond(
        text,
        history,
        base,
        model_id,
        compare_on,
        system,
        temperature,
        top_p,
        tokens,
        penalty,
        request: gr.Request,
    ):
        """The page's chat: the reply streamed into the history, Send and Stop with it;
        Stop ends it, Clear ends it and empties both panes."""
        session = request.session_hash
        interruptions.start(session)
        sampling = (temperature, top_p, tokens, penalty)
        replies = _respond(
            studio,
            text,
            history,
            base,
            model_id,
            compare_on,
            system,
            *sampling,
            stopped=lambda: session in interruptions.stopped,
        )
        try:
            for reply in replies:
                yield ([], [], *reply[2:]) if session in interruptions.cleared else reply
        finally:
            interruptions.end(session)

    def chat_api(
        message: str,
        history: list,
        base_history: list,
        model_id: str,
        compare: bool = False,
        system: str = "",
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        repetition_penalty: float = 1.0,
    ) -> tuple[list, list, str]:
        """Chat with ``model_id``: (history, the base's history when comparing, the message
        box), streamed as the page's Send does."""
        sampling = (temperature, top_p, max_tokens, repetition_penalty)
        replies = _respond(
            studio, message, history, base_history, model_id, compare, system, *sampling
        )
        for history, base_history, *_box_and_buttons in replies:
            yield history, base_history, ""

    return respond, chat_api


def build(studio: Studio, page: gr.Blocks) -> ChatTab:
    ui = layout(studio)
    interruptions = Interruptions()
    respond, chat_api = _handlers(studio, interruptions)
    inputs = [ui.message, ui.chat, ui.base_chat, ui.model, ui.compare, ui.system, *ui.settings]
    private = {"api_visibility": "private"}
    # one listener for Send and Enter: "once" ignores both while its reply streams
    gr.on(
        [ui.send.click, ui.message.submit],
        respond,
        inputs,
        [ui.chat, ui.base_chat, ui.message, ui.send, ui.stop],
        trigger_mode="once",
        **private,
        **CHAT,
    )
    gr.api(chat_api, api_name="chat", **CHAT)  # the same chat for gradio_client, no buttons
    # Stop ends the reply where it is, Clear ends it and empties both panes: the reply
    # sees them at its next update (see Interruptions); with no reply going, Clear clears

    def stop(request: gr.Request):
        interruptions.stop(request.session_hash)

    def clear(request: gr.Request):
        interruptions.stop(request.session_hash, clear=True)
        return [], []

    ui.stop.click(stop, None, None, **private, **QUICK)
    ui.clear.click(clear, None, [ui.chat, ui.base_chat], **private, **QUICK)
    ui.compare.change(
        lambda on: gr.update(visible=on), ui.compare, ui.base_chat, **private, **QUICK
    )
    picked = [ui.chat, ui.base_chat, *ui.settings, ui.defaults]
    ui.model.change(lambda m: _picked(studio, m), ui.model, picked, **private, **QUICK)

    def opening():  # the page may be older than the models: their list as it is now
        return gr.update(choices=studio.chat_choices(), value=studio.preferred_chat_model())

    page.load(opening, None, ui.model, **private, **QUICK)
    return ChatTab(model=ui.model)


# the sampling settings' fields, in the order of generation_config.json's names
SETTINGS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")


def _picked(studio: Studio, model_id: str | None) -> tuple:
    """The panes named after the models they answer with, and the sampling settings set to
    the model's own defaults (generation_config.json), where it has them."""
    if not model_id:
        return (gr.skip(),) * 7
    try:
        entry = studio.registry.get(model_id)
        is_adapter = entry.kind == "adapter" and entry.base_id
        base = studio.registry.get(entry.base_id) if is_adapter else None
    except StudioError:
        return (gr.skip(),) * 7
    found = generation_defaults(base_path(entry)) if entry.available else {}
    named = ", ".join(f"{k} {v:g}" for k, v in found.items())
    return (
        gr.update(label=entry.display_name),
        gr.update(label=base.display_name if base else "Base model"),
        *(gr.update(value=found[k]) if k in found else gr.skip() for k in SETTINGS),
        f"Defaults from the model's generation_config.json: {named}." if named else "",
    )
