"""The service SIGKILLed while placing calls, its clients retrying with their keys.

No logical request (one Idempotency-Key, one callee number) may be placed twice, none
may be lost, and every stored call must end, after reconciliation, in a final status
that agrees with what the simulator did.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import psycopg

from app.calls.service import to_e164
from tests.faults.harness import (
    FINAL,
    WRITER_KEY,
    PrivatePostgres,
    Report,
    SimulatorView,
    callbridge,
    check_outcomes,
    fast_forward_unsettled,
    simulator,
    sized,
    stored_calls,
)

CONCURRENCY = 12
RETRY_PAUSE_S = 0.2
SETTINGS = {
    "run_jobs": "true",
    "reconcile_after_s": 1,
    "reconcile_interval_s": 0.2,
    "reconcile_unknown_grace_s": 3,
    "exotel_timeout_s": 3,
    "exotel_requests_per_minute": 200,
    # Clients retry every 0.2 s through the outage: not what this test is about.
    "calls_per_minute_per_client": 100_000,
}


def callee(index: int) -> str:
    """Every other call answers slowly (9908), so the kill finds requests waiting on
    Exotel; the others end in 0000, no scenario: all complete normally."""
    return f"+9196{index:04d}{'9908' if index % 2 else '0000'}"


async def test_a_killed_service_places_each_call_once(
    private_postgres: PrivatePostgres, report: Report
) -> None:
    logical = sized(30, 150)
    database = await asyncio.to_thread(private_postgres.database, "faults_killed")
    exotel = simulator("killed-simulator", speed=50, slow_answer_s=1.0)
    await asyncio.to_thread(exotel.start)
    service = callbridge(database, exotel.url, "killed-callbridge", SETTINGS)
    await asyncio.to_thread(service.start)
    seen: Counter[str] = Counter()
    answers: dict[int, int] = {}
    kill_after = logical // 3
    killed_in_flight = 0
    in_flight = 0
    restart: asyncio.Task[None] | None = None
    stop_forwarding = asyncio.Event()
    forwarded = 0

    async def fast_forward() -> None:
        # Reconciliation waits minutes after a crash; here the clock is moved on instead.
        nonlocal forwarded
        while not stop_forwarding.is_set():
            forwarded += await asyncio.to_thread(fast_forward_unsettled, database)
            await asyncio.sleep(0.5)

    async def kill_and_restart() -> None:
        nonlocal service, killed_in_flight
        killed_in_flight = in_flight
        await asyncio.to_thread(service.kill)
        seen["kills"] += 1
        service = callbridge(database, exotel.url, "killed-callbridge", SETTINGS, port=service.port)
        await asyncio.to_thread(service.start)

    try:
        async with (
            httpx.AsyncClient(
                base_url=service.url,
                timeout=15,
                headers={"Authorization": f"Bearer {WRITER_KEY}"},
            ) as http,
            httpx.AsyncClient(base_url=exotel.url, timeout=15) as exotel_http,
        ):
            forwarding = asyncio.create_task(fast_forward())
            deadline = asyncio.get_running_loop().time() + sized(60, 180)

            async def place(index: int) -> None:
                nonlocal in_flight, restart
                # Short calls: a request the kill cut off stays unsettled until the call
                # could no longer be running (TimeOut twice, then TimeLimit: 14 s here).
                body = {
                    "from": "+919876543210",
                    "to": callee(index),
                    "custom_field": str(index),
                    "time_out": 2,
                    "time_limit": 10,
                }
                headers = {"Idempotency-Key": f"faults-killed-{index}"}
                while asyncio.get_running_loop().time() < deadline:
                    in_flight += 1
                    try:
                        response = await http.post("/calls", json=body, headers=headers)
                    except httpx.TransportError as exc:
                        seen[type(exc).__name__] += 1
                        await asyncio.sleep(RETRY_PAUSE_S)
                        continue
                    finally:
                        in_flight -= 1
                    seen[str(response.status_code)] += 1
                    if response.headers.get("idempotent-replayed") == "true":
                        seen["replayed"] += 1
                    if response.status_code in (201, 504):
                        answers[index] = response.status_code
                        if len(answers) == kill_after and restart is None:
                            restart = asyncio.create_task(kill_and_restart())
                        if response.status_code == 504 and await _not_placed(
                            http, response.json()["id"], deadline
                        ):
                            # As the API says: read the call until it is settled; one
                            # found never placed released its key, so retry with it.
                            seen["retried after not placed"] += 1
                            continue
                        return
                    assert response.status_code in (409, 500, 502, 503), response.text
                    await asyncio.sleep(RETRY_PAUSE_S)

            queue = iter(range(logical))

            async def client() -> None:
                for index in queue:
                    await place(index)

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            assert restart is not None
            await restart
            settled = await _settle(database, deadline)
            stop_forwarding.set()
            await forwarding
            view = SimulatorView(exotel_http)
            placed = await view.placed()
            connects = await view.connect_requests()
    finally:
        stop_forwarding.set()
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(exotel.stop)

    calls = stored_calls(database)
    report.add(
        f"tried: {logical} logical calls (one key and callee each), {CONCURRENCY} clients "
        f"retrying on errors, 409 and lost connections; SIGKILL after {kill_after} answers "
        f"({killed_in_flight} requests in flight), restarted on the same port"
    )
    report.add(f"clients saw: {dict(seen)}; final answers {dict(Counter(answers.values()))}")
    report.add(
        f"calls fast-forwarded to reconciliation: {forwarded}; "
        f"reconcile events: {_reconcile_events(database)}"
    )
    problems = check_outcomes(calls, placed, connects, report)
    # Exotel (and the simulator) echo numbers in national form.
    placed_per_callee = Counter(to_e164(call["To"], "IN") for call in placed.values())
    missing = [callee(i) for i in range(logical) if placed_per_callee[callee(i)] == 0]
    report.add(f"logical calls never placed: {len(missing)}")
    assert settled, "not every call settled in time"
    assert len(answers) == logical, "some clients never got a final answer"
    assert not problems, problems[:10]
    assert not missing, missing[:10]


async def _not_placed(http: httpx.AsyncClient, call_id: str, deadline: float) -> bool:
    """Read the call until it is settled; True if it ended `failed` (never placed)."""
    while asyncio.get_running_loop().time() < deadline:
        try:
            response = await http.get(f"/calls/{call_id}")
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            status = response.json()["status"]
            if status not in ("pending", "unknown"):
                return bool(status == "failed")
        await asyncio.sleep(RETRY_PAUSE_S)
    return False


async def _settle(database: str, deadline: float) -> bool:
    """Wait until every stored call is in a final status."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        calls = await asyncio.to_thread(stored_calls, database)
        if calls and all(call.status in FINAL for call in calls):
            return True
        await asyncio.sleep(0.3)
    return False


def _reconcile_events(database: str) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*) FROM call_events WHERE source = 'reconcile'").fetchone()
    return int(row[0]) if row else 0
