"""Per-API-client limit on placing calls: every placed call costs money (OWASP API4).

A token bucket per client, in this process: a client may place
CALLS_PER_MINUTE_PER_CLIENT calls a minute, in bursts of up to that many. With several
processes, each keeps its own buckets, so divide the setting between them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Annotated

from aiolimiter import AsyncLimiter
from fastapi import Depends, Request

from app.auth import Writer
from app.config import ApiClient
from app.errors import Problem, problem_response
from app.metrics import RATE_LIMITED


class RateLimiter:
    """One aiolimiter leaky bucket per client, as for Exotel itself, but never waiting."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: defaultdict[str, AsyncLimiter] = defaultdict(
            lambda: AsyncLimiter(per_minute, time_period=60)
        )

    async def try_acquire(self, client: str) -> int:
        """Take a place for one call: 0 if there was one, else seconds to wait for one."""
        bucket = self._buckets[client]
        if not bucket.has_capacity():
            # A full bucket frees a place every 60 / per_minute seconds at the latest.
            return math.ceil(60 / self.per_minute)
        await bucket.acquire()  # returns at once: there is capacity
        return 0


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


async def _within_limit(request: Request, client: Writer) -> ApiClient:
    limiter: RateLimiter = request.app.state.call_limiter
    wait_s = await limiter.try_acquire(client.name)
    if wait_s > 0:
        RATE_LIMITED.labels(client.name).inc()
        raise rate_limited(limiter.per_minute, wait_s)
    return client


LimitedWriter = Annotated[ApiClient, Depends(_within_limit)]
