"""`python -m tests.limits.hammer URL KEY SECONDS`: one process asking one shared limiter
for places as fast as it can, 8 at a time; prints the wall-clock times it got them, as JSON.

It prints `ready` once started and waits for a line on stdin before it begins, so that
processes which took different times to start all begin together.

The budget is small and its window short (15 in any 3 s), so a few seconds cross
several windows.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from datetime import timedelta

from app.db import ConnectionPool
from app.limits.budget import Budget, LimitReached, Priority
from app.limits.gcra import Buckets, FleetLimiter

BUDGET = Budget.keeping(15, window=timedelta(seconds=3), send_slack=timedelta(seconds=0.5))
CONCURRENCY = 8
PAUSE_S = 0.2
MAX_WAIT_S = 0.5


async def hammer(url: str, key: str, seconds: float) -> list[float]:
    pool = ConnectionPool(url, size=CONCURRENCY)
    buckets = Buckets(pool, BUDGET)
    limiter = FleetLimiter(buckets, key, max_wait_s=MAX_WAIT_S)
    granted: list[float] = []
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    deadline = time.monotonic() + seconds

    async def ask() -> None:
        while time.monotonic() < deadline:
            try:
                if random.random() < 1 / 3:
                    await limiter.acquire()  # a lookup
                else:
                    # A connect request, whose place the statement storing its call reserves.
                    await limiter.placing(
                        await buckets.reserve(
                            key, Priority.PLACING, max_wait=timedelta(seconds=MAX_WAIT_S)
                        )
                    )
                granted.append(time.time())
            except LimitReached:
                pass
            # Callers come back at random moments, not all in step with the places
            # freeing up (which would let one process's callers take every place).
            await asyncio.sleep(random.uniform(0, PAUSE_S))

    await asyncio.gather(*(ask() for _ in range(CONCURRENCY)))
    await pool.close()
    return granted


if __name__ == "__main__":
    url, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(json.dumps(asyncio.run(hammer(url, key, seconds))))
