"""Fixtures of the limiter tests: the database's clock, simulated.

The limiter asks Postgres for the time with `clock_timestamp()`. Connections whose
search_path puts the `simulated` schema before pg_catalog find `simulated.clock_timestamp()`
first, which reads the time from a table the test moves forward: the production
statement runs unchanged, minutes of traffic are replayed in a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import ConnectionPool

SIMULATED_CLOCK = """
CREATE SCHEMA IF NOT EXISTS simulated;
CREATE TABLE IF NOT EXISTS simulated.clock (now timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION simulated.clock_timestamp() RETURNS timestamptz
    LANGUAGE sql VOLATILE AS 'SELECT now FROM simulated.clock';
"""


class SimulatedClock:
    def __init__(self, connection: psycopg.Connection[object], start: datetime) -> None:
        self._connection = connection
        self.start = self.now = start

    def set(self, now: datetime) -> None:
        assert now >= self.now, "the clock only moves forward"
        self.now = now
        self._connection.execute("UPDATE simulated.clock SET now = %s", (now,))

    def advance(self, seconds: float) -> None:
        self.set(self.now + timedelta(seconds=seconds))


@pytest.fixture
def clock(database_url: str) -> Iterator[SimulatedClock]:
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(SIMULATED_CLOCK)
        conn.execute("DELETE FROM simulated.clock")
        conn.execute("INSERT INTO simulated.clock VALUES (%s)", (start,))
        yield SimulatedClock(conn, start)


@pytest.fixture
async def simulated_pool(database_url: str, clock: SimulatedClock) -> AsyncIterator[ConnectionPool]:
    """Connections that read the time from the simulated clock."""
    pool = ConnectionPool(
        database_url, size=2, options="-c search_path=simulated,pg_catalog,public"
    )
    yield pool
    await pool.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(database_url, size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()
