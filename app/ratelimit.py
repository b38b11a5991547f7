"""Per-API-client limit on placing calls: every placed call costs money (OWASP API4).

A client may place CALLS_PER_MINUTE_PER_CLIENT calls in any 60 seconds, counted by the
whole fleet: the buckets are rows in Postgres (app/limits), shared by every replica.
Nothing waits here: over the limit, the answer is 429 with Retry-After.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import Writer
from app.config import ApiClient
from app.errors import Problem, problem_response
from app.limits.gcra import ClientLimiter
from app.metrics import RATE_LIMITED


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
    limiter: ClientLimiter = request.app.state.call_limiter
    wait_s = await limiter.try_acquire(client.name)
    if wait_s > 0:
        RATE_LIMITED.labels(client.name).inc()
        raise rate_limited(limiter.per_minute, wait_s)
    return client


LimitedWriter = Annotated[ApiClient, Depends(_within_limit)]
