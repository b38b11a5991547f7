"""The migrations build exactly the schema the models describe (`alembic check`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from app.db import PROJECT_ROOT
from app.main import create_app
from tests.conftest import make_settings


def test_models_and_migrations_agree(database_url: str) -> None:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.check(config)  # raises if autogenerate would produce any operation


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    admin = database_url.replace("+psycopg", "")
    name = f"callbridge_empty_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = database_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _version(url: str) -> str | None:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def test_replicas_starting_together_migrate_once(empty_database: str) -> None:
    # Imported first, then all released at the same instant, as replicas might be.
    start_at = time.time() + 3
    script = (
        "import time; from app.db import migrate; "
        f"time.sleep(max(0, {start_at} - time.time())); migrate({empty_database!r})"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT)  # noqa: S603
        for _ in range(3)
    ]
    assert [process.wait(timeout=60) for process in processes] == [0, 0, 0]
    assert _version(empty_database) is not None


async def test_the_service_brings_a_new_database_to_head(empty_database: str) -> None:
    app = create_app(make_settings(empty_database))
    async with app.router.lifespan_context(app):
        pass
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = empty_database
    # Alembic's env.py runs its own event loop: not inside this one.
    await asyncio.to_thread(command.check, config)
    assert _version(empty_database) is not None
