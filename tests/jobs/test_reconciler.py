"""The reconciler settles calls whose callbacks or connect answer never came."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from app.calls.models import Call, CallEvent, Leg
from app.calls.service import CLAIM_GRACE
from app.claims import ClaimKind, SessionClaims, held
from app.db import PROJECT_ROOT
from app.exotel.client import ExotelClient, build_http_client
from app.exotel.limits import longest_call
from app.exotel.schemas import TERMINAL_STATUSES
from app.jobs.reconciler import (
    ABANDONED,
    NEVER_SENT,
    NOT_PLACED,
    SID_NOT_FOUND_LOOKS,
    SID_UNKNOWN,
    Reconciler,
)
from app.limits.budget import LimitReached
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE
from tests.exotel_samples import connect_answer
from tests.jobs.conftest import AppFactory, LiveSimulator, RunningApp, eventually
from tests.limiters import Unlimited
from tests.limits.test_claims import HOLDER

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
        return Reconciler(app.state.sessions, self.exotel, app.state.settings, app.state.claims)


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


async def test_an_unknown_call_with_no_match_fails_once_it_could_no_longer_be_running(
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

    # No TimeLimit: it could talk for Exotel's 4 hours after ringing both legs a minute.
    could_run = longest_call(None, None)
    await make_due(running, call_id, age=could_run + timedelta(minutes=11))
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


async def test_an_unknown_call_is_never_failed_while_it_could_still_be_running(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    # Bulk call details do not list a call that is still talking (issue 10, item 4).
    running, reconciler = reconciling.running, reconciling.reconciler()
    request = {"from": FROM, "to": TO, "time_limit": 3600, "time_out": 30}
    exotel.post("/connect.json").mock(side_effect=httpx.ReadTimeout("no answer"))
    lost = await running.client.post("/calls", json=request, headers={"Idempotency-Key": "k-9"})
    call_id = lost.json()["id"]
    bulk = exotel.get(".json").respond(200, json=listing())
    could_run = longest_call(30, 3600)  # an hour and two 30 s rings
    grace = timedelta(seconds=running.app.state.settings.reconcile_unknown_grace_s)

    # Long past the grace, but it may still be talking: it stays unknown, its key a 504.
    await make_due(running, call_id, age=could_run + grace - timedelta(minutes=1))
    await reconciler.run_once()

    call = await call_row(running, call_id)
    assert call.status == "unknown"
    assert call.idempotency_key == "k-9"
    # The next look comes no later than the moment "not listed" will mean "not placed".
    assert call.next_reconcile_at is not None
    assert call.next_reconcile_at <= call.created_at + could_run + grace
    replay = await running.client.post("/calls", json=request, headers={"Idempotency-Key": "k-9"})
    assert replay.status_code == 504
    assert replay.json()["id"] == call_id

    await make_due(running, call_id, age=could_run + grace + timedelta(seconds=1))
    await reconciler.run_once()

    assert (await call_row(running, call_id)).status == "failed"
    assert bulk.call_count == 2


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
    # Its connect request had its place under the limit: it may have been sent.
    pending = await left_pending(running, reserved=True, age=timedelta(minutes=3))
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


async def left_pending(
    running: RunningApp, *, reserved: bool, age: timedelta, key: str | None = None
) -> Call:
    """A call left `pending` by a process that died while placing it."""
    now = datetime.now(UTC)
    async with running.app.state.sessions() as session, session.begin():
        pending = Call(
            status="pending",
            from_number=FROM,
            to_number=TO,
            caller_id="+918047112233",
            api_client="orders",
            idempotency_key=key,
            created_at=now - age,
            next_reconcile_at=now - age + CLAIM_GRACE,
            connect_reserved_at=now - age if reserved else None,
        )
        session.add(pending)
        await session.flush()
        session.add_all(
            [Leg(call_id=pending.id, leg=0, number=FROM), Leg(call_id=pending.id, leg=1, number=TO)]
        )
    return pending


async def test_a_call_its_dead_process_never_sent_is_failed_at_once_and_its_key_released(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    pending = await left_pending(running, reserved=False, age=timedelta(seconds=6), key="k-1")
    bulk = exotel.get(".json").respond(200, json=listing())

    assert await reconciler.run_once() == 1

    failed = (await running.client.get(f"/calls/{pending.id}")).json()
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == NEVER_SENT
    assert bulk.call_count == 0  # nothing to ask Exotel: it was never sent
    [event] = await reconcile_events(running, str(pending.id))
    assert (event.event_type, event.status, event.applied) == ("never_sent", "failed", True)
    exotel.post("/connect.json").respond(200, json=connect_answer("retried-sid"))
    retry = await running.client.post(
        "/calls", json={"from": FROM, "to": TO}, headers={"Idempotency-Key": "k-1"}
    )
    assert retry.status_code == 201
    assert retry.json()["sid"] == "retried-sid"


async def test_a_call_its_dead_process_may_have_sent_becomes_unknown_at_once(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    # The same request, placed before under another key: its fingerprint, for the replay.
    exotel.post("/connect.json").respond(200, json=connect_answer("earlier-sid"))
    earlier = await running.client.post("/calls", json={"from": FROM, "to": TO})
    fingerprint = (await call_row(running, earlier.json()["id"])).request_fingerprint
    pending = await left_pending(running, reserved=True, age=timedelta(seconds=6), key="k-2")
    async with running.app.state.sessions() as session, session.begin():
        await session.execute(
            update(Call).where(Call.id == pending.id).values(request_fingerprint=fingerprint)
        )
    # Still ringing: Exotel lists only calls that have ended.
    bulk = exotel.get(".json").respond(200, json=listing())

    assert await reconciler.run_once() == 1

    call = (await running.client.get(f"/calls/{pending.id}")).json()
    assert call["status"] == "unknown"
    assert call["error"]["message"] == ABANDONED
    assert bulk.call_count == 1
    # Its client's retry is told to read the call, not to retry shortly.
    retry = await running.client.post(
        "/calls", json={"from": FROM, "to": TO}, headers={"Idempotency-Key": "k-2"}
    )
    assert retry.status_code == 504
    assert retry.json()["id"] == str(pending.id)


async def test_a_pending_call_a_live_process_is_placing_is_left_alone(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    placing = await left_pending(running, reserved=False, age=timedelta(minutes=1))
    young = await left_pending(running, reserved=False, age=timedelta(seconds=1))
    claims: SessionClaims = running.app.state.claims

    async with claims.holding(ClaimKind.PLACING, placing.id):
        assert await reconciler.run_once() == 0
    assert (await call_row(running, str(placing.id))).status == "pending"
    assert (await call_row(running, str(young.id))).status == "pending"

    # Unclaimed (its process died), it is settled on the next run.
    assert await reconciler.run_once() == 1
    assert (await call_row(running, str(placing.id))).status == "failed"
    assert (await call_row(running, str(young.id))).status == "pending"


async def test_a_killed_runners_claim_is_looked_at_again_at_once(
    reconciling: Reconciling, exotel: respx.MockRouter, database_url: str
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    exotel.post("/connect.json").respond(200, json=connect_answer("held-sid"))
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    call_id = placed.json()["id"]
    exotel.get("/held-sid.json").respond(200, json=connect_answer("held-sid"))
    await make_due(running, call_id)
    # Another runner, in its own process, holds the call's reconcile claim: it is looking.
    runner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        database_url,
        call_id,
        ClaimKind.RECONCILING.value,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert runner.stdout is not None
        assert await asyncio.wait_for(runner.stdout.readline(), 60) == b"holding\n"
        assert await reconciler.run_once() == 0
    finally:
        runner.kill()  # SIGKILL: its claims go with its session
        await runner.wait()

    looked: list[int] = []

    async def looked_at() -> bool:
        looked.append(await reconciler.run_once())
        return looked[-1] == 1

    await eventually(looked_at, timeout_s=5)


async def test_a_call_is_claimed_by_its_process_while_it_is_being_placed(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running = reconciling.running
    in_flight: list[bool] = []

    async def exotel_answers(request: httpx.Request) -> httpx.Response:
        callback = parse_qs(request.content.decode())["StatusCallback"][0]
        call_id = running.app.state.tokens.verify(callback.partition("token=")[2])
        assert call_id is not None
        async with running.app.state.engine.connect() as connection:
            in_flight.append(call_id in await held(connection, ClaimKind.PLACING, [call_id]))
        return httpx.Response(200, json=connect_answer("claimed-sid"))

    exotel.post("/connect.json").mock(side_effect=exotel_answers)
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    assert placed.status_code == 201

    assert in_flight == [True]
    call_id = uuid.UUID(placed.json()["id"])

    async def released() -> bool:
        async with running.app.state.engine.connect() as connection:
            return not await held(connection, ClaimKind.PLACING, [call_id])

    await eventually(released)


async def test_a_stalled_process_call_stored_with_its_place_is_never_failed_as_never_sent(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    """A call is stored with its place under the Exotel limit, and marked with it: another
    process that finds it unclaimed takes it as maybe sent (unknown), never as surely not
    sent, and the stalled process's late answer settles it."""
    running = await start_app(run_jobs=False, reconcile_interval_s=60)
    connect = exotel.post("/connect.json").respond(200, json=connect_answer("late-sid"))
    exotel.get(".json").respond(200, json=listing())
    service = running.app.state.calls
    settled_first = asyncio.Event()
    real_connect = service._exotel.connect

    async def slow_connect(request: Any, place: Awaitable[None]) -> Any:
        # The process stalls after its insert, unclaimed, while another one looks at it.
        [call_id] = [uuid.UUID(item["id"]) for item in await calls_listed(running)]
        claims: SessionClaims = running.app.state.claims
        await eventually(lambda: claims.still_held(ClaimKind.PLACING, call_id))
        await claims.release(ClaimKind.PLACING, call_id)
        await make_due(running, str(call_id), age=timedelta(seconds=30))
        await settled_first.wait()
        return await real_connect(request, place)

    service._exotel.connect = slow_connect
    placing = asyncio.create_task(running.client.post("/calls", json={"from": FROM, "to": TO}))
    reconciler = Reconciler(
        running.app.state.sessions,
        service._exotel,
        running.app.state.settings,
        running.app.state.claims,
    )

    async def looked_at_elsewhere() -> bool:
        async with running.app.state.sessions() as session:
            status = await session.scalar(select(Call.status))
        if status == "pending" and await reconciler.run_once():
            settled_first.set()
        return settled_first.is_set()

    await eventually(looked_at_elsewhere)
    answer = await placing

    assert connect.call_count == 1
    assert answer.status_code == 201
    [call] = await calls_listed(running)
    assert (call["sid"], call["status"]) == ("late-sid", answer.json()["status"])
    assert call["error"] is None or call["error"]["message"] != NEVER_SENT


async def calls_listed(running: RunningApp) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await running.client.get("/calls")).json()["items"]
    return items


async def test_a_sid_exotel_keeps_not_knowing_is_left_unknown_with_an_error(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    running, reconciler = reconciling.running, reconciling.reconciler()
    exotel.post("/connect.json").respond(200, json=connect_answer("lost-sid"))
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    call_id = placed.json()["id"]
    missing = exotel.get("/lost-sid.json").respond(
        404, json={"RestException": {"Status": 404, "Message": "Not found"}}
    )

    for look in range(1, SID_NOT_FOUND_LOOKS + 1):
        await make_due(running, call_id)
        assert await reconciler.run_once() == 1
        row = await call_row(running, call_id)
        if look < SID_NOT_FOUND_LOOKS:
            assert row.status == "in-progress"
            assert row.next_reconcile_at is not None

    call = (await running.client.get(f"/calls/{call_id}")).json()
    assert call["status"] == "unknown"
    assert call["sid"] == "lost-sid"
    assert call["error"]["message"] == SID_UNKNOWN
    assert (await call_row(running, call_id)).next_reconcile_at is None
    assert missing.call_count == SID_NOT_FOUND_LOOKS
    events = await reconcile_events(running, call_id)
    assert [event.event_type for event in events] == ["sid_not_found"] * SID_NOT_FOUND_LOOKS
    assert await reconciler.run_once() == 0


async def test_a_run_looks_at_every_due_call_the_fleet_budget_allows(
    reconciling: Reconciling, exotel: respx.MockRouter
) -> None:
    """No share of the limit per process: only the fleet limiter holds looks back."""
    running = reconciling.running
    for n in range(4):
        exotel.post("/connect.json").respond(200, json=connect_answer(f"sid-{n}"))
        placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
        exotel.get(f"/sid-{n}.json").respond(200, json=connect_answer(f"sid-{n}"))
        await make_due(running, placed.json()["id"])
    # 3 a minute: the old share (a third of it per run) allowed one look a run.
    settings = running.app.state.settings.model_copy(update={"exotel_requests_per_minute": 3})
    reconciler = Reconciler(
        running.app.state.sessions, reconciling.exotel, settings, running.app.state.claims
    )

    assert await reconciler.run_once() == 4


async def test_a_run_stops_when_the_limit_has_no_place_to_spare(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app(run_jobs=False, reconcile_interval_s=60)
    exotel.post("/connect.json").respond(200, json=connect_answer("a-sid"))
    placed = await running.client.post("/calls", json={"from": FROM, "to": TO})
    call_id = placed.json()["id"]
    await make_due(running, call_id)
    async with build_http_client(
        EXOTEL_BASE, api_key="exotel-key", api_token="exotel-token", timeout_s=1
    ) as http:
        full = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=NoPlaceToSpare())
        reconciler = Reconciler(
            running.app.state.sessions, full, running.app.state.settings, running.app.state.claims
        )
        assert await reconciler.run_once() == 0

    row = await call_row(running, call_id)
    assert row.reconcile_attempts == 0
    assert row.next_reconcile_at is not None
    assert row.next_reconcile_at <= datetime.now(UTC)  # still due, for the next run


class NoPlaceToSpare:
    async def acquire(self) -> None:
        raise LimitReached(retry_after_s=1)


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
