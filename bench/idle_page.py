"""What an open page costs the machine while nothing happens: the server's CPU with no page,
then with one idle page open (and the browser's own), over the same window.

On a 2-core machine that trains, a page left open takes its share from the training run: the
page polls the server (a timer for the pickers, one for runs started elsewhere), and each
poll is a round trip through Gradio's queue. Run with the studio's venv:

    python bench/idle_page.py [--seconds 30]

It starts a real ``lora-studio`` on a free loopback port over a temporary studio with the toy
model, and Debian's Chromium through Playwright. CPU is read from /proc (user + system time
of the server process, and of every Chromium process), as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.models.toy import build_toy_llama  # noqa: E402
from tests.helpers import lora_studio_server  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (the ones still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def chromium_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "chromium"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def share(pids_of, seconds: float) -> float:
    before, start = cpu_seconds(pids_of()), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pids_of()) - before) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="idle-page-"))
    build_toy_llama(home / "models" / "toy")
    try:
        with lora_studio_server(home) as (process, url, _), sync_playwright() as p:
            server = lambda: [process.pid]  # noqa: E731
            time.sleep(5)  # start-up done
            alone = share(server, args.seconds)
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_role("tab", name="Train").wait_for()
            time.sleep(10)  # the page's load events done
            both = lambda: [process.pid, *chromium_pids()]  # noqa: E731
            before_server, before_all = cpu_seconds(server()), cpu_seconds(both())
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            with_page = (cpu_seconds(server()) - before_server) / elapsed
            browser_share = (cpu_seconds(both()) - before_all) / elapsed - with_page
            browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"server, no page:      {100 * alone:5.1f}% of a core")
    print(f"server, one idle page: {100 * with_page:5.1f}% of a core")
    print(f"the browser (Chromium): {100 * browser_share:5.1f}% of a core")


if __name__ == "__main__":
    main()
