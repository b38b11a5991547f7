"""Shared fixtures: a real, migrated Postgres database, the app, and Exotel mocked at HTTP."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import respx
from fastapi import FastAPI
from sqlalchemy import text

from app.config import Settings
from app.db import PROJECT_ROOT, migrate
from app.embedded import EmbeddedPostgres
from app.main import create_app
from tests.exotel_wire import EXOTEL_WIRE

EXOTEL_BASE = "http://exotel.test"
EXOTEL_ACCOUNT = "callbridge-test"
EXOTEL_CALLS = f"{EXOTEL_BASE}/v1/Accounts/{EXOTEL_ACCOUNT}/Calls"
# Live mode wants secrets of at least 32 bytes.
WRITER_KEY = "writer-secret-for-tests-0123456789ab"
READER_KEY = "reader-secret-for-tests-0123456789ab"
CALLBACK_SECRET = "callback-secret-for-tests-0123456789"
NOTIFY_SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
FIXTURES = Path(__file__).parent / "fixtures"
TABLES = "calls, call_legs, call_events, notifications, rate_limit_buckets"
WAITING_CALLBACKS = "SELECT EXISTS (SELECT FROM call_events WHERE processed_at IS NULL)"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """TEST_DATABASE_URL if given (CI uses the machine's Postgres), else an embedded server
    of the tests' own under .callbridge/test (not the one `scripts/serve` runs), listening on
    127.0.0.1 too so the outage tests can put a proxy in front of it; stopped at the end."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql+psycopg://", "postgresql://")
        return
    server = EmbeddedPostgres(PROJECT_ROOT / ".callbridge" / "test", listen_tcp=True)
    embedded = server.start()
    try:
        yield embedded.replace("postgresql+psycopg://", "postgresql://")
    finally:
        server.stop()


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for this test process, migrated to head, dropped at the end."""
    server = postgres_server
    name = f"callbridge_test_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server, name).replace("postgresql://", "postgresql+psycopg://", 1)
    migrate(url)
    yield url
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _clean_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "database_url" in request.fixturenames:
        url = request.getfixturevalue("database_url")
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute(f"TRUNCATE {TABLES} CASCADE")


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "exotel_account_sid": EXOTEL_ACCOUNT,
        "exotel_api_key": "exotel-key",
        "exotel_base_url": EXOTEL_BASE,
        "exotel_caller_id": "08047112233",
        "public_base_url": "http://callbridge.test",
        "callback_secret": CALLBACK_SECRET,
        "notify_secret": NOTIFY_SECRET,
        "exotel_api_token": "exotel-token",
        "api_keys": f"orders:{WRITER_KEY}:write,dashboard:{READER_KEY}:read",
        "run_jobs": False,
        "log_format": "console",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def callbacks_applied(app: FastAPI, timeout_s: float = 5.0) -> None:
    """Wait until the applier has processed every stored callback (it runs in the background)."""
    engine = app.state.engine
    async with asyncio.timeout(timeout_s), engine.connect() as conn:
        while await conn.scalar(text(WAITING_CALLBACKS)):
            await conn.rollback()
            await asyncio.sleep(0.005)


class AppliedFirst(httpx.AsyncBaseTransport):
    """The app, in process; a read first waits for the callbacks stored so far to be applied,
    so that a test can post a callback and read its effect, as a dashboard would soon after."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            await callbacks_applied(self._app)
        return await self._asgi.handle_async_request(request)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=AppliedFirst(app),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {WRITER_KEY}"},
    ) as http:
        yield http


@pytest.fixture
def exotel() -> Iterator[respx.MockRouter]:
    """Exotel at the HTTP boundary; unmatched requests fail the test."""
    with respx.mock(using=EXOTEL_WIRE, base_url=EXOTEL_CALLS, assert_all_called=False) as router:
        yield router
