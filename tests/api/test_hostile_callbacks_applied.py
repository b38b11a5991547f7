"""Hostile callbacks through the applier: what is valid is applied, the rest is not
(issue 11 items 12, 14 and 15)."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import respx
from fastapi import FastAPI
from sqlalchemy import text

from tests.exotel_callbacks import SAMPLE_SID, call_events, callback, place_calls, read_call

IST = ZoneInfo("Asia/Kolkata")
OTHER_SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"


async def metric(client: httpx.AsyncClient, name: str, outcome: str) -> float:
    prefix = f'{name}{{outcome="{outcome}"}} '
    lines = [line for line in (await client.get("/metrics")).text.splitlines()]
    found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    return float(found[0]) if found else 0.0


async def test_a_value_too_long_for_its_column_does_not_drop_the_rest(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    [(_, url)] = await place_calls(client, exotel, SAMPLE_SID)
    legs = [{"Status": "completed", "AnsweredBy": "x" * 40}, {"Status": "completed"}]

    response = await exotel_side.post(
        url, json=callback(Status="completed", Direction="outbound-" + "a" * 40, Legs=legs)
    )

    assert response.status_code == 200
    stored = await read_call(client, SAMPLE_SID)
    assert stored["status"] == "completed"
    assert stored["conversation_duration"] == 32
    assert stored["direction"] == "outbound-api"
    assert stored["answered_by"] is None
    [event] = await call_events(client, SAMPLE_SID)
    assert event["applied"] is True


async def test_a_second_different_terminal_status_is_stored_not_applied_and_counted(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    [(_, url)] = await place_calls(client, exotel, SAMPLE_SID)
    await exotel_side.post(url, json=callback(Status="completed"))
    finished = await read_call(client, SAMPLE_SID)
    conflicting_before = await metric(client, "callbridge_callbacks_applied_total", "conflicting")

    later = callback(Status="busy", DateUpdated="2019-04-08 03:25:00", ConversationDuration=0)
    assert (await exotel_side.post(url, json=later)).status_code == 200

    assert await read_call(client, SAMPLE_SID) == finished
    assert finished["status"] == "completed"
    assert [(e["status"], e["applied"]) for e in await call_events(client, SAMPLE_SID)] == [
        ("completed", True),
        ("busy", False),
    ]
    conflicting = await metric(client, "callbridge_callbacks_applied_total", "conflicting")
    assert conflicting == conflicting_before + 1


async def test_an_end_before_the_start_is_not_applied(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    [(_, url)] = await place_calls(client, exotel, SAMPLE_SID)
    started = (await read_call(client, SAMPLE_SID))["start_time"]
    assert started is not None

    ended_before = callback(Status="completed", StartTime=None, EndTime="2017-03-03 10:00:00")
    assert (await exotel_side.post(url, json=ended_before)).status_code == 200

    stored = await read_call(client, SAMPLE_SID)
    assert stored["status"] == "completed"
    assert stored["start_time"] == started
    assert stored["end_time"] is None
    assert datetime.fromisoformat(started) > datetime(2017, 3, 3, 10, 0, tzinfo=IST)


async def test_a_call_that_cannot_be_read_does_not_hold_up_other_calls_callbacks(
    app: FastAPI,
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_side: httpx.AsyncClient,
) -> None:
    """Issue 11 item 1: such a row cannot be written any more (times outside 2000..tomorrow
    are not applied), but one written before must not stop the applier for the others."""
    [(poisoned, poisoned_url), (_, healthy_url)] = await place_calls(
        client, exotel, SAMPLE_SID, OTHER_SID
    )
    async with app.state.engine.begin() as conn:
        # Year 0 once in UTC: Postgres stores it, the driver cannot read it back.
        await conn.execute(
            text("UPDATE calls SET end_time = '0001-01-01 00:00:00+05:30' WHERE id = :id"),
            {"id": uuid.UUID(poisoned["id"])},
        )

    for url, sid in ((poisoned_url, SAMPLE_SID), (healthy_url, OTHER_SID)):
        answer = await exotel_side.post(url, json=callback(CallSid=sid, Status="completed"))
        assert answer.status_code == 200

    assert (await read_call(client, OTHER_SID))["status"] == "completed"
    async with app.state.engine.connect() as conn:
        events = (
            await conn.execute(
                text("SELECT call_sid, processed_at IS NOT NULL, applied FROM call_events")
            )
        ).all()
    assert sorted(tuple(event) for event in events) == sorted(
        [(SAMPLE_SID, True, False), (OTHER_SID, True, True)]
    )
