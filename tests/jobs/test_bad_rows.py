"""One call that cannot be read never stops a job for the others (issue 11 item 1).

Such a row cannot be written any more (times outside 2000..tomorrow are not applied), but
one written before, or by hand, must not hold up every other call's notification or
reconciliation.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import respx
from sqlalchemy import select, text

from app.calls.models import Notification
from app.exotel.client import ExotelClient, build_http_client
from app.jobs.reconciler import Reconciler
from app.jobs.relay import Relay
from app.jobs.runner import notify_secret
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE, make_settings
from tests.exotel_samples import connect_answer
from tests.jobs.conftest import FAST_JOBS, AppFactory, Receiver, RunningApp
from tests.jobs.test_relay import FINISHED, apply, place
from tests.limiters import Unlimited

# Year 0 once in UTC: Postgres stores it, the driver cannot read it back.
POISON = text("UPDATE calls SET end_time = '0001-01-01 00:00:00+05:30' WHERE id = :id")


async def poison(running: RunningApp, call_id: str) -> None:
    async with running.app.state.engine.begin() as conn:
        await conn.execute(POISON, {"id": uuid.UUID(call_id)})


async def test_an_unreadable_call_does_not_stop_the_others_notifications(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver, database_url: str
) -> None:
    running = await start_app(run_jobs=False)
    poisoned, healthy = [await place(running, exotel, receiver.url) for _ in range(2)]
    for call_id in (poisoned, healthy):
        await apply(running, call_id, FINISHED)
    await poison(running, poisoned)
    settings = make_settings(database_url, **{**FAST_JOBS, "run_jobs": False})

    async with httpx.AsyncClient() as http:
        relay = Relay(running.app.state.sessions, http, notify_secret(settings), settings)
        assert await relay.deliver_due() == 2

    [delivery] = receiver.deliveries
    assert b'"id": "%s"' % healthy.encode() in delivery.body
    async with running.app.state.sessions() as session:
        outbox = {
            str(row.call_id): (row.status, row.attempts, row.last_error)
            for row in await session.scalars(select(Notification))
        }
    assert outbox == {
        healthy: ("delivered", 1, None),
        poisoned: ("pending", 1, "unreadable call"),
    }


async def test_an_unreadable_call_does_not_stop_the_reconciler(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False, reconcile_interval_s=60)
    call_ids = []
    for sid in ("poisoned-sid", "healthy-sid"):
        exotel.post("/connect.json").respond(200, json=connect_answer(sid))
        placed = await running.client.post(
            "/calls", json={"from": "+919876543210", "to": "09123456789"}
        )
        call_ids.append(placed.json()["id"])
        exotel.get(f"/{sid}.json").respond(200, json=connect_answer(sid, Status="completed"))
    poisoned, healthy = call_ids
    await poison(running, poisoned)
    async with running.app.state.engine.begin() as conn:
        # Both due, the unreadable one first.
        for call_id, ago_s in ((poisoned, 2), (healthy, 1)):
            await conn.execute(
                text("UPDATE calls SET next_reconcile_at = :at WHERE id = :id"),
                {"id": uuid.UUID(call_id), "at": datetime.now(UTC) - timedelta(seconds=ago_s)},
            )

    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        exotel_client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        reconciler = Reconciler(
            running.app.state.sessions,
            exotel_client,
            running.app.state.settings,
            running.app.state.claims,
        )
        assert await reconciler.run_once() == 2

    assert (await running.client.get(f"/calls/{healthy}")).json()["status"] == "completed"
