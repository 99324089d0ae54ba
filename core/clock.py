"""One clock object, injected everywhere, so tests control time without sleeping.

`SystemClock` reads the real wall and monotonic clocks; `ManualClock` only moves when a test
calls `advance()`. Code asks the clock, never `time`/`datetime` directly.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for ages, rates and timeouts)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock tests move by hand: `clock.advance(1.5)` moves both faces by 1.5 s."""

    def __init__(self, start: datetime | None = None, mono: float = 1000.0) -> None:
        self._now = start or datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
        self._mono = mono

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: datetime) -> None:
        if when < self._now:
            raise ValueError("a clock does not go backwards")
        self._mono += (when - self._now).total_seconds()
        self._now = when


SYSTEM_CLOCK = SystemClock()
