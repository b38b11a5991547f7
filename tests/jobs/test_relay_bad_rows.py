"""One call the relay cannot read never stops notifications for the others (issue 11 item 1).

Such a row cannot be written any more (times outside 2000..tomorrow are not applied), but
one written before, or by hand, must not hold up every other call's notification.
"""

from __future__ import annotations

import uuid

import httpx
import respx
from sqlalchemy import select, text

from app.calls.models import Notification
from app.jobs.relay import Relay
from app.jobs.runner import notify_secret
from tests.conftest import make_settings
from tests.jobs.conftest import FAST_JOBS, AppFactory, Receiver
from tests.jobs.test_relay import FINISHED, apply, place


async def test_an_unreadable_call_does_not_stop_the_others_notifications(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver, database_url: str
) -> None:
    running = await start_app(run_jobs=False)
    poisoned, healthy = [await place(running, exotel, receiver.url) for _ in range(2)]
    for call_id in (poisoned, healthy):
        await apply(running, call_id, FINISHED)
    async with running.app.state.engine.begin() as conn:
        # Year 0 once in UTC: Postgres stores it, the driver cannot read it back.
        await conn.execute(
            text("UPDATE calls SET end_time = '0001-01-01 00:00:00+05:30' WHERE id = :id"),
            {"id": uuid.UUID(poisoned)},
        )
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
