"""The one exception family for problems a person has to act on."""

from __future__ import annotations


class StudioError(Exception):
    """A problem explained for a person: what went wrong, and what to do about it.

    Core code raises it; the CLI prints it without a traceback, the page shows it as a
    message and the API turns it into a JSON error.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
