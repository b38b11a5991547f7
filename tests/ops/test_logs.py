"""The request log, and what the logs of a whole call's life never contain."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import respx
from fastapi import FastAPI

from tests.conftest import CALLBACK_SECRET, READER_KEY, WRITER_KEY
from tests.exotel_samples import connect_answer
from tests.ops.conftest import CapturedLogs

SID = "b6cc4c2ac42b2ea4fc09a1a8d2ae8a3c"
FROM, TO = "+919876543210", "+919123456789"


def status_callback_url(route: respx.Route) -> str:
    form = parse_qs(route.calls.last.request.content.decode())
    return form["StatusCallback"][0]


async def test_one_line_per_request_with_id_client_route_status_duration(
    client: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    response = await client.get("/calls/no-such-call")

    assert response.status_code == 404
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    [line] = logs.requests()
    assert line["request_id"] == request_id
    assert line["client"] == "orders"
    assert line["method"] == "GET"
    assert line["route"] == "/calls/{ref}"
    assert line["status"] == 404
    assert isinstance(line["duration_ms"], float)
    assert "no-such-call" not in logs.text


async def test_a_sane_request_id_is_kept_and_every_line_of_the_request_carries_it(
    client: httpx.AsyncClient, exotel: respx.MockRouter, logs: CapturedLogs
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))

    response = await client.post(
        "/calls", json={"from": FROM, "to": TO}, headers={"X-Request-ID": "upstream-42.a:b"}
    )

    assert response.status_code == 201
    assert response.headers["x-request-id"] == "upstream-42.a:b"
    events = {line["event"]: line for line in logs.lines()}
    assert {"call_placed", "request"} <= events.keys()
    assert {line.get("request_id") for line in logs.lines()} == {"upstream-42.a:b"}
    assert events["call_placed"]["sid"] == SID
    assert events["call_placed"]["from_number"] == "+91******3210"


async def test_requests_to_exotel_are_logged_at_debug_when_ok_and_at_info_when_not(
    client: httpx.AsyncClient, exotel: respx.MockRouter, logs: CapturedLogs
) -> None:
    exotel.post("/connect.json").mock(
        side_effect=[
            httpx.Response(200, json=connect_answer(SID)),
            httpx.Response(500, json={"RestException": {"Message": "Internal error"}}),
        ]
    )
    logging.getLogger("app.exotel.client").setLevel(logging.DEBUG)
    try:
        placed = await client.post("/calls", json={"from": FROM, "to": TO})
        failed = await client.post("/calls", json={"from": FROM, "to": TO})
    finally:
        logging.getLogger("app.exotel.client").setLevel(logging.NOTSET)

    assert (placed.status_code, failed.status_code) == (201, 502)
    lines = [line for line in logs.lines() if line["event"] == "exotel_request"]
    assert [(line["level"], line["outcome"], line["status"]) for line in lines] == [
        ("debug", "ok", 200),
        ("info", "error", 500),
    ]
    assert all(isinstance(line["latency_ms"], float) for line in lines)


async def test_an_unsafe_request_id_is_replaced(
    client: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    for unsafe in ("x" * 129, "two words", '{"json": 1}'):
        response = await client.get("/healthz", headers={"X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert "two words" not in logs.text


async def test_unauthenticated_requests_are_logged_without_a_client(
    app: FastAPI, logs: CapturedLogs
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as anonymous:
        response = await anonymous.get("/calls", headers={"Authorization": "Bearer wrong-key"})

    assert response.status_code == 401
    [line] = logs.requests()
    assert line["client"] is None
    assert line["status"] == 401
    assert "wrong-key" not in logs.text


async def test_a_full_run_logs_no_number_key_or_token(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter, logs: CapturedLogs
) -> None:
    connect = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    created = await client.post(
        "/calls", json={"from": FROM, "to": "09123456789", "custom_field": "order-7"}
    )
    assert created.status_code == 201
    callback_url = status_callback_url(connect)
    token = parse_qs(urlsplit(callback_url).query)["token"][0]
    payload = {
        "CallSid": SID,
        "EventType": "terminal",
        "Status": "completed",
        "From": FROM,
        "To": TO,
        "DateUpdated": "2026-11-26 15:31:02",
        "ConversationDuration": 41,
        "Legs": [{"OnCallDuration": 52, "Status": "completed"}, {"OnCallDuration": 41}],
    }
    forged_token = token[:-1] + ("1" if token[-1] == "0" else "0")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as exotel_side:
        received = await exotel_side.post(callback_url, json=payload)
        forged = await exotel_side.post(
            "/callbacks/exotel", params={"token": forged_token}, json=payload
        )
    assert received.status_code < 300
    assert forged.status_code == 403
    reader = httpx.Headers({"Authorization": f"Bearer {READER_KEY}"})
    for path, params in (
        ("/calls", {"to": TO, "from": "09876543210"}),
        (f"/calls/{SID}", {}),
        (f"/calls/{SID}/events", {}),
    ):
        assert (await client.get(path, params=params, headers=reader)).status_code == 200
    assert (await client.get("/metrics")).status_code == 200

    text = logs.text
    # Successful reads, the stored callback and the scrape of /metrics are logged at debug.
    logged = [(line["method"], line["route"], line["status"]) for line in logs.requests()]
    assert logged == [("POST", "/calls", 201), ("POST", "/callbacks/exotel", 403)]
    for secret in (
        FROM,
        TO,
        "9876543210",
        "9123456789",
        WRITER_KEY,
        READER_KEY,
        "exotel-token",
        CALLBACK_SECRET,
        token,
        forged_token,
        token.split(".")[1],
    ):
        assert secret not in text, secret
    assert "+91******3210" in text
    for line in logs.lines():
        assert not {"path", "url", "query"} & line.keys(), line


async def test_a_crash_is_a_500_problem_with_the_request_id_and_a_redacted_traceback(
    app: FastAPI, logs: CapturedLogs
) -> None:
    async def crash() -> None:
        raise RuntimeError(f"dialling {FROM} with Bearer {WRITER_KEY}")

    app.add_api_route("/crash", crash)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbridge.test") as http:
        response = await http.get("/crash", headers={"X-Request-ID": "crash-1"})

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "crash-1"
    [error] = [line for line in logs.lines() if line["event"] == "unhandled_error"]
    assert error["request_id"] == "crash-1"
    assert "RuntimeError: dialling +91******3210 with Bearer [redacted]" in error["exception"]
    [request] = logs.requests()
    assert (request["route"], request["status"]) == ("/crash", 500)
    assert FROM not in logs.text
    assert WRITER_KEY not in logs.text


async def test_at_debug_level_quiet_requests_are_logged_too(
    client: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    root = logging.getLogger()
    level = root.level
    quiet = await client.get("/healthz")
    root.setLevel(logging.DEBUG)
    try:
        logged = await client.get("/healthz")
    finally:
        root.setLevel(level)

    [line] = logs.requests()
    assert line["request_id"] == logged.headers["x-request-id"] != quiet.headers["x-request-id"]
    assert (line["method"], line["route"], line["status"]) == ("GET", "/healthz", 200)
