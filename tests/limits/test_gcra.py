"""The fleet's limiter in Postgres: the budget holds for any mix of work, placing first.

The simulated-clock tests replay minutes of traffic against the production statement;
the multi-process test runs it for real, several processes on one bucket.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import random
import sys
import time
from datetime import timedelta

import pytest

from app.db import PROJECT_ROOT, ConnectionPool
from app.limits.budget import Budget, LimitReached, Priority
from app.limits.gcra import (
    EXOTEL_SEND_SLACK,
    MAX_QUEUE_S,
    MIN_POLL_S,
    Buckets,
    FleetLimiter,
)
from tests.limits import hammer
from tests.limits.conftest import SimulatedClock

KEY = "exotel:simulated"
MINUTE_S = 60.0


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The most of `times` that one closed window of `window_s` holds."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] < at - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def arrivals(rng: random.Random, per_minute: float, start_s: float, end_s: float) -> list[float]:
    times, at = [], start_s
    while (at := at + rng.expovariate(per_minute / MINUTE_S)) < end_s:
        times.append(at)
    return times


async def test_minutes_of_mixed_traffic_never_put_more_than_the_budget_in_a_minute(
    simulated_pool: ConnectionPool, clock: SimulatedClock
) -> None:
    budget = Budget.keeping(200, send_slack=EXOTEL_SEND_SLACK)
    buckets = Buckets(simulated_pool, budget)
    rng = random.Random(12)
    # Overload (placing at twice the budget, with bursts, and background work), then a
    # steady minute and a half under it, then background work alone.
    placing = arrivals(rng, 300, 0, 90) + [10.0] * 60 + [70.0] * 60 + arrivals(rng, 90, 90, 160)
    background = arrivals(rng, 60, 0, 160) + arrivals(rng, 150, 160, 200)
    queue = [(at, n, Priority.PLACING, at) for n, at in enumerate(placing)]
    queue += [(at, -n - 1, Priority.BACKGROUND, at) for n, at in enumerate(background)]
    heapq.heapify(queue)
    sent: dict[Priority, list[float]] = {Priority.PLACING: [], Priority.BACKGROUND: []}
    refused = {Priority.PLACING: 0, Priority.BACKGROUND: 0}
    slack_s = EXOTEL_SEND_SLACK.total_seconds()

    while queue:
        at, n, priority, asked_at = heapq.heappop(queue)
        clock.set(clock.start + timedelta(seconds=at))
        may_wait = MAX_QUEUE_S if priority is Priority.PLACING else 0
        reservation = await buckets.reserve(KEY, priority, max_wait=timedelta(seconds=may_wait))
        if reservation.granted:
            # Each request leaves when its place comes, or up to the slack later.
            leaves_at = at + max(0.0, reservation.wait_s) + rng.choice([0.0, slack_s])
            sent[priority].append(leaves_at)
        elif priority is Priority.BACKGROUND and at + reservation.wait_s - asked_at <= MAX_QUEUE_S:
            heapq.heappush(queue, (at + max(reservation.wait_s, MIN_POLL_S), n, priority, asked_at))
        else:
            refused[priority] += 1

    everything = sent[Priority.PLACING] + sent[Priority.BACKGROUND]
    assert most_in_any_window(everything, MINUTE_S) <= 200
    # The test means something only if the budget was used to the full.
    assert most_in_any_window(everything, MINUTE_S) >= 185
    # Placing goes first while there is more of it than the budget ...
    overloaded = [t for t in sent[Priority.BACKGROUND] if 15 <= t <= 90]
    assert len(overloaded) < 0.05 * len([t for t in sent[Priority.PLACING] if 15 <= t <= 90])
    assert refused[Priority.PLACING] > 0
    # ... and background work gets the room that placing leaves.
    assert len([t for t in sent[Priority.BACKGROUND] if t >= 160]) >= 0.95 * len(
        [t for t in background if t >= 160]
    )
    assert refused[Priority.BACKGROUND] < len(background) // 2


async def test_placing_queues_for_a_place_and_background_needs_room_to_spare(
    simulated_pool: ConnectionPool, clock: SimulatedClock
) -> None:
    budget = Budget.keeping(200, send_slack=EXOTEL_SEND_SLACK)
    buckets = Buckets(simulated_pool, budget)
    interval_s = budget.interval.total_seconds()

    # Background may use half the burst of an idle bucket, no more.
    for _ in range(budget.background_burst):
        assert (await buckets.reserve(KEY, Priority.BACKGROUND)).granted
    waiting = await buckets.reserve(KEY, Priority.BACKGROUND)
    assert not waiting.granted
    assert waiting.wait_s == pytest.approx(interval_s)
    # Placing takes the rest of the burst at once, then queues one interval apart.
    for _ in range(budget.burst - budget.background_burst):
        assert (await buckets.reserve(KEY, Priority.PLACING)).wait_s <= 0
    queued = [
        await buckets.reserve(KEY, Priority.PLACING, max_wait=timedelta(seconds=2))
        for _ in range(3)
    ]
    assert all(reservation.granted for reservation in queued)
    assert [r.wait_s for r in queued] == pytest.approx([interval_s * n for n in (1, 2, 3)])
    # Without leave to wait, placing is refused and told how long until a place is free.
    now_only = await buckets.reserve(KEY, Priority.PLACING)
    assert not now_only.granted
    assert now_only.wait_s == pytest.approx(interval_s * 4)
    # Once a full burst's time has passed, the bucket is idle again.
    clock.advance(budget.burst * interval_s + 4 * interval_s)
    assert (await buckets.reserve(KEY, Priority.BACKGROUND)).wait_s <= 0


async def test_a_caller_waits_a_few_seconds_at_most_then_hears_when_to_retry(
    pool: ConnectionPool,
) -> None:
    # 2 a second after a burst of 1: the third at once would wait a second, too long.
    budget = Budget.keeping(2, window=timedelta(seconds=1))
    buckets = Buckets(pool, budget)
    limiter = FleetLimiter(buckets, KEY, max_wait_s=0.3)

    async def place() -> None:
        await limiter.placing(
            await buckets.reserve(KEY, Priority.PLACING, max_wait=timedelta(seconds=0.3))
        )

    await place()
    with pytest.raises(LimitReached) as placing:
        await place()
    with pytest.raises(LimitReached) as background:
        await limiter.acquire()

    assert placing.value.retry_after_s == 1
    assert background.value.retry_after_s == 1


async def test_processes_sharing_one_bucket_keep_its_budget_together(database_url: str) -> None:
    processes = 4
    started = time.time()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.limits.hammer",
            database_url,
            f"test:{os.getpid()}:{started}",
            "5",
            cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await worker.stdout.readline() == b"ready\n"
    outputs = await asyncio.gather(*(worker.communicate(b"go\n") for worker in workers))
    assert [worker.returncode for worker in workers] == [0] * processes
    per_process = [json.loads(stdout) for stdout, _ in outputs]
    granted = [at for times in per_process for at in times]
    window_s = hammer.BUDGET.window.total_seconds()

    assert all(times for times in per_process), "every process got places"
    assert most_in_any_window(granted, window_s) <= hammer.BUDGET.limit
    # Close to the budget: the processes were held back by each other, not idle.
    span_s = max(granted) - min(granted)
    assert len(granted) >= 0.8 * (
        hammer.BUDGET.burst + span_s / hammer.BUDGET.interval.total_seconds()
    )
