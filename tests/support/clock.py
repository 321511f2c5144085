"""The injected clock tests hand to ``create_app(clock=...)``: it stands still until moved."""

from __future__ import annotations

from datetime import UTC, datetime

START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = START):
        self.now = start

    def __call__(self) -> datetime:
        return self.now
