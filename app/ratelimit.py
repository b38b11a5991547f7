"""Per-API-client limit on placing calls: every placed call costs money (OWASP API4).

A token bucket per client, in this process: a client may place
CALLS_PER_MINUTE_PER_CLIENT calls a minute, in bursts of up to that many. With several
processes, each keeps its own buckets, so divide the setting between them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from app.auth import Writer
from app.config import ApiClient
from app.errors import Problem, problem_response
from app.metrics import RATE_LIMITED


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._per_second = per_minute / 60
        self._clock = clock
        # client -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, client: str) -> float:
        """Take one token; 0 if there was one, else the seconds until there will be."""
        now = self._clock()
        tokens, counted_at = self._buckets.get(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - counted_at) * self._per_second)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self._per_second
        self._buckets[client] = (tokens - 1, now)
        return 0.0


def rate_limited(per_minute: int, retry_after_s: int) -> Problem:
    return Problem(
        429,
        "rate-limited",
        f"This API key may place {per_minute} calls a minute; retry after {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


RATE_LIMITED_RESPONSE = problem_response(
    "Too many calls placed with this API key; see Retry-After",
    rate_limited(600, 1),
    headers={"Retry-After": "Seconds until the next call will be accepted"},
)


def _within_limit(request: Request, client: Writer) -> ApiClient:
    limiter: RateLimiter = request.app.state.call_limiter
    wait_s = limiter.acquire(client.name)
    if wait_s > 0:
        RATE_LIMITED.labels(client.name).inc()
        raise rate_limited(limiter.per_minute, max(1, math.ceil(wait_s)))
    return client


LimitedWriter = Annotated[ApiClient, Depends(_within_limit)]
