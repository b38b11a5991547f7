"""Per-API-client limit on placing calls: every placed call costs money (OWASP API4).

A client may place CALLS_PER_MINUTE_PER_CLIENT calls in any 60 seconds, counted by the
whole fleet: the buckets are rows in Postgres (app/limits), shared by every replica.
Nothing waits: over the limit, the answer is 429 with Retry-After. The place is taken
by the statement that stores the call (app/calls/service.py), so a request refused as
invalid costs none.
"""

from __future__ import annotations

from app.errors import Problem, problem_response


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
