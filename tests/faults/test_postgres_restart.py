"""A burst of status callbacks while Postgres restarts: none acknowledged and lost.

Every callback must be either stored (a `call_events` row) or answered non-2xx, so
that Exotel retries it. Then, as Exotel does, the failed ones are retried twice, and
every callback must end stored and applied.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import httpx
import psycopg

from app.calls.tokens import CallbackTokens
from bench.ingest import callback_requests, seed_calls
from tests.faults.harness import (
    CALLBACK_SECRET,
    FINAL,
    PrivatePostgres,
    Report,
    callbridge,
    sized,
)

CONCURRENCY = 32
EXOTEL_RETRIES = 2
RETRY_PAUSE_S = 1.0
APPLY_TIMEOUT_S = 30.0


async def test_callbacks_during_a_postgres_restart_are_stored_or_refused(
    private_postgres: PrivatePostgres, report: Report
) -> None:
    count = sized(300, 2000)
    database = await asyncio.to_thread(private_postgres.database, "faults_callbacks")
    calls = await asyncio.to_thread(seed_calls, database, count)
    requests = callback_requests(calls, CallbackTokens(CALLBACK_SECRET))
    server = callbridge(database, "http://127.0.0.1:9", "callbacks", {"run_jobs": "false"})
    await asyncio.to_thread(server.start)
    outcomes: list[int | str] = ["not sent"] * count
    restart_after = count // 3
    answered = 0
    restart: asyncio.Task[float] | None = None
    during_restart: Counter[int | str] = Counter()
    try:
        async with httpx.AsyncClient(
            base_url=server.url,
            timeout=20,
            limits=httpx.Limits(max_connections=CONCURRENCY),
        ) as http:

            async def post(index: int) -> int | str:
                request = requests[index]
                try:
                    response = await http.post(
                        request.target, content=request.body, headers=dict(request.headers)
                    )
                except httpx.HTTPError as exc:
                    return type(exc).__name__
                return response.status_code

            pending = iter(range(count))

            async def sender() -> None:
                nonlocal answered, restart
                for index in pending:
                    outcomes[index] = await post(index)
                    answered += 1
                    if restart is not None and not restart.done():
                        during_restart[outcomes[index]] += 1
                    if answered == restart_after:
                        restart = asyncio.create_task(asyncio.to_thread(private_postgres.restart))

            await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
            assert restart is not None
            restart_s = await restart

            acknowledged = {i for i, outcome in enumerate(outcomes) if outcome == 200}
            stored = _stored_calls(database)
            lost = [calls[i].id for i in acknowledged if calls[i].id not in stored]
            first = Counter(outcomes)

            # Exotel's way: a callback not answered 2xx is tried twice more.
            retries = 0
            for _ in range(EXOTEL_RETRIES):
                failed = [i for i, outcome in enumerate(outcomes) if outcome != 200]
                if not failed:
                    break
                await asyncio.sleep(RETRY_PAUSE_S)
                retries += len(failed)
                for index in failed:
                    outcomes[index] = await post(index)
            # Acknowledged means stored; applied follows, once the applier is past the
            # outage (it pauses ERROR_PAUSE_S after each failed attempt).
            drain_s = await asyncio.to_thread(_applied_within, database, APPLY_TIMEOUT_S)
            assert server.process is not None
            alive = server.process.poll() is None
    finally:
        await asyncio.to_thread(server.stop)

    stored = _stored_calls(database)
    statuses = _call_statuses(database)
    report.add(
        f"tried: {count} terminal callbacks (one per call), concurrency {CONCURRENCY}; "
        f"Postgres restarted (immediate shutdown) after {restart_after} answers, "
        f"down and up again in {restart_s:.1f} s"
    )
    report.add(f"answers while it restarted: {dict(during_restart)}")
    report.add(f"first answers: {dict(first)}")
    report.add(f"acknowledged (2xx) but not stored: {len(lost)}")
    report.add(f"every stored callback applied {drain_s:.1f} s after the last answer")
    report.add(
        f"retried like Exotel ({EXOTEL_RETRIES} more tries): {retries} requests; "
        f"final answers {dict(Counter(outcomes))}; stored {len(stored)} of {count}; "
        f"calls in a final status: {sum(s in FINAL for s in statuses.values())}"
    )
    assert not lost, f"acknowledged but lost: {lost[:5]}"
    assert alive, "the service died"
    assert all(outcome == 200 for outcome in outcomes)
    assert stored == {call.id for call in calls}
    assert all(status in FINAL for status in statuses.values())


def _applied_within(database: str, timeout_s: float) -> float:
    """Seconds until no stored callback waits to be applied (inf past `timeout_s`)."""
    started = time.monotonic()
    with psycopg.connect(database, autocommit=True) as conn:
        while time.monotonic() - started < timeout_s:
            waiting = conn.execute(
                "SELECT count(*) FROM call_events WHERE processed_at IS NULL"
            ).fetchone()
            if waiting is not None and waiting[0] == 0:
                return time.monotonic() - started
            time.sleep(0.05)
    return math.inf


def _stored_calls(database: str) -> set[object]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT DISTINCT call_id FROM call_events").fetchall()
    return {row[0] for row in rows}


def _call_statuses(database: str) -> dict[object, str]:
    with psycopg.connect(database) as conn:
        return {row[0]: row[1] for row in conn.execute("SELECT id, status FROM calls")}
