"""The last minutes of a pool, one point a second, for the ``/pool`` dashboard.

Checkout waits and hold times arrive through the monitor's observers and are summed
into the current second (count, total, maximum: three additions per event). Once a
second a sampler closes that second: it reads the pool's gauges and counters from a
snapshot and appends one point to a ring buffer of ``window`` points. Nothing is kept
per request, so memory is fixed and a scrape-free app pays three additions per checkout.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from ..pool.monitor import PoolMonitor

__all__ = ["PoolHistory", "sample_every_second"]

# Sample a little after the second turns, so that a timer firing early stays in it.
_MARGIN_S = 0.005

# The series of a point, in the order of the JSON's columns.
SERIES = (
    "t",
    "checked_out",
    "overflow",
    "idle",
    "waiting",
    "checkouts",
    "timeouts",
    "wait_count",
    "wait_avg_ms",
    "wait_max_ms",
    "hold_count",
    "hold_avg_ms",
    "hold_max_ms",
)


@dataclass(slots=True)
class _Durations:
    """Durations (seconds) seen in the current second."""

    count: int = 0
    total: float = 0.0
    peak: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.peak:
            self.peak = seconds

    def take(self) -> tuple[int, float | None, float | None]:
        """Return (count, mean ms, max ms) and start over; None means no event."""
        count, total, peak = self.count, self.total, self.peak
        self.count, self.total, self.peak = 0, 0.0, 0.0
        if not count:
            return 0, None, None
        return count, round(total / count * 1000, 3), round(peak * 1000, 3)


class PoolHistory:
    """Per-second points of one pool over the last *window* seconds.

    Args:
        monitor: The pool to follow; observers are added to it.
        window: Points kept (seconds of history).
    """

    def __init__(self, monitor: PoolMonitor, window: int = 300) -> None:
        self.monitor = monitor
        self.window = window
        self._points: deque[tuple[float | int | None, ...]] = deque(maxlen=window)
        self._waits = _Durations()
        self._holds = _Durations()
        # Counters since the monitor started: the first point reports what happened
        # after this history was created, not everything since start-up.
        start = monitor.snapshot()
        self._last_checkouts, self._last_timeouts = start.checkouts_total, start.timeouts_total
        monitor.on_wait(self._waits.add)
        monitor.on_hold(self._holds.add)

    def sample(self, now: float | None = None) -> None:
        """Close the current second: append its point, stamped *now* (epoch seconds)."""
        snapshot = self.monitor.snapshot()
        checkouts, timeouts = snapshot.checkouts_total, snapshot.timeouts_total
        new_checkouts = checkouts - self._last_checkouts
        new_timeouts = timeouts - self._last_timeouts
        self._last_checkouts, self._last_timeouts = checkouts, timeouts
        self._points.append(
            (
                round(time.time() if now is None else now, 3),
                snapshot.checked_out,
                snapshot.overflow,
                snapshot.idle,
                snapshot.waiting,
                new_checkouts,
                new_timeouts,
                *self._waits.take(),
                *self._holds.take(),
            )
        )

    def as_dict(self) -> dict[str, object]:
        """The pool now and its points, as JSON-ready columns (one list per series)."""
        snapshot = self.monitor.snapshot()
        columns = list(zip(*self._points, strict=True)) if self._points else [()] * len(SERIES)
        return {
            "name": snapshot.name,
            "size": snapshot.size,
            "max_overflow": snapshot.max_overflow,
            "capacity": snapshot.capacity,
            "now": {
                "checked_out": snapshot.checked_out,
                "overflow": snapshot.overflow,
                "idle": snapshot.idle,
                "waiting": snapshot.waiting,
                "checkouts_total": snapshot.checkouts_total,
                "timeouts_total": snapshot.timeouts_total,
                "connects_total": snapshot.connects_total,
                "invalidations_total": snapshot.invalidations_total,
                "leaks_total": snapshot.leaks_total,
            },
            "series": {name: list(column) for name, column in zip(SERIES, columns, strict=True)},
        }


async def sample_every_second(histories: list[PoolHistory]) -> None:
    """Sample *histories* just after each whole second of the wall clock, until cancelled."""
    last = 0.0
    while True:
        await asyncio.sleep(1.0 - time.time() % 1.0 + _MARGIN_S)
        now = float(math.floor(time.time()))
        if now == last:  # woke early: never stamp one second twice
            continue
        last = now
        for history in histories:
            history.sample(now)
