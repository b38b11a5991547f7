"""POST /callbacks/exotel against a real Postgres, driven the way Exotel drives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from fastapi import FastAPI
from sqlalchemy import text

from app.callbacks import applier as applier_module
from app.callbacks.applier import (
    POLL_INTERVAL_S,
    ROOM_WAIT_S,
    CallbackApplier,
)
from app.callbacks.service import CallbackInbox, ReceivedCallback
from app.calls.tokens import CallbackTokens
from app.exotel.callbacks import parse_callback
from app.middleware import MAX_BODY_BYTES
from tests.conftest import WAITING_CALLBACKS
from tests.exotel_callbacks import (
    JSON_SAMPLE,
    SAMPLE_SID,
    as_multipart,
    as_urlencoded,
    call_events,
    callback,
    form_of,
    form_sample,
    place_calls,
    read_call,
)
from tests.exotel_samples import connect_answer

IST = ZoneInfo("Asia/Kolkata")
SID = SAMPLE_SID
OTHER_SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"
VALID = {"from": "+919876543210", "to": "09123456789"}
JSON = {"content-type": "application/json"}


async def place_call(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> tuple[dict[str, Any], str]:
    [(call, url)] = await place_calls(client, exotel, SID)
    return call, url


def with_token(url: str, token: str | None) -> str:
    base = url.split("?", 1)[0]
    return base if token is None else f"{base}?token={token}"


# -- Exotel's samples, each encoding ---------------------------------------------------


async def test_exotels_json_sample(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    call, url = await place_call(client, exotel)

    response = await exotel_side.post(url, content=JSON_SAMPLE, headers=JSON)

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    stored = await read_call(client, SID)
    assert stored["status"] == "no-answer"
    assert datetime.fromisoformat(stored["end_time"]) == datetime(2019, 4, 8, 3, 18, 36, tzinfo=IST)
    assert stored["conversation_duration"] == 32
    assert stored["recording_url"] == (
        f"https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/<your_sid>/{SID}.mp3"
    )
    assert stored["legs"] == [
        {"leg": 0, "number": call["from"], "status": "completed", "on_call_duration": 41},
        {"leg": 1, "number": call["to"], "status": "completed", "on_call_duration": 32},
    ]
    [event] = await call_events(client, SID)
    assert event["payload"] == json.loads(JSON_SAMPLE)
    assert (event["source"], event["content_type"]) == ("callback", "application/json")
    assert (event["event_type"], event["status"], event["applied"]) == (
        "terminal",
        "no-answer",
        True,
    )


@pytest.mark.parametrize("encode", [as_multipart, as_urlencoded], ids=["multipart", "urlencoded"])
async def test_exotels_form_sample_with_a_leg_never_attempted(
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
    encode: Any,
) -> None:
    call, url = await place_call(client, exotel)

    request = exotel_side.build_request("POST", url, **encode(form_sample()))
    sent = await request.aread()
    response = await exotel_side.send(request)

    assert response.status_code == 200
    stored = await read_call(client, SID)
    assert stored["status"] == "no-answer"
    assert stored["recording_url"] is None
    assert stored["conversation_duration"] == 0
    assert datetime.fromisoformat(stored["end_time"]) == datetime(2019, 4, 8, 3, 11, 30, tzinfo=IST)
    assert stored["legs"] == [
        {"leg": 0, "number": call["from"], "status": "no-answer", "on_call_duration": 0},
        {"leg": 1, "number": call["to"], "status": None, "on_call_duration": 0},
    ]
    [event] = await call_events(client, SID)
    assert event["content_type"] == request.headers["content-type"]
    assert event["payload"] == sent.decode()


async def test_json_with_a_charset_parameter(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)
    response = await exotel_side.post(
        url, content=JSON_SAMPLE, headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert response.status_code == 200
    assert (await read_call(client, SID))["status"] == "no-answer"


# -- Apply rules through the endpoint ---------------------------------------------------


async def test_a_callback_delivered_three_times_is_applied_once(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)

    first = await exotel_side.post(url, json=callback(Status="completed"))
    after_first = await read_call(client, SID)
    for _ in range(2):
        again = await exotel_side.post(url, json=callback(Status="completed"))
        assert again.status_code == 200

    assert first.status_code == 200
    assert after_first["status"] == "completed"
    assert await read_call(client, SID) == after_first
    assert [event["applied"] for event in await call_events(client, SID)] == [True, False, False]


async def test_a_stored_callback_wakes_the_applier_of_its_process(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
) -> None:
    """Applied at once, not at the next poll: eight callbacks in a row, each applied well
    within half a poll interval (a poll alone would make about half of them wait longer)."""
    _, url = await place_call(client, exotel)
    waits_s = []
    for status in ["ringing", "in-progress"] * 4:
        stored_at = asyncio.get_running_loop().time()
        response = await exotel_side.post(url, json=callback(Status=status, EventType="answered"))
        assert response.status_code == 200
        async with app.state.engine.connect() as conn:
            while await conn.scalar(text(WAITING_CALLBACKS)):
                await conn.rollback()
                await asyncio.sleep(0.002)
        waits_s.append(asyncio.get_running_loop().time() - stored_at)

    assert max(waits_s) < POLL_INTERVAL_S / 2, waits_s


async def test_a_callback_another_process_stored_is_applied_as_one_stored_here(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
) -> None:
    """The endpoint hands its applier the callback it parsed; what another process stored
    is parsed again from the raw body: both apply the same."""
    [(_, url), (other, _)] = await place_calls(client, exotel, SID, OTHER_SID)
    other_body = json.dumps(callback(CallSid=OTHER_SID)).encode()
    parsed = await parse_callback(other_body, "application/json")
    # As another replica stores it: handed to that replica's applier, not to this one's.
    elsewhere = CallbackInbox(
        app.state.pool, CallbackApplier(app.state.engine, details_after=timedelta(0))
    )

    assert (await exotel_side.post(url, content=JSON_SAMPLE, headers=JSON)).status_code == 200
    await elsewhere.store(
        ReceivedCallback(
            uuid.UUID(other["id"]), parsed, other_body, "application/json", datetime.now(UTC)
        )
    )

    here, there = await read_call(client, SID), await read_call(client, OTHER_SID)
    assert here["status"] == "no-answer"
    ours = ("id", "sid", "created_at", "updated_at")
    assert {k: v for k, v in here.items() if k not in ours} == {
        k: v for k, v in there.items() if k not in ours
    }
    assert [e["applied"] for e in await call_events(client, OTHER_SID)] == [True]


async def test_callbacks_arriving_together_are_stored_by_one_statement_each_answered_as_its_own(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter, monkeypatch: Any
) -> None:
    """Group commit: what arrives while a statement is in flight is stored by the next
    one, and each callback still gets its own answer, and its own call its update."""
    [(first, _), (second, _)] = await place_calls(client, exotel, SID, OTHER_SID)
    checkouts = []
    pool = app.state.pool
    connection = pool.connection

    def counted_connection() -> Any:
        checkouts.append(1)
        return connection()

    monkeypatch.setattr(pool, "connection", counted_connection)
    now = datetime.now(UTC)

    async def received(call: dict[str, Any], **changes: Any) -> ReceivedCallback:
        body = json.dumps(callback(**changes)).encode()
        parsed = await parse_callback(body, "application/json")
        return ReceivedCallback(uuid.UUID(call["id"]), parsed, body, "application/json", now)

    batch = [
        await received(first, CallSid=SID, Status="ringing", EventType="answered"),
        await received(second, CallSid=OTHER_SID, Status="busy", ConversationDuration=0),
        await received(first, CallSid=OTHER_SID),  # another call's Sid: 403
        await received(first, CallSid=SID, Status="completed", ConversationDuration=41),
        ReceivedCallback(uuid.UUID(first["id"]), None, b"not json", "application/json", now),
    ]
    inbox: CallbackInbox = app.state.callback_inbox

    outcomes = await asyncio.gather(*(inbox.store(one) for one in batch), return_exceptions=True)

    assert [getattr(outcome, "status", outcome) for outcome in outcomes] == [
        None,
        None,
        403,
        None,
        None,
    ]
    # One statement stored the batch; the refusal looked its call up with one more.
    assert len(checkouts) == 2
    here, there = await read_call(client, SID), await read_call(client, OTHER_SID)
    assert (here["status"], here["conversation_duration"]) == ("completed", 41)
    assert (there["status"], there["conversation_duration"]) == ("busy", 0)
    assert [e["applied"] for e in await call_events(client, SID)] == [True, True, False]
    assert [e["applied"] for e in await call_events(client, OTHER_SID)] == [True]


async def backlogged_inbox(
    app: FastAPI, call: dict[str, Any]
) -> tuple[CallbackInbox, CallbackApplier, ReceivedCallback]:
    """An inbox whose applier (not running) has had a callback waiting BACKLOG_AGE_S,
    and a terminal callback for `call` to store with it."""
    applier = CallbackApplier(app.state.engine, details_after=timedelta(0))
    body = json.dumps(callback(CallSid=SID, Status="completed")).encode()
    parsed = await parse_callback(body, "application/json")
    applier.wake(-1, parsed)  # an id no stored event has
    await asyncio.sleep(applier_module.BACKLOG_AGE_S)
    received = ReceivedCallback(
        uuid.UUID(call["id"]), parsed, body, "application/json", datetime.now(UTC)
    )
    return CallbackInbox(app.state.pool, applier), applier, received


@pytest.fixture
def short_backlog_age(monkeypatch: Any) -> None:
    monkeypatch.setattr(applier_module, "BACKLOG_AGE_S", 0.1)


@pytest.mark.usefixtures("short_backlog_age")
async def test_storing_waits_while_the_applier_lags(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    """Under a load the applier cannot keep up with, the endpoint waits for it rather than
    let the lag grow: stored once the applier has made room."""
    [(call, _)] = await place_calls(client, exotel, SID)
    inbox, applier, received = await backlogged_inbox(app, call)

    store = asyncio.create_task(inbox.store(received))
    await asyncio.sleep(ROOM_WAIT_S / 3)
    waited = not store.done()
    events_while_waiting = await call_events(client, SID)
    stopping = asyncio.Event()
    runner = asyncio.create_task(applier.run(stopping))
    async with asyncio.timeout(ROOM_WAIT_S / 2):
        await store
    stopping.set()
    await runner

    assert waited
    assert events_while_waiting == []
    assert [e["applied"] for e in await call_events(client, SID)] == [True]


@pytest.mark.usefixtures("short_backlog_age")
async def test_storing_does_not_wait_for_an_applier_that_keeps_up(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    """A callback that has waited less than BACKLOG_AGE_S holds no other back."""
    [(call, _)] = await place_calls(client, exotel, SID)
    applier = CallbackApplier(app.state.engine, details_after=timedelta(0))
    body = json.dumps(callback(CallSid=SID, Status="completed")).encode()
    parsed = await parse_callback(body, "application/json")
    applier.wake(-1, parsed)
    received = ReceivedCallback(
        uuid.UUID(call["id"]), parsed, body, "application/json", datetime.now(UTC)
    )

    async with asyncio.timeout(applier_module.BACKLOG_AGE_S / 2):
        await CallbackInbox(app.state.pool, applier).store(received)

    assert len(await call_events(client, SID)) == 1


@pytest.mark.usefixtures("short_backlog_age")
async def test_storing_waits_for_the_applier_only_so_long(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter, monkeypatch: Any
) -> None:
    """An applier that cannot apply (its database refuses it, say) holds no callback back
    for longer than ROOM_WAIT_S: storing matters more than the lag."""
    monkeypatch.setattr(applier_module, "ROOM_WAIT_S", 0.2)
    [(call, _)] = await place_calls(client, exotel, SID)
    inbox, _, received = await backlogged_inbox(app, call)
    started = asyncio.get_running_loop().time()

    async with asyncio.timeout(2):
        await inbox.store(received)

    assert asyncio.get_running_loop().time() - started >= 0.2
    assert [e["applied"] for e in await call_events(client, SID)] == [True]


async def test_a_callback_applied_elsewhere_holds_no_other_back(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter, monkeypatch: Any
) -> None:
    """A callback stored here but applied by another process (its call was held when
    this applier took the others) has not waited for this applier: storing more goes on
    at once, not after the next poll."""
    monkeypatch.setattr(applier_module, "BACKLOG_AGE_S", 0.1)
    monkeypatch.setattr(applier_module, "POLL_INTERVAL_S", 30.0)
    monkeypatch.setattr(applier_module, "ROOM_WAIT_S", 10.0)
    [(first, _), (second, _)] = await place_calls(client, exotel, SID, OTHER_SID)
    inbox: CallbackInbox = app.state.callback_inbox

    async def received(call: dict[str, Any], **changes: Any) -> ReceivedCallback:
        body = json.dumps(callback(**changes)).encode()
        parsed = await parse_callback(body, "application/json")
        return ReceivedCallback(
            uuid.UUID(call["id"]), parsed, body, "application/json", datetime.now(UTC)
        )

    async with app.state.engine.connect() as elsewhere:
        await elsewhere.execute(
            text("SELECT 1 FROM calls WHERE id = :id FOR NO KEY UPDATE"), {"id": second["id"]}
        )
        ringing = await received(first, CallSid=SID, Status="ringing", EventType="answered")
        busy = await received(second, CallSid=OTHER_SID, Status="busy")
        await asyncio.gather(inbox.store(ringing), inbox.store(busy))
        first_applied = text(
            "SELECT count(*) FROM call_events WHERE call_id = :id AND processed_at IS NOT NULL"
        )
        async with app.state.engine.connect() as looking:
            while not await looking.scalar(first_applied, {"id": first["id"]}):
                await looking.rollback()
                await asyncio.sleep(0.01)
        await elsewhere.execute(
            text("UPDATE call_events SET processed_at = now(), applied = true WHERE call_id = :id"),
            {"id": second["id"]},
        )
        await elsewhere.commit()
    await asyncio.sleep(applier_module.BACKLOG_AGE_S)

    async with asyncio.timeout(1):
        await inbox.store(await received(first, CallSid=SID, Status="completed"))


async def test_concurrent_duplicates_are_applied_exactly_once(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)

    responses = await asyncio.gather(
        *(exotel_side.post(url, json=callback(Status="completed")) for _ in range(5))
    )

    assert {response.status_code for response in responses} == {200}
    assert sorted(event["applied"] for event in await call_events(client, SID)) == [False] * 4 + [
        True
    ]
    assert (await read_call(client, SID))["status"] == "completed"


async def test_a_stale_answered_after_completed_changes_nothing(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)
    await exotel_side.post(url, json=callback(Status="completed"))
    completed = await read_call(client, SID)

    stale = callback(
        EventType="answered",
        Status="in-progress",
        DateUpdated="2019-04-08 03:18:05",
        EndTime=None,
        Legs=[{"Status": "in-progress"}, {"Status": "in-progress"}],
    )
    response = await exotel_side.post(url, json=stale)

    assert response.status_code == 200
    assert await read_call(client, SID) == completed
    assert completed["status"] == "completed"
    assert [(e["event_type"], e["applied"]) for e in await call_events(client, SID)] == [
        ("terminal", True),
        ("answered", False),
    ]


async def test_an_empty_recording_url_does_not_erase_a_stored_one(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)
    await exotel_side.post(url, json=callback())
    recording = (await read_call(client, SID))["recording_url"]
    assert recording is not None

    later = [
        ("CallSid", SID),
        ("Status", "no-answer"),
        ("DateUpdated", "2019-04-08 03:19:00"),
        ("RecordingUrl", ""),
    ]
    assert (await exotel_side.post(url, **as_multipart(later))).status_code == 200
    assert (await exotel_side.post(url, json=callback(RecordingUrl=None))).status_code == 200

    assert (await read_call(client, SID))["recording_url"] == recording
    assert len(await call_events(client, SID)) == 3


async def test_terminal_callback_committed_before_the_connect_answer(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    """Exotel calls back while POST /calls still waits for its connect answer."""
    seen_while_pending: list[dict[str, Any]] = []
    delivered: list[httpx.Response] = []

    async def exotel_connect(request: httpx.Request) -> httpx.Response:
        seen_while_pending.extend((await client.get("/calls")).json()["items"])
        delivered.append(
            await exotel_side.post(form_of(request)["StatusCallback"], json=callback())
        )
        return httpx.Response(200, json=connect_answer(SID))  # says `in-progress`

    exotel.post("/connect.json").mock(side_effect=exotel_connect)

    response = await client.post("/calls", json=VALID)

    assert [(c["status"], c["sid"]) for c in seen_while_pending] == [("pending", None)]
    assert delivered[0].status_code == 200
    assert response.status_code == 201
    # The callback stored first is applied before the answer: POST /calls tells what it
    # said, and the call ends so.
    assert (response.json()["sid"], response.json()["status"]) == (SID, "no-answer")
    stored = await read_call(client, SID)
    assert stored["status"] == "no-answer"
    assert stored["recording_url"] is not None
    assert datetime.fromisoformat(stored["end_time"]) == datetime(2019, 4, 8, 3, 18, 36, tzinfo=IST)
    # The connect answer still filled what the callback did not say.
    assert datetime.fromisoformat(stored["start_time"]) == datetime(
        2019, 4, 8, 3, 17, 59, tzinfo=IST
    )
    assert stored["direction"] == "outbound-api"
    [event] = await call_events(client, SID)
    assert event["applied"] is True


@pytest.mark.parametrize("answer_delay", range(10))
async def test_terminal_callback_racing_the_connect_answer(
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
    answer_delay: int,
) -> None:
    """Callback and connect answer contend for the call's row lock: either order ends terminal."""
    deliveries: list[asyncio.Task[httpx.Response]] = []

    async def exotel_connect(request: httpx.Request) -> httpx.Response:
        url = form_of(request)["StatusCallback"]
        deliveries.append(asyncio.create_task(exotel_side.post(url, json=callback())))
        for _ in range(answer_delay):
            await asyncio.sleep(0)
        return httpx.Response(200, json=connect_answer(SID))

    exotel.post("/connect.json").mock(side_effect=exotel_connect)

    response = await client.post("/calls", json=VALID)
    delivered = await deliveries[0]

    assert response.status_code == 201
    assert delivered.status_code == 200
    stored = await read_call(client, SID)
    assert (stored["sid"], stored["status"]) == (SID, "no-answer")
    assert stored["direction"] == "outbound-api"


async def test_a_callback_for_a_call_whose_answer_was_lost_attaches_its_sid(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    route = exotel.post("/connect.json").mock(side_effect=httpx.ReadTimeout("slow"))
    lost = await client.post("/calls", json=VALID)
    assert lost.status_code == 504
    url = form_of(route.calls.last.request)["StatusCallback"]

    response = await exotel_side.post(url, json=callback(Status="completed"))

    assert response.status_code == 200
    stored = await read_call(client, lost.json()["id"])
    assert (stored["sid"], stored["status"]) == (SID, "completed")
    # The timeout said the outcome was unknown; now it is known: placed, no error.
    assert stored["error"] is None
    assert len(await call_events(client, SID)) == 1


@contextlib.asynccontextmanager
async def database_refusing(app: FastAPI, table: str, check: str) -> AsyncIterator[None]:
    """A constraint that stands in for whatever the database may still refuse: the parser
    lets through only values the columns can take (a longer text is "not said",
    tests/api/test_hostile_callbacks_applied.py)."""
    async with app.state.engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT test_refused CHECK ({check})"))
    try:
        yield
    finally:
        async with app.state.engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT test_refused"))


async def test_a_value_the_database_refuses_keeps_the_event_and_the_call(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
) -> None:
    _, url = await place_call(client, exotel)
    before = await read_call(client, SID)

    async with database_refusing(app, "calls", "direction <> 'refused-by-db'"):
        response = await exotel_side.post(url, json=callback(Direction="refused-by-db"))
        assert response.status_code == 200
        assert await read_call(client, SID) == before

    [event] = await call_events(client, SID)
    assert event["applied"] is False
    assert event["payload"]["Direction"] == "refused-by-db"


# -- Authentication -------------------------------------------------------------------


async def assert_nothing_changed(client: httpx.AsyncClient, calls: list[dict[str, Any]]) -> None:
    for call in calls:
        assert await read_call(client, call["id"]) == call
        assert await call_events(client, call["id"]) == []


async def test_a_missing_token_is_401_and_changes_nothing(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    call, url = await place_call(client, exotel)
    for target in (with_token(url, None), with_token(url, "")):
        response = await exotel_side.post(target, json=callback())
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
    await assert_nothing_changed(client, [call])


async def test_forged_tokens_are_403_and_change_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
) -> None:
    call, url = await place_call(client, exotel)
    token = parse_qs(urlsplit(url).query)["token"][0]
    call_id = uuid.UUID(call["id"])
    forged = [
        token[:-1] + ("0" if token[-1] != "0" else "1"),
        CallbackTokens("another-secret").for_call(call_id),
        call_id.hex,
        "not-a-token",
        token.split(".")[1],
    ]
    for bad in forged:
        response = await exotel_side.post(with_token(url, bad), json=callback())
        assert response.status_code == 403, bad
        assert response.headers["content-type"] == "application/problem+json"
    await assert_nothing_changed(client, [call])


async def test_a_token_never_changes_another_call(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    [(first, first_url), (second, _)] = await place_calls(client, exotel, SID, OTHER_SID)

    for sid in (OTHER_SID, "a-sid-no-call-has"):
        response = await exotel_side.post(first_url, json=callback(CallSid=sid))
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"

    await assert_nothing_changed(client, [first, second])


async def test_a_token_of_a_call_without_sid_cannot_take_another_calls_sid(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    await place_calls(client, exotel, OTHER_SID)
    route = exotel.post("/connect.json").mock(side_effect=httpx.ReadTimeout("slow"))
    lost = await client.post("/calls", json=VALID)
    url = form_of(route.calls.last.request)["StatusCallback"]
    calls = [await read_call(client, OTHER_SID), await read_call(client, lost.json()["id"])]

    response = await exotel_side.post(url, json=callback(CallSid=OTHER_SID))

    assert response.status_code == 403
    await assert_nothing_changed(client, calls)


async def test_a_token_for_a_call_that_is_not_stored_is_404(
    app: FastAPI, exotel_side: httpx.AsyncClient
) -> None:
    token = app.state.tokens.for_call(uuid.uuid4())
    response = await exotel_side.post(f"/callbacks/exotel?token={token}", json=callback())
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# -- Bodies that are not callbacks ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "status", "slug"),
    [
        (b'{"CallSid": "492205107c5fb48f4ac25d1f77759339",', "application/json", 400, "unreadable"),
        (b"[]", "application/json", 400, "unreadable"),
        (b"CallSid=x", "multipart/form-data", 400, "unreadable"),
        (b'{"Status": "completed"}', "application/json", 422, "validation-error"),
        (b'{"CallSid": "", "Status": "completed"}', "application/json", 422, "validation-error"),
        (b"Status=completed&CallSid=", "application/x-www-form-urlencoded", 422, "validation"),
        (JSON_SAMPLE, "text/plain", 415, "unsupported-media-type"),
        (JSON_SAMPLE, None, 415, "unsupported-media-type"),
    ],
)
async def test_bodies_that_are_not_callbacks_are_refused_stored_and_not_applied(
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
    content: bytes,
    content_type: str | None,
    status: int,
    slug: str,
) -> None:
    call, url = await place_call(client, exotel)
    headers = {"content-type": content_type} if content_type else {}

    response = await exotel_side.post(url, content=content, headers=headers)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert slug in response.json()["type"]
    assert await read_call(client, call["id"]) == call
    # Kept as received, for whoever has to find out what was sent.
    [event] = await call_events(client, call["id"])
    assert event["applied"] is False
    if isinstance(event["payload"], str):
        assert event["payload"].encode() == content
    else:  # a JSON body that parses, shown as its document
        assert event["payload"] == json.loads(content)


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        # Every byte value, in a body that cannot be read as text.
        (bytes(range(256)) * 2, "application/json", 400),
        # A callback whose values need escaping in JSON: quotes, a backslash, a NUL.
        (
            b"CallSid=492205107c5fb48f4ac25d1f77759339&Status=completed&EventType=terminal"
            b"&CustomField=%22a%5Cb%00%E0%A4%95%F0%9F%93%9E",
            'application/x-www-form-urlencoded; charset="utf-8"',
            200,
        ),
    ],
)
async def test_a_body_is_stored_byte_for_byte(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
    content: bytes,
    content_type: str,
    status: int,
) -> None:
    """The store hands Postgres its batch as JSON text: the raw body (in base64), the
    content type and the time come out of it as they went in."""
    call, url = await place_call(client, exotel)
    before = datetime.now(UTC)

    response = await exotel_side.post(url, content=content, headers={"content-type": content_type})

    assert response.status_code == status
    async with app.state.engine.connect() as conn:
        [row] = (
            await conn.execute(
                text(
                    "SELECT raw_body, content_type, call_sid, received_at FROM call_events "
                    "WHERE call_id = :call_id AND source = 'callback'"
                ),
                {"call_id": call["id"]},
            )
        ).all()
    assert row.raw_body == content
    assert row.content_type == content_type
    assert row.call_sid == (SID if status == 200 else None)
    assert before <= row.received_at <= datetime.now(UTC)


async def test_a_missing_call_sid_is_named(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    _, url = await place_call(client, exotel)
    payload = callback()
    del payload["CallSid"]
    response = await exotel_side.post(url, json=payload)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["CallSid"]


def padded(size: int) -> bytes:
    """A valid JSON callback of exactly `size` bytes."""
    base = json.dumps(callback(CustomField=""))
    body = base[:-1] + ', "Padding": ""}'
    return (body[:-2] + "x" * (size - len(body)) + '"}').encode()


async def test_a_body_of_the_limit_is_accepted_and_one_byte_more_is_413(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    call, url = await place_call(client, exotel)
    too_large = padded(MAX_BODY_BYTES + 1)
    assert len(too_large) == MAX_BODY_BYTES + 1

    refused = await exotel_side.post(url, content=too_large, headers=JSON)
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/problem+json"
    await assert_nothing_changed(client, [call])

    accepted = await exotel_side.post(url, content=padded(MAX_BODY_BYTES), headers=JSON)
    assert accepted.status_code == 200
    [event] = await call_events(client, SID)
    assert event["payload"] == json.loads(padded(MAX_BODY_BYTES))


async def test_a_streamed_body_over_the_limit_is_cut_off_without_reading_it_all(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    call, url = await place_call(client, exotel)
    chunk = 4096
    total = 16 * MAX_BODY_BYTES
    sent = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < total:
            sent += chunk
            yield b" " * chunk

    response = await exotel_side.post(url, content=endless_body(), headers=JSON)

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert sent <= MAX_BODY_BYTES + chunk
    await assert_nothing_changed(client, [call])


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    call, url = await place_call(client, exotel)
    read = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield JSON_SAMPLE

    response = await exotel_side.post(
        url,
        content=body(),
        headers={**JSON, "content-length": str(MAX_BODY_BYTES + 1)},
    )

    assert response.status_code == 413
    assert not read
    await assert_nothing_changed(client, [call])


# -- What the callback path shows of itself ---------------------------------------------


async def test_logs_show_neither_tokens_nor_full_numbers(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call, url = await place_call(client, exotel)
    token = parse_qs(urlsplit(url).query)["token"][0]
    # Refused in the statement writing the legs, whose parameters are the numbers.
    async with database_refusing(app, "call_legs", "answered_by <> 'refused'"):
        await exotel_side.post(url, json=callback(Legs=[{"AnsweredBy": "refused"}]))
        await client.get(f"/calls/{call['id']}")  # once the applier is through
    await exotel_side.post(url, json=callback())
    await exotel_side.post(with_token(url, token[:-1]), json=callback())
    await exotel_side.post(url, json=callback(CallSid=OTHER_SID))

    await client.get(f"/calls/{call['id']}")  # once the applier is through
    assert "callback_sid_mismatch" in caplog.text
    for secret in (token, token.split(".")[1], call["from"], call["to"]):
        assert secret not in caplog.text


async def test_the_callback_route_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/callbacks/exotel"]["post"]
    assert set(operation["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json",
    }
    assert {"200", "400", "401", "403", "413", "415", "422"} <= set(operation["responses"])
    assert [parameter["name"] for parameter in operation["parameters"]] == ["token"]


async def test_callback_outcomes_are_counted_in_metrics(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    async def counted(metric: str, outcome: str) -> float:
        metrics = (await client.get("/metrics")).text
        prefix = f'{metric}{{outcome="{outcome}"}} '
        lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
        return float(lines[0].removeprefix(prefix)) if lines else 0.0

    received, applied = "callbridge_callbacks_total", "callbridge_callbacks_applied_total"
    _, url = await place_call(client, exotel)
    before = {
        "stored": await counted(received, "stored"),
        "forged": await counted(received, "callback-token-invalid"),
        "applied": await counted(applied, "applied"),
        "unchanged": await counted(applied, "unchanged"),
    }

    await exotel_side.post(url, json=callback())
    await exotel_side.post(url, json=callback())
    await exotel_side.post(with_token(url, "not-a-token"), json=callback())

    assert await counted(received, "stored") == before["stored"] + 2
    assert await counted(received, "callback-token-invalid") == before["forged"] + 1
    assert await counted(applied, "applied") == before["applied"] + 1
    assert await counted(applied, "unchanged") == before["unchanged"] + 1
