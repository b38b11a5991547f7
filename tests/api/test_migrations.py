"""The migrations build exactly the schema the models describe (`alembic check`)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.db import PROJECT_ROOT


def test_models_and_migrations_agree(database_url: str) -> None:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.check(config)  # raises if autogenerate would produce any operation
