"""calls.connect_reserved_at: from when a call's connect request may have been sent

Revision ID: 3c7e2a91f4d8
Revises: c3e8a1f40d7b
Create Date: 2026-11-27 13:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c7e2a91f4d8"
down_revision: str | None = "c3e8a1f40d7b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "calls", sa.Column("connect_reserved_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("calls", "connect_reserved_at")
