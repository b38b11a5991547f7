"""callbacks applied asynchronously: call_events.processed_at

Revision ID: 5d1c0a7e9b21
Revises: b59e7d9efed6
Create Date: 2026-11-27 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d1c0a7e9b21"
down_revision: str | None = "b59e7d9efed6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "call_events", sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Every event stored before this migration was applied in the request that stored it.
    op.execute("UPDATE call_events SET processed_at = received_at")
    op.create_index(
        "ix_call_events_unprocessed",
        "call_events",
        ["id"],
        unique=False,
        postgresql_where=sa.text("processed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_call_events_unprocessed",
        table_name="call_events",
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    op.drop_column("call_events", "processed_at")
