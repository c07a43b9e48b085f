"""Stop sequences over a streamed reply: a stop string may arrive split across pieces, so the
text that might begin one is held back until it is known not to."""

from __future__ import annotations


class StopScanner:
    """Cuts streamed text at the first stop string, holding back what might begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        keep = max(len(s) for s in self.stops) - 1
        cut = max(len(self.held) - keep, 0)
        out, self.held = self.held[:cut], self.held[cut:]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
