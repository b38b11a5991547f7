"""Database plumbing: declarative base, engine and session factories with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import structlog
from alembic import command
from alembic.config import Config
from psycopg import waiting
from psycopg.pq import TransactionStatus
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Client-side bounds, because a database that accepts TCP but never answers enforces no
# server-side timeout: connecting (the whole handshake), waiting for a pooled connection,
# and every answer (statement, commit, rollback, ping). The server's own limits come
# first, so a slow query or a lock wait ends with Postgres' error, not a cut connection.
CONNECT_TIMEOUT_S = 3
POOL_TIMEOUT_S = 5
LOCK_TIMEOUT_S = 4
STATEMENT_TIMEOUT_S = 5
ANSWER_TIMEOUT_S = STATEMENT_TIMEOUT_S + 2
# TCP keepalives find a peer that vanished (host down, cable cut) while a connection idles.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


class BoundedConnection(psycopg.AsyncConnection[Any]):
    """A psycopg connection whose every wait for the server is bounded on the client side.

    Past ANSWER_TIMEOUT_S, or when the awaiting task is cancelled (a request's own
    deadline), the socket is shut down: the wait fails at once and the connection is
    broken, so the pool discards it. psycopg's own answer to a cancellation, asking the
    server to cancel the query, would wait up to 10 s more on a server that never answers.
    The bound is psycopg's own wait timeout: no task or timer of ours per statement.
    """

    async def wait(
        self,
        gen: Any,
        interval: float = 0.1,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg's signature, overridden
    ) -> Any:
        bound_s = ANSWER_TIMEOUT_S if timeout is None else timeout
        started = time.monotonic()
        try:
            return await waiting.wait_async(
                gen, self.pgconn.socket, interval=interval, timeout=bound_s
            )
        except asyncio.CancelledError:
            self._sever_if_busy()
            raise
        except psycopg.OperationalError as exc:
            if timeout is None and time.monotonic() - started >= bound_s:
                self._sever_if_busy()
                raise psycopg.OperationalError(
                    f"the database did not answer within {ANSWER_TIMEOUT_S} s"
                ) from exc
            raise

    def _sever_if_busy(self) -> None:
        """Shut the socket down if a command is waiting for its answer: the connection is
        broken, and the pool discards it."""
        if self.pgconn.transaction_status != TransactionStatus.ACTIVE:
            return
        with (
            contextlib.suppress(OSError, psycopg.Error),
            socket.socket(fileno=os.dup(self.pgconn.socket)) as connection_socket,
        ):
            connection_socket.shutdown(socket.SHUT_RDWR)


def connect_options() -> dict[str, Any]:
    """What every connection is opened with: the bounds above, keepalives."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": f"-c lock_timeout={LOCK_TIMEOUT_S}s -c statement_timeout={STATEMENT_TIMEOUT_S}s",
        **KEEPALIVES,
    }


def create_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        # A fixed pool: connections opened for a burst and closed after it (overflow) cost
        # more than the burst's requests themselves.
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout (a round trip on every request): see _closed_by_the_server.
        pool_pre_ping=False,
        hide_parameters=True,  # statement values hold phone numbers; errors get logged
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"async_creator_fn": BoundedConnection.connect, **connect_options()},
    )
    event.listen(engine.sync_engine.pool, "checkout", _refuse_if_closed_by_the_server)
    return engine


class ConnectionPool:
    """Plain psycopg connections (autocommit) for the hot paths: storing a callback,
    placing a call, reading calls.

    SQLAlchemy's async layer costs about 0.1 ms of CPU a checkout and as much again a
    statement (greenlets, result processing): more than the statements themselves.
    This pool keeps up to `size` connections, newest first, with the engine's bounds.
    Like SQLAlchemy's pool, and unlike psycopg_pool (which reconnects in the background,
    backing off a second and more), it connects when a request needs a connection: after
    a database restart the next request pays one connect and no 503, and while the
    database is away a request hears so within the connect timeout.
    """

    def __init__(self, database_url: str, *, size: int = 10, **options: Any) -> None:
        self._conninfo = libpq_url(database_url)
        self._options = {"autocommit": True, **connect_options(), **options}
        self._idle: list[BoundedConnection] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[BoundedConnection]:
        if self._slots.locked():
            try:
                async with asyncio.timeout(POOL_TIMEOUT_S):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolExhausted(
                    f"no database connection free within {POOL_TIMEOUT_S} s"
                ) from None
        else:
            await self._slots.acquire()  # free: no wait, so no timer to arm
        try:
            connection = await self._checkout()
            try:
                yield connection
            finally:
                await self._checkin(connection)
        finally:
            self._slots.release()

    async def _checkout(self) -> BoundedConnection:
        while self._idle:
            connection = self._idle.pop()
            if not _closed_by_the_server(connection):
                return connection
            await connection.close()
        return await BoundedConnection.connect(self._conninfo, **self._options)

    async def _checkin(self, connection: BoundedConnection) -> None:
        """Keep a connection that is idle and sound; close a broken or busy one (closing
        waits on nothing)."""
        if connection.pgconn.transaction_status == TransactionStatus.IDLE:
            self._idle.append(connection)
        else:
            await connection.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()


class PoolExhausted(psycopg.OperationalError):
    """Every connection of the pool stayed busy for POOL_TIMEOUT_S (a 503, as for the
    engine's pool)."""


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://`) as psycopg itself takes it."""
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _closed_by_the_server(connection: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed this idle pooled connection, known without a round trip.

    An idle connection has nothing to read, unless the server hung up (a restart sends
    its goodbye and closes): then its socket is readable. A refused connection is
    replaced with a new one, so a restart costs no request a 503.
    """
    return connection.closed or bool(select.select([connection.pgconn.socket], [], [], 0)[0])


def _refuse_if_closed_by_the_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if _closed_by_the_server(dbapi_connection.driver_connection):
        raise DisconnectionError("the server closed this pooled connection")


class DatabaseUnreachable(RuntimeError):
    pass


async def wait_for_database(engine: AsyncEngine, *, timeout_s: float) -> None:
    """Return once the database answers; give up after `timeout_s` with a clear error.

    Containers start together: the database may still be booting when we are. Each
    attempt is bounded by the connect timeout set in `create_engine`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay_s = 0.2
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except (OSError, DBAPIError, PoolTimeout) as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) else exc
            left_s = deadline - loop.time()
            if left_s <= 0:
                raise DatabaseUnreachable(
                    f"The database at {engine.url} did not answer within {timeout_s:g} s "
                    f"(DATABASE_WAIT_S): {type(reason).__name__}: {reason}"
                ) from exc
            log.warning("database_not_ready", retry_in_s=round(min(delay_s, left_s), 2))
            await asyncio.sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, 5.0)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def migrate(database_url: str) -> None:
    """Bring the schema to the newest migration (what `alembic upgrade head` does)."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
