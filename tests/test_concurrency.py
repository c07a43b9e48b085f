"""What may run at once on a shared page (webapp/page/concurrency.py): every event of the real
page says so itself, instead of Gradio's default of one call at a time across all browsers."""

from __future__ import annotations

from tests.helpers import studio_with_toy


def test_no_event_of_the_page_is_left_to_gradios_default(tmp_path, toy_model):
    from webapp.page.app import build_page
    from webapp.page.studio import Studio

    studio = Studio.open(studio_with_toy(tmp_path / "home", toy_model))
    try:
        page = build_page(studio)
        functions = list(page.fns.values())
        assert len(functions) > 30  # the whole page: every tab, panel and timer
        left = [f.name for f in functions if f.concurrency_limit == "default"]
        assert not left, f"events left to the default (one at a time everywhere): {left}"
        limits = {f.name: f.concurrency_limit for f in functions}
        # following a run and starting one never wait behind another browser's call
        assert limits["train"] is None and limits["show_current"] is None
        chat = next(f for f in functions if f.api_name == "chat")
        assert chat.concurrency_limit == 32 and limits["check_dataset"] == 4
    finally:
        studio.close()
