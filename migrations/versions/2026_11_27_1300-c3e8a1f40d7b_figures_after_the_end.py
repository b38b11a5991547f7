"""figures after the end: calls.details_next_at/details_looks, notifications.event_type

Revision ID: c3e8a1f40d7b
Revises: 66f5aa575645
Create Date: 2026-11-27 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3e8a1f40d7b"
down_revision: str | None = "66f5aa575645"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("details_next_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "calls", sa.Column("details_looks", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index(
        "ix_calls_details_next_at",
        "calls",
        ["details_next_at"],
        unique=False,
        postgresql_where=sa.text("details_next_at IS NOT NULL"),
    )
    # Calls that finished before this migration keep their missing figures: Exotel's
    # bulk details reach back a month, but nobody asked for those looks.
    op.add_column(
        "notifications",
        sa.Column(
            "event_type", sa.String(length=32), server_default="call.finished", nullable=False
        ),
    )
    op.drop_constraint("uq_notifications_call_id", "notifications", type_="unique")
    op.create_unique_constraint(
        "uq_notifications_call_id_event_type", "notifications", ["call_id", "event_type"]
    )


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE event_type <> 'call.finished'")
    op.drop_constraint("uq_notifications_call_id_event_type", "notifications", type_="unique")
    op.create_unique_constraint("uq_notifications_call_id", "notifications", ["call_id"])
    op.drop_column("notifications", "event_type")
    op.drop_index(
        "ix_calls_details_next_at",
        table_name="calls",
        postgresql_where=sa.text("details_next_at IS NOT NULL"),
    )
    op.drop_column("calls", "details_looks")
    op.drop_column("calls", "details_next_at")
