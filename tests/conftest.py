"""Shared fixtures: a real, migrated Postgres database, the app, and Exotel mocked at HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import respx
from fastapi import FastAPI

from app.config import Settings
from app.db import PROJECT_ROOT, migrate, start_embedded_postgres
from app.main import create_app

EXOTEL_BASE = "http://exotel.test"
EXOTEL_ACCOUNT = "callbridge-test"
EXOTEL_CALLS = f"{EXOTEL_BASE}/v1/Accounts/{EXOTEL_ACCOUNT}/Calls"
WRITER_KEY = "writer-secret"
READER_KEY = "reader-secret"
FIXTURES = Path(__file__).parent / "fixtures"
TABLES = "calls, call_legs, call_events, notifications, rate_limit_buckets"


def _server_url() -> str:
    """TEST_DATABASE_URL if given (CI uses the machine's Postgres), else an embedded one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url.replace("postgresql+psycopg://", "postgresql://")
    embedded = start_embedded_postgres(PROJECT_ROOT / ".callbridge" / "test")
    return embedded.replace("postgresql+psycopg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test process, migrated to head, dropped at the end."""
    server = _server_url()
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
        "exotel_api_token": "exotel-token",
        "exotel_base_url": EXOTEL_BASE,
        "exotel_caller_id": "08047112233",
        "public_base_url": "http://callbridge.test",
        "callback_secret": "callback-secret-for-tests",
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


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {WRITER_KEY}"},
    ) as http:
        yield http


@pytest.fixture
def exotel() -> Iterator[respx.MockRouter]:
    """Exotel at the HTTP boundary; unmatched requests fail the test."""
    with respx.mock(base_url=EXOTEL_CALLS, assert_all_called=False) as router:
        yield router
