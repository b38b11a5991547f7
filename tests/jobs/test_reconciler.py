"""The reconciler settles calls whose callbacks or connect answer never came."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from app.calls.models import Call, CallEvent, Leg
from app.exotel.client import ExotelClient, build_http_client
from app.exotel.schemas import TERMINAL_STATUSES
from app.jobs.reconciler import NOT_PLACED, Reconciler
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE
from tests.exotel_samples import connect_answer
from tests.jobs.conftest import AppFactory, LiveSimulator, RunningApp, eventually
from tests.limiters import Unlimited

FROM, TO = "+919876543210", "+919123456789"


async def call_row(running: RunningApp, call_id: str) -> Call:
    async with running.app.state.sessions() as session:
        call: Call = await session.get_one(Call, uuid.UUID(call_id))
        return call


async def reconcile_events(running: RunningApp, call_id: str) -> list[CallEvent]:
    query = select(CallEvent).where(
        CallEvent.call_id == uuid.UUID(call_id), CallEvent.source == "reconcile"
    )
    async with running.app.state.sessions() as session:
        return list((await session.scalars(query)).all())


async def make_due(running: RunningApp, call_id: str, *, age: timedelta | None = None) -> None:
    """Move the call's next look to now (and its creation `age` into the past)."""
    values: dict[str, Any] = {"next_reconcile_at": datetime.now(UTC)}
    if age is not None:
        values["created_at"] = datetime.now(UTC) - age
    async with running.app.state.sessions() as session, session.begin():
        await session.execute(update(Call).where(Call.id == uuid.UUID(call_id)).values(**values))


async def settled(running: RunningApp, ref: str) -> dict[str, Any]:
    async def finished() -> bool:
        return (await running.client.get(f"/calls/{ref}")).json()["status"] in TERMINAL_STATUSES

    await eventually(finished)
    body: dict[str, Any] = (await running.client.get(f"/calls/{ref}")).json()
    return body


# -- against the simulator, over real HTTP, with the jobs running in the app --------------


async def test_a_call_without_callbacks_gets_its_final_state_from_call_details(
    start_app: AppFactory, simulator: LiveSimulator
) -> None:
    running = await start_app(**simulator.settings(), reconcile_after_s=1)
    placed = await running.client.post("/calls", json={"from": FROM, "to": "+918867999913"})
    assert placed.status_code == 201
    assert placed.json()["status"] == "in-progress"
    sid = placed.json()["sid"]

    call = await settled(running, sid)

    details = await simulator_details(simulator, sid)
    assert details["Status"] == "completed"
    assert call["status"] == "completed"
    assert call["duration"] == int(details["Duration"])
    assert call["conversation_duration"] == details["Details"]["ConversationDuration"]
    assert call["price"] == float(details["Price"])
    assert [leg["status"] for leg in call["legs"]] == ["completed", "completed"]
    [*_, event] = await reconcile_events(running, call["id"])
    assert event.event_type == "call_details"
    assert event.applied
    assert json.loads(event.raw_body)["Call"]["Sid"] == sid


async def test_a_lost_answer_is_settled_to_its_sid_with_one_connect_request(
    start_app: AppFactory, simulator: LiveSimulator
) -> None:
    running = await start_app(**simulator.settings(), reconcile_after_s=1)
    request = {"from": FROM, "to": "+918867999909"}
    headers = {"Idempotency-Key": "order-42"}
    lost = await running.client.post("/calls", json=request, headers=headers)
    assert lost.status_code == 504
    call_id = lost.json()["id"]
    assert (await running.client.get(f"/calls/{call_id}")).json()["status"] == "unknown"

    await make_due(running, call_id)  # instead of waiting out the 30 s before the first look
    call = await settled(running, call_id)

    [placed] = simulator.simulator.connect_requests
    [exotel_call] = (await simulator_listing(simulator, placed["To"]))["Calls"]
    assert call["sid"] == exotel_call["Sid"]
    assert call["status"] == "completed"
    replay = await running.client.post("/calls", json=request, headers=headers)
    assert replay.status_code == 201
    assert replay.json()["sid"] == exotel_call["Sid"]
    assert len(simulator.simulator.connect_requests) == 1


async def simulator_details(simulator: LiveSimulator, sid: str) -> dict[str, Any]:
    account = simulator.simulator.config.account_sid
    async with simulator_http(simulator) as http:
        response = await http.get(f"/v1/Accounts/{account}/Calls/{sid}.json?details=true")
    call: dict[str, Any] = response.json()["Call"]
    return call


async def simulator_listing(simulator: LiveSimulator, to: str) -> dict[str, Any]:
    account = simulator.simulator.config.account_sid
    async with simulator_http(simulator) as http:
        response = await http.get(f"/v1/Accounts/{account}/Calls.json", params={"To": to})
    listing: dict[str, Any] = response.json()
    return listing


def simulator_http(simulator: LiveSimulator) -> httpx.AsyncClient:
    config = simulator.simulator.config
    return httpx.AsyncClient(base_url=simulator.url, auth=(config.api_key, config.api_token))


# -- Exotel mocked at the HTTP boundary, the reconciler driven one run at a time ----------


@dataclass(frozen=True)
class Reconciling:
    running: RunningApp
    exotel: ExotelClient

    def reconciler(self) -> Reconciler:
        app = self.running.app
        return Reconciler(app.state.sessions, self.exotel, app.state.settings)


@pytest.fixture
async def reconciling(
    start_app: AppFactory, exotel: respx.MockRouter
) -> AsyncIterator[Reconciling]:
    # Jobs stopped: each test runs the reconciler itself. A minute between looks leaves
    # no look due by surprise while a test runs.
    running = await start_app(run_jobs=False, reconcile_interval_s=60)
    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        yield Reconciling(running, client)


def listed(sid: str, *, to: str = TO, from_: str = FROM, status: str = "completed") -> Any:
    return connect_answer(sid, To=to, From=from_, Status=status)["Call"]


def listing(*calls: Any) -> dict[str, Any]:
    return {"Metadata": {"NextPageUri": None}, "Calls": list(calls)}


async def lose_the_answer(running: RunningApp, exotel: respx.MockRouter, key: str) -> str:
    exotel.post("/connect.json").mock(side_effect=httpx.ReadTimeout("no answer"))
    response = await running.client.post(
        "/calls", json={"from": FROM, "to": TO}, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 504
    call_id: str = response.json()["id"]
    return call_id


def ambiguous_count() -> float:
    value = REGISTRY.get_sample_value(
        "callbridge_reconcile_outcomes_total", {"outcome": "ambiguous"}
    )
    return value or 0.0


async def test_an_unknown_call_with_no_match_fails_after_the_grace_period(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    call_id = await lose_the_answer(running, exotel, "order-7")
    # Exotel lists a call to our To from someone else, and one that another call owns.
    async with running.app.state.sessions() as session, session.begin():
        owner = Call(
            status="completed",
            sid="owned-sid",
            from_number=FROM,
            to_number=TO,
            caller_id="+918047112233",
            api_client="orders",
        )
        session.add(owner)
        await session.flush()
        session.add_all([Leg(call_id=owner.id, leg=0), Leg(call_id=owner.id, leg=1)])
    bulk = exotel.get(".json").respond(
        200, json=listing(listed("owned-sid"), listed("other-sid", from_="+919999999999"))
    )

    await make_due(running, call_id)
    await reconciler.run_once()

    within_grace = await call_row(running, call_id)
    assert within_grace.status == "unknown"
    assert within_grace.next_reconcile_at is not None
    assert within_grace.next_reconcile_at > datetime.now(UTC)

    await make_due(running, call_id, age=timedelta(minutes=11))
    await reconciler.run_once()

    failed = (await running.client.get(f"/calls/{call_id}")).json()
    assert failed["status"] == "failed"
    assert failed["sid"] is None
    assert failed["error"]["message"] == NOT_PLACED
    assert bulk.call_count == 2
    assert (await call_row(running, call_id)).next_reconcile_at is None
    [event] = await reconcile_events(running, call_id)
    assert (event.event_type, event.status, event.applied) == ("not_found", "failed", True)
    # The key was released: the client's retry places the call.
    exotel.post("/connect.json").respond(200, json=connect_answer("retried-sid"))
    retry = await running.client.post(
        "/calls", json={"from": FROM, "to": TO}, headers={"Idempotency-Key": "order-7"}
    )
    assert retry.status_code == 201
    assert retry.json()["sid"] == "retried-sid"


async def test_several_matches_leave_the_call_unknown(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    call_id = await lose_the_answer(running, exotel, "order-8")
    bulk = exotel.get(".json").respond(200, json=listing(listed("sid-a"), listed("sid-b")))
    counted = ambiguous_count()

    await make_due(running, call_id, age=timedelta(hours=1))
    await reconciler.run_once()

    call = await call_row(running, call_id)
    assert (call.status, call.sid) == ("unknown", None)
    assert call.next_reconcile_at is not None
    assert ambiguous_count() == counted + 1
    assert len(exotel.calls) == 2  # the lost connect, the listing: no Sid was looked up
    assert bulk.called
    assert await reconcile_events(running, call_id) == []


async def test_a_call_left_pending_by_a_dead_process_is_found_by_its_numbers(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    async with running.app.state.sessions() as session, session.begin():
        pending = Call(
            status="pending",
            from_number=FROM,
            to_number=TO,
            caller_id="+918047112233",
            api_client="orders",
            created_at=datetime.now(UTC) - timedelta(minutes=3),
            next_reconcile_at=datetime.now(UTC),
        )
        session.add(pending)
        await session.flush()
        session.add_all(
            [Leg(call_id=pending.id, leg=0, number=FROM), Leg(call_id=pending.id, leg=1, number=TO)]
        )
    # Exotel writes numbers its own way; they are compared in E.164.
    bulk = exotel.get(".json").respond(
        200, json=listing(listed("found-sid", to="09123456789", from_="09876543210"))
    )
    details = exotel.get("/found-sid.json").respond(
        200,
        json=connect_answer(
            "found-sid",
            Status="completed",
            Duration="40",
            DateUpdated="2017-03-03 10:49:30",
            Details={
                "ConversationDuration": 30,
                "Leg1Status": "completed",
                "Leg2Status": "completed",
            },
        ),
    )

    await reconciler.run_once()

    call = (await running.client.get(f"/calls/{pending.id}")).json()
    assert call["sid"] == "found-sid"
    assert call["status"] == "completed"
    assert call["conversation_duration"] == 30
    assert [leg["status"] for leg in call["legs"]] == ["completed", "completed"]
    assert bulk.call_count == details.call_count == 1
    query = dict(bulk.calls.last.request.url.params)
    assert query["To"] == TO
    assert query["DateCreated"].startswith("gte:")


async def test_looks_back_off_and_stop_at_the_horizon(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    exotel.post("/connect.json").respond(200, json=connect_answer("long-sid"))
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    call_id = placed.json()["id"]
    placed_row = await call_row(running, call_id)
    assert placed_row.next_reconcile_at == placed_row.created_at + timedelta(seconds=900)
    details = exotel.get("/long-sid.json").respond(200, json=connect_answer("long-sid"))

    gaps = []
    for _ in range(3):
        await make_due(running, call_id)
        await reconciler.run_once()
        row = await call_row(running, call_id)
        assert row.next_reconcile_at is not None
        gaps.append((row.next_reconcile_at - datetime.now(UTC)).total_seconds())
    assert gaps[0] < gaps[1] < gaps[2]

    await make_due(running, call_id, age=timedelta(hours=25))
    await reconciler.run_once()

    given_up = await call_row(running, call_id)
    assert given_up.status == "in-progress"
    assert given_up.next_reconcile_at is None
    assert given_up.reconcile_attempts == 4
    assert details.call_count == 4
    assert await reconciler.run_once() == 0


async def test_two_reconcilers_never_look_at_one_call_twice(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running = reconciling.running
    exotel.post("/connect.json").respond(200, json=connect_answer("busy-sid"))
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    call_id = placed.json()["id"]
    details = exotel.get("/busy-sid.json").respond(200, json=connect_answer("busy-sid"))
    await make_due(running, call_id)

    looks = await asyncio.gather(
        reconciling.reconciler().run_once(), reconciling.reconciler().run_once()
    )

    assert sorted(looks) == [0, 1]
    assert details.call_count == 1
    async with running.app.state.sessions() as session:
        assert await session.scalar(text("SELECT count(*) FROM call_events")) == 1
