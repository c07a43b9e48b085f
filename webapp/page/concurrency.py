"""What may run at once on a page several people share.

Gradio runs one call per event listener at a time, across every browser, unless told
otherwise: a run followed in one browser would make every other browser's same event wait
behind it (the page would show queue badges instead of the run). So every event of the page
takes one of these policies, by what it costs the machine:

- ``WATCH``: following a run, loading the page, the timers' ticks, a refused start: they wait
  on events or read small state, so any number may run at once;
- ``QUICK``: small updates of the page's own state (a tab, a checkbox): any number;
- ``CHECK``: a dataset check tokenizes its sample and plans memory: CPU work, a few at once;
- ``CHAT``: a chat streams from the engine, which serves one generation at a time by design
  (one base in memory); the calls queue in the engine, where each says it is waiting for the
  model, not in Gradio, where it would show nothing;
- ``HEAVY``: exports, fusing, quantizing, imports, fetching the demo model: minutes of CPU
  and disk each, two at a time across the page.

Starting a run is ``WATCH`` too: the runs lock lets one run start, and a second start is
refused at once with the reason, instead of waiting behind the first run's whole stream.
``tests/test_concurrency.py`` checks that no event of the page is left to Gradio's default.
"""

from __future__ import annotations

WATCH = {"concurrency_limit": None}
QUICK = {"concurrency_limit": None}
CHECK = {"concurrency_limit": 4, "concurrency_id": "check"}
CHAT = {"concurrency_limit": 32, "concurrency_id": "chat"}
HEAVY = {"concurrency_limit": 2, "concurrency_id": "heavy"}
# what the queue gives an event that names none (none of the page's should rely on it)
DEFAULT_LIMIT = 4
