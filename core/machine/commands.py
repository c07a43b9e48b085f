"""External commands the studio runs (``pip download``, ``mlx_lm fuse``): bounded in time,
their failures explained with the end of what they printed."""

from __future__ import annotations

import subprocess

from core.errors import StudioError


def last_lines(text: str, count: int) -> str:
    """The last ``count`` lines of a command's output: where the reason for a failure is."""
    return "\n".join(text.rstrip().splitlines()[-count:])


def run_tool(command: list[str], *, what: str, timeout: float, hint: str | None = None) -> str:
    """Run ``command``; its stdout, or a StudioError naming ``what`` failed and why."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise StudioError(
            f"{what} took longer than {timeout:.0f} s and was stopped", hint
        ) from None
    except OSError as exc:
        raise StudioError(f"{what} could not start: {exc}", hint) from None
    if done.returncode != 0:
        raise StudioError(f"{what} failed:\n{last_lines(done.stderr, 5)}", hint)
    return done.stdout
