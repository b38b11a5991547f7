"""GET /calls/{ref} and GET /calls render the call resource in Postgres (app.calls.store,
CALL_RESOURCE_JSON); POST /calls renders it with CallOut. Both must say the same thing,
value for value, for every shape a call row can take."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import insert

from app.calls import store
from app.calls.schemas import CallOut

IST = timezone(timedelta(hours=5, minutes=30))
CREATED = datetime(2026, 11, 30, 9, 15, 27, 123456, tzinfo=UTC)


def call_row(**values: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "status": "pending",
        "from_number": "+919876543210",
        "to_number": "+919123456789",
        "caller_id": "+918047112233",
        "api_client": "orders",
        "created_at": CREATED,
        "updated_at": CREATED,
        **values,
    }


# A call in each shape that changes how it renders: nothing learnt yet; finished with
# every figure (whole-second and fractional times, IST offsets, a price with trailing
# zeros, legs, a notification); refused with Exotel's error and no status code; a leg
# never attempted; text that JSON must escape.
CALLS: list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]] = [
    (call_row(), [{"leg": 0, "number": "+919876543210"}], None),
    (
        call_row(
            sid="a1b2c3d4e5f60718293a4b5c6d7e8f90",
            status="completed",
            direction="outbound-api",
            custom_field="order-42",
            start_time=datetime(2026, 11, 30, 14, 45, 28, tzinfo=IST),
            end_time=datetime(2026, 11, 30, 14, 46, 9, 500000, tzinfo=IST),
            duration=41,
            conversation_duration=32,
            price=Decimal("1.5000"),
            recording_url="https://recordings.exotel.com/exotelrecordings/acme/a1b2.mp3",
            answered_by="human",
            updated_at=CREATED + timedelta(minutes=1),
        ),
        [
            {"leg": 0, "number": "+919876543210", "status": "completed", "on_call_duration": 41},
            {"leg": 1, "number": "+919123456789", "status": "completed", "on_call_duration": 32},
        ],
        {"status": "delivered", "attempts": 2, "last_error": "HTTP 503"},
    ),
    (
        call_row(
            status="failed",
            error_message="Call to a number on the DND registry",
            error_code="34",
            price=Decimal("0"),
        ),
        [],
        None,
    ),
    (
        call_row(
            status="unknown",
            error_status=504,
            custom_field='quote " backslash \\ tab \t unicode é',
        ),
        [
            {"leg": 0, "number": "+919876543210", "status": "no-answer"},
            {"leg": 1, "number": "+919123456789"},
        ],
        {"status": "pending", "attempts": 0, "last_error": None},
    ),
]


async def store_calls(app: FastAPI) -> list[uuid.UUID]:
    async with app.state.engine.begin() as conn:
        for row, legs, notify in CALLS:
            await conn.execute(insert(store.calls).values(row))
            for leg in legs:
                await conn.execute(insert(store.call_legs).values(call_id=row["id"], **leg))
            if notify is not None:
                await conn.execute(
                    insert(store.notifications).values(
                        id=f"msg_{uuid.uuid4().hex}",
                        call_id=row["id"],
                        event_type=store.FINISHED,
                        url="https://orders.example.com/hooks/calls",
                        **notify,
                    )
                )
    return [row["id"] for row, _, _ in CALLS]


async def rendered_by_callout(app: FastAPI, call_id: uuid.UUID) -> Any:
    async with app.state.engine.connect() as conn:
        call = await store.read(conn, call_id)
    assert call is not None
    return CallOut.from_state(call).model_dump(mode="json", by_alias=True)


async def test_a_call_reads_as_callout_renders_it(app: FastAPI, client: httpx.AsyncClient) -> None:
    for call_id in await store_calls(app):
        response = await client.get(f"/calls/{call_id}")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == await rendered_by_callout(app, call_id)


async def test_a_call_reads_the_same_by_its_sid(app: FastAPI, client: httpx.AsyncClient) -> None:
    call_id = (await store_calls(app))[1]

    by_sid = await client.get("/calls/a1b2c3d4e5f60718293a4b5c6d7e8f90")

    assert by_sid.json() == await rendered_by_callout(app, call_id)


async def test_times_read_as_callout_writes_them(app: FastAPI, client: httpx.AsyncClient) -> None:
    call_id = (await store_calls(app))[1]

    body = (await client.get(f"/calls/{call_id}")).json()

    # UTC with Z; microseconds only when there are any, as pydantic writes them.
    assert body["created_at"] == "2026-11-30T09:15:27.123456Z"
    assert body["start_time"] == "2026-11-30T09:15:28Z"
    assert body["end_time"] == "2026-11-30T09:16:09.500000Z"
    assert body["price"] == 1.5


async def test_a_page_holds_each_call_as_callout_renders_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    call_ids = await store_calls(app)

    page = (await client.get("/calls", params={"limit": 2})).json()
    rest = (await client.get("/calls", params={"limit": 2, "cursor": page["next_cursor"]})).json()

    read = {item["id"]: item for item in page["items"] + rest["items"]}
    assert rest["next_cursor"] is None
    # Equal as JSON values (a price of 0 is `0` from Postgres, `0.0` from Python).
    assert read == {str(call_id): await rendered_by_callout(app, call_id) for call_id in call_ids}


async def test_the_routes_beside_the_hot_one_are_still_fastapis(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """GET /calls/{ref} is answered in front of FastAPI's routing (app.middleware.HotRoutes):
    its other methods, a trailing slash and the routes below it still reach FastAPI."""
    call_id = (await store_calls(app))[1]

    assert (await client.get(f"/calls/{call_id}")).status_code == 200
    for method in ("DELETE", "PUT", "HEAD"):
        not_allowed = await client.request(method, f"/calls/{call_id}")
        assert not_allowed.status_code == 405
        assert not_allowed.headers["allow"] == "GET"
    redirected = await client.get(f"/calls/{call_id}/")
    assert redirected.status_code == 307
    assert redirected.headers["location"].endswith(f"/calls/{call_id}")
    assert (await client.get(f"/calls/{call_id}/events")).status_code == 200
