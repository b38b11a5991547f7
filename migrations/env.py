"""Alembic environment: the URL comes from the caller or from DATABASE_URL."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.calls import models  # noqa: F401  (registers the tables on Base.metadata)
from app.config import Settings
from app.db import Base
from app.limits import gcra  # noqa: F401  (registers rate_limit_buckets)

config = context.config
MIGRATION_LOCK = 0x63616C6C  # any constant shared by every Callbridge process
SIMULATOR_TABLES = "sim_"
if config.config_file_name is not None and not config.attributes.get("database_url"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or Settings().database_url
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    return str(url)


def _callbridges(
    _object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object
) -> bool:
    """Leave out the Exotel simulator's tables (`sim_*`): it creates and owns them."""
    return not (type_ == "table" and name is not None and name.startswith(SIMULATOR_TABLES))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_server_default=True,
        include_object=_callbridges,
    )
    with context.begin_transaction():
        # One migrator at a time: replicas starting together wait here, then find the
        # schema at head. Postgres runs DDL in the transaction, so the lock covers it all.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


asyncio.run(_run_online())
