"""A call as the service works with it: plain data, read and written with SQLAlchemy Core.

The hot paths (placing, applying callbacks) and the reads build a `CallState` from one
row and never go through the ORM; `app.calls.apply` changes it, `app.calls.store` writes
it back, and `CallOut.from_state` renders it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass
class LegState:
    leg: int
    number: str | None
    status: str | None = None
    on_call_duration: int | None = None
    answered_by: str | None = None


@dataclass(frozen=True)
class NotifyState:
    status: str
    attempts: int
    last_error: str | None


@dataclass
class CallState:
    id: uuid.UUID
    sid: str | None
    status: str
    from_number: str
    to_number: str
    caller_id: str
    created_at: datetime
    updated_at: datetime
    direction: str | None = None
    custom_field: str | None = None
    notify_url: str | None = None
    exotel_created_at: datetime | None = None
    exotel_updated_at: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    conversation_duration: int | None = None
    price: Decimal | None = None
    recording_url: str | None = None
    answered_by: str | None = None
    error_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    legs: list[LegState] = field(default_factory=list)
    notify: NotifyState | None = None

    @classmethod
    def from_row(
        cls, row: Any, legs: list[LegState], notify: NotifyState | None = None
    ) -> CallState:
        """From a row whose first columns are CALL_STATE_COLUMNS, in that order (by
        position: a row's mapping costs more than the rest of reading a call)."""
        return cls(*row[:_STATE_COLUMN_COUNT], legs=legs, notify=notify)  # type: ignore[misc]


# The calls columns a CallState holds, in the order of its fields.
CALL_STATE_COLUMNS = tuple(
    name for name in CallState.__dataclass_fields__ if name not in ("legs", "notify")
)
_STATE_COLUMN_COUNT = len(CALL_STATE_COLUMNS)
# What Exotel's messages may change (see app.calls.apply); the rest is ours.
APPLIED_COLUMNS = (
    "sid",
    "status",
    "exotel_created_at",
    "exotel_updated_at",
    "start_time",
    "end_time",
    "duration",
    "conversation_duration",
    "price",
    "recording_url",
    "answered_by",
    "direction",
    "error_status",
    "error_code",
    "error_message",
)
