"""Health probes, and the database going away: 503 fast, recovery without a restart, and a
bounded wait for the database at startup. Postgres is reached through a proxy the tests cut."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import respx
from fastapi import FastAPI
from sqlalchemy import make_url

from app.db import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S, DatabaseUnreachable
from app.jobs.worker import probe_app
from app.main import create_app
from app.ops.service import READY_TIMEOUT_S, OpsService
from tests.conftest import READER_KEY, WRITER_KEY, make_settings
from tests.exotel_samples import connect_answer
from tests.ops.conftest import PostgresProxy

PROBLEM = "application/problem+json"


@pytest.fixture
async def proxied_app(database_url: str, postgres_proxy: PostgresProxy) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(postgres_proxy.url(database_url)))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def proxied_client(proxied_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    app = proxied_app
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://callbridge.test",
            headers={"Authorization": f"Bearer {READER_KEY}"},
        ) as client,
    ):
        yield client


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")

    live, ready = await client.get("/healthz"), await client.get("/readyz")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


async def test_during_an_outage_requests_answer_503_fast_and_liveness_holds(
    proxied_app: FastAPI, proxied_client: httpx.AsyncClient, postgres_proxy: PostgresProxy
) -> None:
    assert (await proxied_client.get("/calls")).status_code == 200
    await postgres_proxy.stop()

    for path in ("/calls", "/calls/some-sid", "/readyz"):
        started = time.monotonic()
        response = await proxied_client.get(path)
        assert time.monotonic() - started < 3
        assert response.status_code == 503, path
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["retry-after"] == "5"
        assert response.json()["type"].endswith("/database-unavailable")
    assert (await proxied_client.get("/healthz")).status_code == 200
    assert (await proxied_client.get("/metrics")).status_code == 200
    # A process running the jobs (the worker's probe server) says its gauges are unknown.
    probes = probe_app(OpsService(proxied_app.state.sessions, exports_fleet_gauges=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=probes), base_url="http://worker.test"
    ) as worker:
        metrics = (await worker.get("/metrics")).text
    assert "callbridge_relay_queue_depth NaN" in metrics


async def test_the_pool_survives_a_postgres_restart(
    proxied_client: httpx.AsyncClient, postgres_proxy: PostgresProxy
) -> None:
    # Open several pooled connections, so the restart leaves dead ones behind.
    responses = await asyncio.gather(*(proxied_client.get("/calls") for _ in range(4)))
    assert {response.status_code for response in responses} == {200}

    await postgres_proxy.stop()
    await postgres_proxy.start()

    responses = await asyncio.gather(*(proxied_client.get("/calls") for _ in range(4)))
    assert [response.status_code for response in responses] == [200] * 4
    assert (await proxied_client.get("/readyz")).status_code == 200


async def test_startup_waits_for_the_database(
    database_url: str, postgres_proxy: PostgresProxy
) -> None:
    await postgres_proxy.stop()
    app = create_app(make_settings(postgres_proxy.url(database_url), database_wait_s=10))

    async def database_comes_up() -> None:
        await asyncio.sleep(0.5)
        await postgres_proxy.start()

    recovery = asyncio.create_task(database_comes_up())
    started = time.monotonic()
    async with app.router.lifespan_context(app):
        assert 0.5 <= time.monotonic() - started < 5
        assert await ready(app)
    await recovery


async def test_startup_gives_up_after_the_wait_naming_the_database(
    database_url: str, postgres_proxy: PostgresProxy
) -> None:
    await postgres_proxy.stop()
    proxied = make_url(postgres_proxy.url(database_url)).set(password="pa55word")
    url = proxied.render_as_string(hide_password=False)
    app = create_app(make_settings(url, database_wait_s=0.5))

    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable) as raised:
        async with app.router.lifespan_context(app):
            pytest.fail("started without a database")

    assert 0.5 <= time.monotonic() - started < 3
    message = str(raised.value)
    assert f"127.0.0.1:{postgres_proxy.port}" in message
    assert "within 0.5 s (DATABASE_WAIT_S)" in message
    assert "pa55word" not in message


async def ready(app: FastAPI) -> bool:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as client:
        return (await client.get("/readyz")).status_code == 200


async def test_a_row_locked_elsewhere_answers_503_after_the_lock_timeout(
    app: FastAPI, client: httpx.AsyncClient, exotel: respx.MockRouter, database_url: str
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer("f" * 32))
    placed = await client.post("/calls", json={"from": "+919876543210", "to": "09123456789"})
    call_id = placed.json()["id"]
    blocker = await psycopg.AsyncConnection.connect(database_url.replace("+psycopg", ""))
    try:
        await blocker.execute("SELECT 1 FROM calls WHERE id = %s FOR UPDATE", (call_id,))
        token = app.state.tokens.for_call(uuid.UUID(call_id))
        started = time.monotonic()
        response = await client.post(
            f"/callbacks/exotel?token={token}",
            json={"CallSid": "f" * 32, "Status": "completed"},
        )
        waited = time.monotonic() - started
    finally:
        await blocker.close()

    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert LOCK_TIMEOUT_S <= waited < LOCK_TIMEOUT_S + 3


async def test_a_database_that_never_answers_gets_503_within_seconds(
    proxied_client: httpx.AsyncClient, postgres_proxy: PostgresProxy, exotel: respx.MockRouter
) -> None:
    # A pooled connection exists, then the database goes silent: TCP stays up, nothing
    # answers, so no server-side timeout can fire.
    assert (await proxied_client.get("/calls")).status_code == 200
    postgres_proxy.freeze()
    # The worst case: a ping on a pooled connection, then one new connection attempt.
    bound_s = ANSWER_TIMEOUT_S + CONNECT_TIMEOUT_S + 1
    writer = {"Authorization": f"Bearer {WRITER_KEY}"}
    requests = [
        ("GET", "/readyz", {}, None, READY_TIMEOUT_S + 1),
        ("GET", "/calls", {}, None, bound_s),
        ("GET", "/calls/some-sid", {}, None, bound_s),
        ("POST", "/calls", writer, {"from": "+919876543210", "to": "09123456789"}, bound_s),
    ]

    for method, path, headers, body, within_s in requests:
        started = time.monotonic()
        async with asyncio.timeout(60):  # the old code hung here for minutes
            response = await proxied_client.request(method, path, headers=headers, json=body)
        assert time.monotonic() - started < within_s, path
        assert response.status_code == 503, path
        assert response.json()["type"].endswith("/database-unavailable")
        started = time.monotonic()
        assert (await proxied_client.get("/healthz")).status_code == 200
        assert time.monotonic() - started < 0.5
    assert not exotel.calls
