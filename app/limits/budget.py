"""How many requests may go, and when: the GCRA parameters that keep a window under a limit.

GCRA (the generic cell rate algorithm) is a token bucket stored as one timestamp, the
theoretical arrival time `tat` of the next request. A request arriving at `now` conforms
when `max(tat, now) + interval - burst * interval <= now`; it then moves `tat` on to
`max(tat, now) + interval`. From an idle bucket `burst` requests go at once, then one
every `interval`.

The bound proved here (and tested in tests/unit/test_budget.py): after a request at t1,
the k-th next one conforms no earlier than t1 + (k + 1 - burst) * interval, so a closed
span of W seconds holds at most `burst + floor(W / interval)` requests. `Budget.keeping`
picks the interval just over W / (limit - burst + 1), which makes that `limit`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

MICROSECOND = timedelta(microseconds=1)  # Postgres' resolution: the interval is a whole number


class Priority(enum.Enum):
    """Who asks. Placing a call may queue for a place; background work takes only spare ones."""

    PLACING = "placing"
    BACKGROUND = "background"


class LimitReached(Exception):
    """No place under the limit within the time a caller may wait."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"limit reached; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class RequestLimiter(Protocol):
    """What the Exotel client needs for a lookup: a place for one request, or LimitReached.
    A connect request's place is taken by the statement that stores its call
    (`FleetLimiter.placing`, app/calls/service.py), and given to the client with it."""

    async def acquire(self) -> None: ...


@dataclass(frozen=True)
class Budget:
    """GCRA parameters that never let a `window` hold more than `limit` requests."""

    limit: int
    window: timedelta
    interval: timedelta
    burst: int
    # The part of the burst background work may use; the rest is kept for placing calls,
    # so background work goes only while the bucket has that much room to spare.
    background_burst: int

    @classmethod
    def keeping(
        cls,
        limit: int,
        *,
        window: timedelta = timedelta(seconds=60),
        send_slack: timedelta = timedelta(0),
        burst_share: float = 0.1,
        background_share: float = 0.5,
    ) -> Budget:
        """At most `limit` requests in any `window`, even when each request leaves up to
        `send_slack` after its place was granted (so the places granted in any span of
        `window + send_slack` are counted against the limit)."""
        if limit < 1:
            raise ValueError("a limit allows at least one request")
        burst = max(1, int(limit * burst_share))
        span = (window + send_slack) // MICROSECOND
        interval = timedelta(microseconds=span // (limit - burst + 1) + 1)
        background_burst = max(1, math.floor(burst * background_share))
        return cls(limit, window, interval, burst, background_burst)

    def tolerance(self, priority: Priority) -> timedelta:
        """How far ahead of now `tat` may be, plus one interval, for a request to conform."""
        burst = self.burst if priority is Priority.PLACING else self.background_burst
        return self.interval * burst

    def most_in(self, span: timedelta) -> int:
        """The most requests GCRA lets through in a closed span of this length."""
        return self.burst + span // self.interval

    @property
    def per_minute(self) -> float:
        """The sustained rate, once the burst is spent."""
        return timedelta(minutes=1) / self.interval
