"""Exotel (the simulator) flapping between errors, 429s, slow and lost answers under load.

The callee's last four digits choose what the simulator does; the test switches them
every GROUP requests, so concurrent requests meet the same trouble at once, as when
Exotel itself has a bad minute, and every kind of trouble comes up in every run.
Every call must end in a final status that agrees with the simulator (placed: its
status; refused: `failed` with Exotel's error, no Sid), each answer must say what
happened, and nothing may be placed twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import httpx

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

CONCURRENCY = 16
OWN_LIMIT_RETRIES = 10
GROUP = 4
# Simulator scenario (callee suffix) -> the answers POST /calls may give.
MODES = {
    "0000": {201},  # completes
    "9907": {502},  # Exotel 500
    "9906": {503},  # Exotel 429
    "9908": {201},  # slow answer, within EXOTEL_TIMEOUT_S
    # Answer lost: placed, outcome unknown until reconciled (504), unless the call's
    # callback came first and settled it (201).
    "9909": {201, 504},
    "9901": {201},  # busy
    "9902": {201},  # no-answer
    "9903": {201},  # failed
}
SETTINGS = {
    "run_jobs": "true",
    "reconcile_after_s": 3,
    "reconcile_interval_s": 0.2,
    "reconcile_unknown_grace_s": 3,
    "exotel_timeout_s": 3,
    "exotel_requests_per_minute": 200,
}


async def test_flapping_exotel_leaves_every_call_right(
    private_postgres: PrivatePostgres, report: Report
) -> None:
    count = sized(64, 160)
    database = await asyncio.to_thread(private_postgres.database, "faults_flapping")
    exotel = simulator("flapping-simulator", speed=20, slow_answer_s=1.0, lost_answer_hang_s=5)
    await asyncio.to_thread(exotel.start)
    service = callbridge(database, exotel.url, "flapping-callbridge", SETTINGS)
    await asyncio.to_thread(service.start)
    answers: dict[str, tuple[str, int]] = {}  # callee -> (mode, status)
    retried: Counter[str] = Counter()  # callee -> 503s from Callbridge's own Exotel budget
    forwarded = 0
    try:
        async with (
            httpx.AsyncClient(
                base_url=service.url, timeout=15, headers={"Authorization": f"Bearer {WRITER_KEY}"}
            ) as http,
            httpx.AsyncClient(base_url=exotel.url, timeout=15) as exotel_http,
        ):
            loop = asyncio.get_running_loop()
            started = loop.time()
            modes = list(MODES)
            numbers = itertools.count()

            async def client() -> None:
                while (index := next(numbers)) < count:
                    mode = modes[index // GROUP % len(modes)]
                    to_number = f"+9195{index:04d}{mode}"
                    assert to_e164(to_number, "IN") == to_number
                    for _ in range(OWN_LIMIT_RETRIES):
                        response = await http.post(
                            "/calls",
                            json={"from": "+919876543210", "to": to_number},
                            headers={"Idempotency-Key": f"faults-flapping-{index}"},
                        )
                        # Outside 9906, a 503 is Callbridge's own Exotel budget (the
                        # fleet-wide 200 a minute): a client retries after Retry-After.
                        if response.status_code != 503 or mode == "9906":
                            break
                        retried[to_number] += 1
                        await asyncio.sleep(int(response.headers["retry-after"]))
                    answers[to_number] = (mode, response.status_code)

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            sending_s = loop.time() - started
            deadline = loop.time() + sized(45, 120)
            settled = False
            while loop.time() < deadline and not settled:
                forwarded += await asyncio.to_thread(fast_forward_unsettled, database)
                calls = await asyncio.to_thread(stored_calls, database)
                settled = all(call.status in FINAL for call in calls)
                await asyncio.sleep(0.3)
            view = SimulatorView(exotel_http)
            placed = await view.placed()
            connects = await view.connect_requests()
    finally:
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(exotel.stop)

    calls = stored_calls(database)
    by_mode = Counter(mode for mode, _ in answers.values())
    wrong_answers = {
        number: (mode, status)
        for number, (mode, status) in answers.items()
        if status not in MODES[mode]
    }
    refused_without_error = [
        call.id
        for call in calls
        if call.to_number[-4:] in ("9906", "9907") and call.error_status not in (429, 500)
    ]
    report.add(
        f"tried: {count} calls from {CONCURRENCY} clients in {sending_s:.1f} s, the simulator "
        f"switching every {GROUP} calls between {', '.join(MODES)} (callee suffixes)"
    )
    report.add(f"calls per mode: {dict(sorted(by_mode.items()))}")
    report.add(
        "lost answers: "
        f"{dict(Counter(status for mode, status in answers.values() if mode == '9909'))}"
    )
    report.add(
        f"answers: {dict(Counter(status for _, status in answers.values()))}; "
        f"not the expected one: {len(wrong_answers)}"
    )
    report.add(f"calls fast-forwarded to reconciliation: {forwarded}")
    report.add(f"retried after Callbridge's own Exotel budget said 503: {retried.total()}")
    problems = check_outcomes(calls, placed, connects, report)
    assert settled, "not every call settled in time"
    assert not wrong_answers, wrong_answers
    assert not refused_without_error, refused_without_error
    assert not problems, problems[:10]
    # Each attempt is stored; those refused by Callbridge's own budget as `failed`.
    assert len(calls) == count + retried.total()
