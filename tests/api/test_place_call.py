"""POST /calls against a real Postgres, with Exotel replaced at the HTTP boundary."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from fastapi import FastAPI
from sqlalchemy import text

from tests.conftest import EXOTEL_ACCOUNT, READER_KEY
from tests.exotel_samples import connect_answer, rest_exception

SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"
VALID = {"from": "+919876543210", "to": "09123456789"}


def form_of(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


async def stored_calls(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/calls")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_places_a_call_and_reads_it_back(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))

    response = await client.post("/calls", json={**VALID, "custom_field": "order-1"})

    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/calls/{SID}"
    assert body["sid"] == SID
    assert body["status"] == "in-progress"
    assert body["from"] == "+919876543210"
    assert body["to"] == "+919123456789"
    assert body["caller_id"] == "+918047112233"
    assert body["custom_field"] == "order-1"
    assert datetime.fromisoformat(body["start_time"]) == datetime(
        2017, 3, 3, 10, 48, 33, tzinfo=ZoneInfo("Asia/Kolkata")
    )
    assert [leg["number"] for leg in body["legs"]] == ["+919876543210", "+919123456789"]
    assert route.call_count == 1
    by_sid = await client.get(f"/calls/{SID}")
    by_id = await client.get(f"/calls/{body['id']}")
    assert by_sid.status_code == by_id.status_code == 200
    assert by_sid.json() == by_id.json() == body


async def test_sends_exactly_the_documented_form_and_basic_auth(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    await client.post(
        "/calls",
        json={
            **VALID,
            "caller_id": "08047112244",
            "call_type": "trans",
            "time_limit": 600,
            "time_out": 30,
            "wait_url": "https://cdn.example.com/hold.wav",
            "record": True,
            "recording_channels": "dual",
            "recording_format": "mp3-hq",
            "custom_field": "order-9",
            "start_playback_to": "both",
            "start_playback_value": "https://cdn.example.com/intro.mp3",
            "stream_url": "wss://stream.example.com/audio",
            "stream_begin": "leg2_connect",
        },
    )
    request = route.calls.last.request
    assert request.url.path == f"/v1/Accounts/{EXOTEL_ACCOUNT}/Calls/connect.json"
    assert "@" not in str(request.url)
    expected_auth = base64.b64encode(b"exotel-key:exotel-token").decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = form_of(request)
    callback = form.pop("StatusCallback")
    assert form == {
        "From": "+919876543210",
        "To": "+919123456789",
        "CallerId": "08047112244",  # the ExoPhone in national form, as Exotel shows it
        "CallType": "trans",
        "TimeLimit": "600",
        "TimeOut": "30",
        "WaitUrl": "https://cdn.example.com/hold.wav",
        "Record": "true",
        "RecordingChannels": "dual",
        "RecordingFormat": "mp3-hq",
        "CustomField": "order-9",
        "StartPlaybackTo": "Both",
        "StartPlaybackValue": "https://cdn.example.com/intro.mp3",
        "StreamUrl": "wss://stream.example.com/audio",
        "StreamBegin": "Leg2Connect",
        "StatusCallbackEvents[0]": "terminal",
        "StatusCallbackEvents[1]": "answered",
        "StatusCallbackContentType": "application/json",
    }
    parts = urlsplit(callback)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://callbridge.test/callbacks/exotel"
    )
    token = parse_qs(parts.query)["token"][0]
    call_id = (await stored_calls(client))[0]["id"]
    assert app.state.tokens.verify(token) is not None
    assert str(app.state.tokens.verify(token)) == call_id


async def test_omits_options_that_were_not_asked_for(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    await client.post("/calls", json=VALID)
    assert set(form_of(route.calls.last.request)) == {
        "From",
        "To",
        "CallerId",
        "StatusCallback",
        "StatusCallbackEvents[0]",
        "StatusCallbackEvents[1]",
        "StatusCallbackContentType",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": "12345"}, "from"),
        ({"to": "not a number"}, "to"),
        ({"to": ""}, "to"),
        ({"caller_id": "+1"}, "caller_id"),
        ({"call_type": "promo"}, "call_type"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": 14401}, "time_limit"),
        ({"time_out": 61}, "time_out"),
        ({"time_out": 0}, "time_out"),
        ({"wait_url": "https://cdn.example.com/hold.mp3"}, "wait_url"),
        ({"wait_url": "ftp://cdn.example.com/hold.wav"}, "wait_url"),
        ({"record": "perhaps"}, "record"),
        ({"recording_channels": "stereo"}, "recording_channels"),
        ({"recording_format": "wav"}, "recording_format"),
        ({"custom_field": "x" * 129}, "custom_field"),
        ({"start_playback_to": "caller"}, "start_playback_to"),
        ({"start_playback_value": "file:///etc/passwd"}, "start_playback_value"),
        ({"stream_url": "https://stream.example.com"}, "stream_url"),
        ({"stream_begin": "Leg1Connect"}, "stream_begin"),
        ({"notify_url": "ftp://hooks.example.com"}, "notify_url"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_rejects_invalid_requests_without_calling_exotel(
    client: httpx.AsyncClient, exotel: respx.MockRouter, change: dict[str, Any], field: str
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))

    response = await client.post("/calls", json={**VALID, **change})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert field in [error["field"] for error in problem["errors"]]
    assert route.call_count == 0
    assert await stored_calls(client) == []


@pytest.mark.parametrize("missing", ["from", "to"])
async def test_rejects_missing_numbers(client: httpx.AsyncClient, missing: str) -> None:
    body = {key: value for key, value in VALID.items() if key != missing}
    response = await client.post("/calls", json=body)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [missing]


async def test_rejects_a_body_that_is_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/calls", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"", "body"),
        (b"null", "body"),
        (b"[]", "body"),
        (b'{"from": 1', "10"),
        (b"\xff", "body"),
        (b"[" * 20_000 + b"]" * 20_000, "body"),
        (b'{"time_limit": ' + b"9" * 5_000 + b"}", "body"),
    ],
    ids=["empty", "null", "a-list", "cut-short", "not-utf-8", "too-deep", "too-long-a-number"],
)
async def test_a_body_that_is_no_request_is_422_naming_where(
    client: httpx.AsyncClient, exotel: respx.MockRouter, content: bytes, field: str
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))

    response = await client.post(
        "/calls", content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [field]
    assert route.call_count == 0


async def test_errors_in_the_body_and_the_idempotency_key_are_told_together(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/calls", json={"from": VALID["from"]}, headers={"Idempotency-Key": ""}
    )

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["Idempotency-Key", "to"]


async def test_the_routes_beside_the_hot_one_are_still_fastapis(
    client: httpx.AsyncClient,
) -> None:
    """POST /calls is answered in front of FastAPI's routing (app.middleware.HotRoutes):
    its other methods and a trailing slash still reach FastAPI."""
    not_allowed = await client.put("/calls", json=VALID)
    assert not_allowed.status_code == 405
    assert "POST" in not_allowed.headers["allow"]
    redirected = await client.post("/calls/", json=VALID)
    assert redirected.status_code == 307
    assert redirected.headers["location"].endswith("/calls")


async def test_local_number_forms_use_the_default_country(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await client.post("/calls", json={"from": "09876543210", "to": "08041702400"})
    assert response.status_code == 201
    form = form_of(route.calls.last.request)
    assert (form["From"], form["To"]) == ("+919876543210", "+918041702400")


@pytest.mark.parametrize(
    ("exotel_status", "payload", "status", "slug"),
    [
        (400, rest_exception(400, "Invalid parameter: To", 13223), 422, "exotel-refused"),
        (
            403,
            rest_exception(
                403, "Call to [09123456789] cannot be made because of TRAI NDNC regulations"
            ),
            422,
            "exotel-refused",
        ),
        (403, rest_exception(403, "Account is not KYC compliant", 11234), 422, "exotel-refused"),
        (402, rest_exception(402, "Plan limit reached"), 422, "exotel-refused"),
        (401, rest_exception(401, "Authentication is required"), 502, "exotel-auth-failed"),
        (500, rest_exception(500, "Service Unavailable; ", 35008), 502, "exotel-unavailable"),
        (503, {"unexpected": "shape"}, 502, "exotel-unavailable"),
    ],
)
async def test_maps_exotel_errors_and_keeps_them_on_the_call(
    client: httpx.AsyncClient,
    exotel: respx.MockRouter,
    exotel_status: int,
    payload: dict[str, Any],
    status: int,
    slug: str,
) -> None:
    exotel.post("/connect.json").respond(exotel_status, json=payload)

    response = await client.post("/calls", json=VALID)

    assert response.status_code == status
    problem = response.json()
    assert problem["type"].endswith(slug)
    stored = (await stored_calls(client))[0]
    assert problem["id"] == stored["id"]
    assert stored["status"] == "failed"
    assert stored["error"]["status"] == exotel_status
    message = payload.get("RestException", {}).get("Message")
    if message:
        assert stored["error"]["message"] == message
        if status == 422:
            assert problem["detail"] == message


async def test_exotel_rate_limit_answers_503_with_retry_after(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    exotel.post("/connect.json").respond(
        429,
        json=rest_exception(429, "Too many requests", "RATE_LIMIT_EXCEEDED"),
        headers={"Retry-After": "30"},
    )
    response = await client.post("/calls", json=VALID)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    stored = (await stored_calls(client))[0]
    assert stored["error"]["code"] == "RATE_LIMIT_EXCEEDED"


async def connect_reserved_at(app: FastAPI, call_id: str) -> datetime | None:
    async with app.state.engine.connect() as conn:
        found: datetime | None = await conn.scalar(
            text("SELECT connect_reserved_at FROM calls WHERE id = :id"), {"id": call_id}
        )
        return found


async def test_a_call_is_stored_with_its_place_under_the_exotel_limit_or_not_sent(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))

    placed = await client.post("/calls", json=VALID)
    # The fleet's Exotel bucket, full for the next hour.
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE rate_limit_buckets SET tat = now() + interval '1 hour' WHERE key = :key"),
            {"key": f"exotel:{EXOTEL_ACCOUNT}"},
        )
    refused = await client.post("/calls", json=VALID)

    assert placed.status_code == 201
    # Marked as possibly sent by the statement that stored it with its place.
    assert await connect_reserved_at(app, placed.json()["id"]) is not None
    assert refused.status_code == 503
    assert refused.json()["type"].endswith("/exotel-rate-limited")
    assert int(refused.headers["retry-after"]) > 3000
    assert route.call_count == 1
    # Stored without a place: surely never sent, and failed as such.
    assert await connect_reserved_at(app, refused.json()["id"]) is None
    assert (await client.get(f"/calls/{refused.json()['id']}")).json()["status"] == "failed"


async def test_unreachable_exotel_is_502_and_stored(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").mock(side_effect=httpx.ConnectError("refused"))
    response = await client.post("/calls", json=VALID)
    assert response.status_code == 502
    assert route.call_count == 1
    assert (await stored_calls(client))[0]["status"] == "failed"


@pytest.mark.parametrize(
    "failure", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")]
)
async def test_lost_answer_is_504_unknown_with_exactly_one_request(
    client: httpx.AsyncClient, exotel: respx.MockRouter, failure: Exception
) -> None:
    route = exotel.post("/connect.json").mock(side_effect=failure)

    response = await client.post("/calls", json=VALID)

    assert response.status_code == 504
    assert route.call_count == 1
    call_id = response.json()["id"]
    stored = await client.get(f"/calls/{call_id}")
    assert stored.json()["status"] == "unknown"


async def test_lenient_parsing_of_exotel_numbers_as_strings(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    exotel.post("/connect.json").respond(
        200, json=connect_answer(SID, Duration="17", Price="1.500", Status="completed")
    )
    body = (await client.post("/calls", json=VALID)).json()
    assert (body["duration"], body["price"], body["status"]) == (17, 1.5, "completed")


async def test_an_unreadable_success_answer_is_unknown(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    exotel.post("/connect.json").respond(200, text="<TwilioResponse/>")
    response = await client.post("/calls", json=VALID)
    assert response.status_code == 504
    assert (await stored_calls(client))[0]["status"] == "unknown"


async def test_concurrent_requests_get_distinct_calls(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    sids = iter(f"{n:032x}" for n in range(10))
    exotel.post("/connect.json").mock(
        side_effect=lambda request: httpx.Response(200, json=connect_answer(next(sids)))
    )
    responses = await asyncio.gather(*(client.post("/calls", json=VALID) for _ in range(10)))
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["sid"] for response in responses}) == 10


async def test_reader_may_read_but_not_place(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    reader = {"Authorization": f"Bearer {READER_KEY}"}

    refused = await client.post("/calls", json=VALID, headers=reader)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert route.call_count == 0

    await client.post("/calls", json=VALID)
    listed = await client.get("/calls", headers=reader)
    assert listed.status_code == 200
    assert len(listed.json()["items"]) == 1


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic d3JpdGVyOng=", "Bearer "])
@pytest.mark.parametrize(("method", "path"), [("POST", "/calls"), ("GET", "/calls")])
async def test_missing_or_wrong_key_is_401(
    client: httpx.AsyncClient, authorization: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    client.headers.pop("Authorization")
    response = await client.request(method, path, json=VALID, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_late_failure_never_overwrites_what_was_settled_meanwhile(
    client: httpx.AsyncClient, exotel: respx.MockRouter, database_url: str
) -> None:
    import psycopg

    def reconciler_settles_then_exotel_times_out(request: httpx.Request) -> httpx.Response:
        # While the connect request waits, the reconciler concludes the call never existed.
        with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
            conn.execute("UPDATE calls SET status = 'failed' WHERE status = 'pending'")
        raise httpx.ReadTimeout("no answer")

    exotel.post("/connect.json").mock(side_effect=reconciler_settles_then_exotel_times_out)

    response = await client.post("/calls", json=VALID)

    assert response.status_code == 504
    stored = (await stored_calls(client))[0]
    assert stored["status"] == "failed"
    assert stored["error"] is None
