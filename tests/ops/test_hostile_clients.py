"""Clients that leave mid-upload, or drip their body: counted as what they are, bounded in time.

Issue 11, items 16 and 17.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
import respx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from app.middleware import BODY_READ_TIMEOUT_S, MAX_BODY_BYTES, BodyLimitsMiddleware
from tests.conftest import WRITER_KEY
from tests.exotel_samples import connect_answer
from tests.ops.conftest import CapturedLogs

VALID = b'{"from": "+919876543210", "to": "09123456789"}'


def requests_counted(route: str, status: str) -> float:
    labels = {"method": "POST", "route": route, "status": status}
    return REGISTRY.get_sample_value("callbridge_http_requests_total", labels) or 0.0


def callback_path(app: FastAPI) -> str:
    return f"/callbacks/exotel?token={app.state.tokens.for_call(uuid.uuid4())}"


async def leave_mid_upload(app: FastAPI, path_and_query: str) -> list[Message]:
    """POST half a body over raw ASGI, then disconnect, as uvicorn reports a client gone."""
    path, _, query = path_and_query.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"callbridge.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"2000"),
            (b"authorization", f"Bearer {WRITER_KEY}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("callbridge.test", 80),
    }
    arriving = [{"type": "http.request", "body": VALID[:20], "more_body": True}]

    async def receive() -> Message:
        return arriving.pop(0) if arriving else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("route", ["/callbacks/exotel", "/calls"])
async def test_a_client_that_leaves_mid_upload_is_a_client_abort(
    app: FastAPI, exotel: respx.MockRouter, logs: CapturedLogs, route: str
) -> None:
    path = callback_path(app) if route == "/callbacks/exotel" else route
    aborts_before = requests_counted(route, "499")
    errors_before = requests_counted(route, "500")

    await leave_mid_upload(app, path)

    assert requests_counted(route, "499") == aborts_before + 1
    assert requests_counted(route, "500") == errors_before
    [line] = logs.requests()
    assert (line["status"], line["outcome"], line["level"]) == (499, "client_closed", "info")
    assert "unhandled_error" not in logs.text
    assert not exotel.calls


async def test_a_complete_request_is_not_an_abort(
    app: FastAPI, exotel: respx.MockRouter, logs: CapturedLogs
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(uuid.uuid4().hex))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {WRITER_KEY}"},
    ) as client:
        response = await client.post(
            "/calls", content=VALID, headers={"content-type": "application/json"}
        )
    assert response.status_code == 201
    [line] = logs.requests()
    assert line["status"] == 201
    assert "outcome" not in line


# -- Slow bodies ----------------------------------------------------------------------

DEADLINE_S = 0.3


@pytest.fixture
async def impatient(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a body deadline short enough for a test."""
    limited = BodyLimitsMiddleware(app, max_bytes=MAX_BODY_BYTES, timeout_s=DEADLINE_S)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=limited),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {WRITER_KEY}", "content-type": "application/json"},
    ) as client:
        yield client


async def dripping(body: bytes, pause_s: float) -> AsyncIterator[bytes]:
    for byte in body:
        await asyncio.sleep(pause_s)
        yield bytes([byte])


@pytest.mark.parametrize("route", ["/calls", "/callbacks/exotel"])
async def test_a_body_that_drips_in_is_cut_off_with_408(
    app: FastAPI, impatient: httpx.AsyncClient, exotel: respx.MockRouter, route: str
) -> None:
    path = callback_path(app) if route == "/callbacks/exotel" else route
    started = time.monotonic()

    response = await impatient.post(path, content=dripping(VALID, 0.05))

    assert response.status_code == 408
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/body-timeout")
    assert response.headers["connection"] == "close"
    assert time.monotonic() - started < DEADLINE_S + 0.5
    assert not exotel.calls


async def test_a_body_in_a_few_quick_chunks_passes(
    impatient: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(uuid.uuid4().hex))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(VALID), 10):
            await asyncio.sleep(0.01)
            yield VALID[start : start + 10]

    response = await impatient.post("/calls", content=chunks())
    assert response.status_code == 201


def test_the_app_bounds_body_reads_with_the_documented_deadline(app: FastAPI) -> None:
    [limits] = [
        entry for entry in app.user_middleware if cast(object, entry.cls) is BodyLimitsMiddleware
    ]
    assert limits.kwargs.get("timeout_s", BODY_READ_TIMEOUT_S) == BODY_READ_TIMEOUT_S == 10.0
