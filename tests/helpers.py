"""Small builders of test data."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def colour_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """Chat rows with one fixed answer pattern: easy to learn, so loss falls in an epoch."""
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the sky number {i}?"},
                {"role": "assistant", "content": f"The sky is {rng.choice(['red', 'blue'])}."},
            ]
        }
        for i in range(n)
    ]


def colour_preferences(n: int = 64) -> list[dict]:
    """Preference rows with one clear preference (blue over red): DPO learns it in a few
    steps, and the validation rows hold the same preference."""
    return [
        {
            "prompt": f"What colour is the sky number {i}?",
            "chosen": "The sky is blue.",
            "rejected": "The sky is red.",
        }
        for i in range(n)
    ]


def lora_studio(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``lora-studio`` command on the studio at ``home``."""
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    command = [sys.executable, "-m", "webapp", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lora_studio_server(home: Path, *args: str, probe: str = "/v1/models", timeout: float = 90):
    """Run the real ``lora-studio`` command on a free port until the block ends.

    Yields (process, base URL, log file) once ``probe`` answers. Output goes to a file, not a
    pipe: a pipe nobody drains would block a server that logs a lot.
    """
    port = free_port()
    log = home / f"lora-studio-{port}.log"
    env = {**os.environ, "LORA_STUDIO_HOME": str(home), "HF_HUB_CACHE": str(home / "no-hub")}
    env.pop("LD_PRELOAD", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "webapp", *args, "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(url + probe, timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    message = f"lora-studio did not start: {log.read_text()}"
                    raise RuntimeError(message) from None
                time.sleep(0.2)
        yield process, url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` for the block: a real full disk, on demand.

    Mounting needs root, which CI has; elsewhere the test is skipped with the reason.
    """
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def grow_filesystem(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the page's dropdown labelled ``label``."""
    page.get_by_label(label, exact=True).first.click()
    page.get_by_role("option", name=option).first.click()


def fill_number(page, label: str, value: str) -> None:
    """Type ``value`` into the page's field labelled ``label`` and leave it (the edit event)."""
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Tab")


def studio_with_toy(home: Path, toy_model: Path):
    """A studio at ``home`` whose models folder holds the toy llama as ``toy``."""
    from core.settings import Settings

    settings = Settings.from_env(home).ensure()
    shutil.copytree(toy_model, settings.models / "toy")
    return settings


def sigkill_at(run, step: int, timeout: float = 180) -> None:
    """SIGKILL ``run``'s worker once it reports ``step`` (or later), and wait for its end."""
    for event in run.follow(timeout=timeout):
        if getattr(event, "step", 0) >= step:
            os.kill(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=60)
