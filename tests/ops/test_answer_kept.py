"""Exotel placed the call, then the database failed: its answer is kept, never "503, retry"
(issue 11 item 6). Postgres is reached through a proxy cut just as Exotel answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest
import respx
from fastapi import FastAPI

from app.calls import service
from app.main import create_app
from tests.conftest import WRITER_KEY, make_settings
from tests.exotel_samples import connect_answer, rest_exception
from tests.ops.conftest import PostgresProxy

SID = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
CALL = {"from": "+919876543210", "to": "09123456789"}
KEY = {"Idempotency-Key": "order-7"}


@pytest.fixture
async def proxied_app(database_url: str, postgres_proxy: PostgresProxy) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(postgres_proxy.url(database_url)))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def writer(proxied_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxied_app),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {WRITER_KEY}"},
    ) as client:
        yield client


def cut_database_then_answer(
    exotel: respx.MockRouter, proxy: PostgresProxy, answer: httpx.Response
) -> None:
    async def connect(request: httpx.Request) -> httpx.Response:
        await proxy.stop()
        return answer

    exotel.post("/connect.json").mock(side_effect=connect)


Row = tuple[str | None, str, int | None]


async def stored_row(database_url: str, call_id: str) -> Row:
    async with await psycopg.AsyncConnection.connect(database_url.replace("+psycopg", "")) as conn:
        cursor = await conn.execute(
            "SELECT sid, status, response_status FROM calls WHERE id = %s", (call_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def row_once(database_url: str, call_id: str, settled: Callable[[Row], bool]) -> Row:
    """The call's row once `settled` holds (the background retry stores it)."""
    async with asyncio.timeout(10):
        while True:
            row = await stored_row(database_url, call_id)
            if settled(row):
                return row
            await asyncio.sleep(0.1)


async def test_answer_stored_once_the_database_is_back_in_time_is_201(
    writer: httpx.AsyncClient, exotel: respx.MockRouter, postgres_proxy: PostgresProxy
) -> None:
    cut_database_then_answer(exotel, postgres_proxy, httpx.Response(200, json=connect_answer(SID)))

    async def database_comes_back() -> None:
        await asyncio.sleep(0.5)
        await postgres_proxy.start()

    back = asyncio.create_task(database_comes_back())
    started = time.monotonic()
    response = await writer.post("/calls", json=CALL, headers=KEY)
    await back

    assert response.status_code == 201
    assert time.monotonic() - started < service.STORE_ANSWER_WAIT_S + 1
    assert (response.json()["sid"], response.json()["status"]) == (SID, "in-progress")
    replay = await writer.post("/calls", json=CALL, headers=KEY)
    assert (replay.status_code, replay.json()["sid"]) == (201, SID)
    assert len(exotel.calls) == 1


async def test_answer_not_stored_in_time_is_504_with_the_id_then_stored_in_the_background(
    writer: httpx.AsyncClient,
    exotel: respx.MockRouter,
    postgres_proxy: PostgresProxy,
    database_url: str,
) -> None:
    cut_database_then_answer(exotel, postgres_proxy, httpx.Response(200, json=connect_answer(SID)))

    started = time.monotonic()
    response = await writer.post("/calls", json=CALL, headers=KEY)

    assert response.status_code == 504
    assert time.monotonic() - started < service.STORE_ANSWER_WAIT_S + 1
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/exotel-outcome-unknown")
    call_id = problem["id"]
    assert response.headers["location"] == f"/calls/{call_id}"
    assert await stored_row(database_url, call_id) == (None, "pending", None)

    await postgres_proxy.start()
    stored = await row_once(database_url, call_id, lambda row: row[0] is not None)

    assert stored == (SID, "in-progress", 201)
    replay = await writer.post("/calls", json=CALL, headers=KEY)
    assert (replay.status_code, replay.json()["id"], replay.json()["sid"]) == (201, call_id, SID)
    assert len(exotel.calls) == 1


async def test_a_refusal_not_stored_in_time_is_still_answered_as_a_refusal(
    writer: httpx.AsyncClient,
    exotel: respx.MockRouter,
    postgres_proxy: PostgresProxy,
    database_url: str,
) -> None:
    refused = httpx.Response(400, json=rest_exception(400, "To is not a valid number", 20002))
    cut_database_then_answer(exotel, postgres_proxy, refused)

    response = await writer.post("/calls", json=CALL)

    assert response.status_code == 422
    assert response.json()["type"].endswith("/exotel-refused")
    await postgres_proxy.start()
    call_id = response.json()["id"]
    stored = await row_once(database_url, call_id, lambda row: row[1] != "pending")
    assert stored == (None, "failed", 422)
