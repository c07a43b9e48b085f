"""Long page actions (a download, a fuse and export) in a thread, reported as they go."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from core.errors import StudioError


def with_progress(
    work: Callable[[Callable[[str], None]], Any], every: float = 0.5
) -> Iterator[tuple[list[str], Any, StudioError | None]]:
    """Run ``work(progress)`` in a thread; yield (steps so far, None, None) every ``every``
    seconds while it runs, then (steps, its result, None) or (steps, None, the StudioError).
    Other exceptions propagate: they are bugs, not a person's problem."""
    steps: list[str] = []
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work(steps.append)
        except StudioError as exc:
            outcome["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the page's thread below
            outcome["crash"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=every)
        yield list(steps), None, None
    if "crash" in outcome:
        raise outcome["crash"]
    yield list(steps), outcome.get("result"), outcome.get("error")
