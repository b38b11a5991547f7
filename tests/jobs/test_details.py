"""Price and duration, which Exotel fills in minutes after the end, reach every finished
call (issue 10, item 1): the details job (app/jobs/details.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import respx
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from standardwebhooks import Webhook

from app.calls.models import Call, CallEvent, Leg, Notification
from app.exotel.client import ExotelClient, build_http_client
from app.exotel.schemas import EXOTEL_TIMEZONE
from app.jobs.details import GAVE_UP, GIVE_UP_AFTER, DetailsJob
from app.limits.budget import LimitReached
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE, callbacks_applied
from tests.exotel_callbacks import callback, form_of
from tests.exotel_samples import connect_answer
from tests.jobs.conftest import NOTIFY_SECRET, AppFactory, Receiver, RunningApp, eventually
from tests.limiters import Unlimited

FROM, TO = "+919876543210", "+919123456789"
# Recent, whole seconds (as Exotel gives times): a fixed date would, a day on, fall past
# the 24 h after which the job stops looking.
ENDED = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)


def exotel_time(value: datetime) -> str:
    return value.astimezone(EXOTEL_TIMEZONE).strftime("%Y-%m-%d %H:%M:%S")


def listed(sid: str, *, figures: bool, ended: datetime = ENDED) -> dict[str, Any]:
    """A finished call as bulk call details list it, before or after the figures."""
    call: dict[str, Any] = connect_answer(
        sid,
        Status="completed",
        EndTime=exotel_time(ended),
        Duration="41" if figures else None,
        Price="1.500" if figures else None,
        Details={
            "ConversationDuration": 32,
            "Leg1Status": "completed",
            "Leg2Status": "completed",
            "Legs": [
                {"Leg": {"Id": 1, "OnCallDuration": 41}},
                {"Leg": {"Id": 2, "OnCallDuration": 32}},
            ],
        },
    )["Call"]
    return call


def listing(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"Metadata": {"NextPageUri": None}, "Calls": list(calls)}


async def call_row(running: RunningApp, call_id: str) -> Call:
    async with running.app.state.sessions() as session:
        call: Call = await session.get_one(Call, uuid.UUID(call_id))
        return call


async def make_due(running: RunningApp, *call_ids: uuid.UUID, **values: Any) -> None:
    async with running.app.state.sessions() as session, session.begin():
        await session.execute(
            update(Call)
            .where(Call.id.in_(call_ids))
            .values(details_next_at=datetime.now(UTC), **values)
        )


async def events_of(running: RunningApp, call_id: str) -> list[CallEvent]:
    query = select(CallEvent).where(CallEvent.call_id == uuid.UUID(call_id)).order_by(CallEvent.id)
    async with running.app.state.sessions() as session:
        return list((await session.scalars(query)).all())


async def test_a_finished_call_gets_its_figures_and_a_call_updated_notification(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    running = await start_app()  # jobs running; DETAILS_AFTER_S the default 180
    sid = uuid.uuid4().hex
    connect = exotel.post("/connect.json").respond(200, json=connect_answer(sid))
    placed = await running.client.post(
        "/calls", json={"from": FROM, "to": TO, "notify_url": receiver.url}
    )
    call_id = placed.json()["id"]
    ended = datetime.now(UTC).replace(microsecond=0)
    figures_in = False
    bulk = exotel.get(".json").mock(
        side_effect=lambda request: httpx.Response(
            200, json=listing(listed(sid, figures=figures_in, ended=ended))
        )
    )

    # The terminal callback, as Exotel sends it: no Price, no Duration.
    terminal = callback(CallSid=sid, Status="completed", EndTime=exotel_time(ended))
    callback_url = form_of(connect.calls.last.request)["StatusCallback"]
    assert (await running.client.post(callback_url, json=terminal)).status_code == 200
    await callbacks_applied(running.app)

    finished = await call_row(running, call_id)
    assert finished.status == "completed"
    assert finished.price is None
    assert finished.details_next_at == ended + timedelta(seconds=180)

    # First look: Exotel lists the call, still without its figures.
    await make_due(running, finished.id)

    async def looked() -> bool:
        # The look's event is written with its outcome, in one transaction.
        return any(event.source == "reconcile" for event in await events_of(running, call_id))

    await eventually(looked)
    waiting = await call_row(running, call_id)
    assert (waiting.details_looks, bulk.call_count) == (1, 1)
    assert waiting.price is None
    assert waiting.details_next_at is not None
    assert waiting.details_next_at > datetime.now(UTC) + timedelta(seconds=170)
    assert bulk.calls.last.request.url.params["Sid"] == sid

    # A later look finds them.
    figures_in = True
    await make_due(running, finished.id)

    async def priced() -> bool:
        return (await running.client.get(f"/calls/{call_id}")).json()["price"] is not None

    await eventually(priced)
    call = (await running.client.get(f"/calls/{call_id}")).json()
    assert (call["price"], call["duration"], call["conversation_duration"]) == (1.5, 41, 32)
    assert [leg["on_call_duration"] for leg in call["legs"]] == [41, 32]
    assert (await call_row(running, call_id)).details_next_at is None
    looks = [event for event in await events_of(running, call_id) if event.source == "reconcile"]
    assert [(event.event_type, event.applied) for event in looks] == [
        ("call_details", False),  # what the callback said already, without the figures
        ("call_details", True),
    ]
    assert json.loads(looks[-1].raw_body)["Price"] == "1.500"
    assert all(event.content_type == "application/json" for event in looks)

    # call.finished when it ended, call.updated with the figures: two webhook-ids.
    async def both_delivered() -> bool:
        return len(receiver.deliveries) >= 2

    await eventually(both_delivered)
    finished_note, updated_note = (
        Webhook(NOTIFY_SECRET).verify(delivery.body, delivery.headers)
        for delivery in receiver.deliveries
    )
    assert finished_note["type"] == "call.finished"
    assert updated_note["type"] == "call.updated"
    assert updated_note["data"]["price"] == 1.5
    ids = {delivery.headers["webhook-id"] for delivery in receiver.deliveries}
    assert len(ids) == 2
    # The call resource's `notify` still tells of the call.finished delivery.
    assert call["notify"]["status"] == "delivered"


async def finished_calls(running: RunningApp, count: int, **values: Any) -> list[Call]:
    """`count` finished calls waiting for their figures, stored as callbacks leave them."""
    calls = [
        Call(
            status="completed",
            sid=f"sid-{index:03}-{uuid.uuid4().hex[:8]}",
            from_number=FROM,
            to_number=TO,
            caller_id="+918047112233",
            api_client="orders",
            **{"end_time": ENDED, "details_next_at": datetime.now(UTC), **values},
        )
        for index in range(count)
    ]
    async with running.app.state.sessions() as session, session.begin():
        session.add_all(calls)
        await session.flush()
        session.add_all(Leg(call_id=call.id, leg=leg) for call in calls for leg in (0, 1))
    return calls


async def test_replicas_share_due_calls_in_requests_of_at_most_100_sids(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False)
    calls = await finished_calls(running, 150)

    def answer(request: httpx.Request) -> httpx.Response:
        sids = request.url.params["Sid"].split(",")
        return httpx.Response(200, json=listing(*(listed(sid, figures=True) for sid in sids)))

    bulk = exotel.get(".json").mock(side_effect=answer)
    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        exotel_client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        jobs = [
            DetailsJob(running.app.state.sessions, exotel_client, running.app.state.settings)
            for _ in range(2)
        ]
        looked_at = await asyncio.gather(*(job.run_once() for job in jobs))

    asked = [request.url.params["Sid"].split(",") for request, _ in bulk.calls]
    assert sorted(len(sids) for sids in asked) == [50, 100]
    assert sorted(sid for sids in asked for sid in sids) == sorted(str(call.sid) for call in calls)
    assert sorted(looked_at) == [50, 100]
    async with running.app.state.sessions() as session:
        stored = (await session.scalars(select(Call).where(Call.id.in_(c.id for c in calls)))).all()
    assert all(call.price is not None and call.details_next_at is None for call in stored)


async def test_figures_that_never_come_are_given_up_and_the_call_says_so(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False)
    [call] = await finished_calls(
        running, 1, end_time=datetime.now(UTC) - GIVE_UP_AFTER, details_looks=30
    )
    exotel.get(".json").respond(200, json=listing())  # not listed, as for a month-old call
    gave_up_before = _gave_up_count()

    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        exotel_client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        await DetailsJob(
            running.app.state.sessions, exotel_client, running.app.state.settings
        ).run_once()

    stored = await call_row(running, str(call.id))
    assert stored.price is None
    assert stored.details_next_at is None
    [event] = await events_of(running, str(call.id))
    assert (event.source, event.event_type, event.applied) == ("reconcile", GAVE_UP, False)
    assert json.loads(event.raw_body)["Looks"] == 31
    assert _gave_up_count() == gave_up_before + 1
    async with running.app.state.sessions() as session:
        assert (await session.scalars(select(Notification))).all() == []


def _gave_up_count() -> float:
    value = REGISTRY.get_sample_value("callbridge_details_outcomes_total", {"outcome": "gave_up"})
    return value or 0.0


async def test_exotel_failing_leaves_the_calls_waiting_for_their_next_look(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False)
    [call] = await finished_calls(running, 1)
    exotel.get(".json").respond(500, json={"RestException": {"Message": "Service Unavailable"}})

    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        exotel_client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        await DetailsJob(
            running.app.state.sessions, exotel_client, running.app.state.settings
        ).run_once()

    stored = await call_row(running, str(call.id))
    assert stored.price is None
    assert stored.details_looks == 1
    assert stored.details_next_at is not None
    assert stored.details_next_at > datetime.now(UTC) + timedelta(seconds=170)
    assert await events_of(running, str(call.id)) == []


async def test_a_run_looks_at_every_due_batch_the_fleet_budget_allows(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    """No share of the limit per process: only the fleet limiter holds looks back."""
    running = await start_app(run_jobs=False, exotel_requests_per_minute=3)
    calls = await finished_calls(running, 150)

    def answer(request: httpx.Request) -> httpx.Response:
        sids = request.url.params["Sid"].split(",")
        return httpx.Response(200, json=listing(*(listed(sid, figures=True) for sid in sids)))

    bulk = exotel.get(".json").mock(side_effect=answer)
    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        exotel_client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        # At 3 a minute, a third of the limit per run allowed one batch a run.
        looked_at = await DetailsJob(
            running.app.state.sessions, exotel_client, running.app.state.settings
        ).run_once()

    assert looked_at == len(calls)
    assert bulk.call_count == 2


class NoPlaceToSpare:
    async def acquire(self) -> None:
        raise LimitReached(retry_after_s=1)


async def test_a_run_stops_when_the_fleet_budget_has_no_place_to_spare(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False)
    [call] = await finished_calls(running, 1)

    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        full = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=NoPlaceToSpare())
        looked_at = await DetailsJob(
            running.app.state.sessions, full, running.app.state.settings
        ).run_once()

    assert looked_at == 0
    stored = await call_row(running, str(call.id))
    assert stored.details_looks == 0
    assert stored.details_next_at is not None
    assert stored.details_next_at <= datetime.now(UTC)  # still due, for the next run
