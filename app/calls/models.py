"""Tables: calls, their legs, the events received for them, and notifications about calls.

The hot paths and the reads use these tables through SQLAlchemy Core (app/calls/store.py);
the mapped classes serve the jobs' bookkeeping, the tests and Alembic.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(32))
    from_number: Mapped[str] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))
    caller_id: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str | None] = mapped_column(String(32))

    # The request's options, as asked.
    call_type: Mapped[str | None] = mapped_column(String(16))
    time_limit: Mapped[int | None] = mapped_column(Integer)
    time_out: Mapped[int | None] = mapped_column(Integer)
    wait_url: Mapped[str | None] = mapped_column(Text)
    record: Mapped[bool | None] = mapped_column(Boolean)
    recording_channels: Mapped[str | None] = mapped_column(String(16))
    recording_format: Mapped[str | None] = mapped_column(String(16))
    custom_field: Mapped[str | None] = mapped_column(String(128))
    start_playback_to: Mapped[str | None] = mapped_column(String(16))
    start_playback_value: Mapped[str | None] = mapped_column(Text)
    stream_url: Mapped[str | None] = mapped_column(Text)
    stream_begin: Mapped[str | None] = mapped_column(String(16))
    notify_url: Mapped[str | None] = mapped_column(Text)

    # What Exotel told us.
    exotel_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exotel_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration: Mapped[int | None] = mapped_column(Integer)
    conversation_duration: Mapped[int | None] = mapped_column(Integer)
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    recording_url: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(32))
    error_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # Who asked, and what they were answered (for Idempotency-Key replays).
    api_client: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    # When the connect request got its place under the Exotel limit (app/limits/gcra.py):
    # from then on it may have been sent. NULL: it surely was not (so a call left pending
    # by a dead process may be failed at once, see app/jobs/reconciler.py).
    connect_reserved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Reconciliation bookkeeping.
    reconcile_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_reconcile_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The figures Exotel fills in after the end (app/jobs/details.py): when to look next
    # (null: no look wanted), and how many looks went without them.
    details_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    details_looks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        Index(
            "uq_calls_api_client_idempotency_key",
            "api_client",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_calls_created_at_id", "created_at", "id"),
        Index("ix_calls_status_created_at_id", "status", "created_at", "id"),
        Index("ix_calls_from_number_created_at_id", "from_number", "created_at", "id"),
        Index("ix_calls_to_number_created_at_id", "to_number", "created_at", "id"),
        Index("ix_calls_custom_field_created_at_id", "custom_field", "created_at", "id"),
        Index(
            "ix_calls_next_reconcile_at",
            "next_reconcile_at",
            postgresql_where=text("next_reconcile_at IS NOT NULL"),
        ),
        Index(
            "ix_calls_details_next_at",
            "details_next_at",
            postgresql_where=text("details_next_at IS NOT NULL"),
        ),
    )


class Leg(Base):
    __tablename__ = "call_legs"

    call_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    leg: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str | None] = mapped_column(String(32))
    on_call_duration: Mapped[int | None] = mapped_column(Integer)
    answered_by: Mapped[str | None] = mapped_column(String(32))


class CallEvent(Base):
    """Everything Exotel told us about a call, raw, in the order we received it."""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), index=True
    )
    call_sid: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    event_type: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str | None] = mapped_column(String(32))
    content_type: Mapped[str | None] = mapped_column(String(255))
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)
    # Whether the event changed the call; false until it is processed.
    applied: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=func.now()
    )
    # Null while a stored callback waits for the applier (app/callbacks/applier.py).
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "ix_call_events_unprocessed",
            "id",
            postgresql_where=text("processed_at IS NULL"),
        ),
    )


class Notification(Base):
    """Outbox of deliveries to a call's notify_url: one per call and event type,
    `call.finished` when it ends, `call.updated` when its figures arrive."""

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    call_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(
        String(32), default="call.finished", server_default="call.finished"
    )
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=func.now()
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("call_id", "event_type", name="uq_notifications_call_id_event_type"),
        Index(
            "ix_notifications_pending_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
