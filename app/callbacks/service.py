"""Storing a status callback: one statement, one round trip, then Exotel gets its 2xx.

The callback is applied later, by the applier (app/callbacks/applier.py) of this process,
which the store wakes. What is stored is the raw body as received, whether or not it could
be parsed: nothing that passed the token check is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from app.db import ConnectionPool
from app.errors import Problem
from app.exotel.schemas import ExotelCallback

log = structlog.get_logger(__name__)

# Lengths of the call_events summary columns; the raw body keeps the full values.
SHORT_COLUMN = 32
SID_COLUMN = 64
CONTENT_TYPE_COLUMN = 255

# A token speaks for one call: its callbacks may carry that call's Sid, or, while the
# call has none yet (the connect answer is not stored, or was lost), a Sid no other call
# has. Checked and stored in one statement.
_STORE = """
    INSERT INTO call_events (call_id, call_sid, source, event_type, status, content_type,
                             raw_body, applied, received_at, processed_at)
    SELECT calls.id, CAST(%(sid)s AS varchar), 'callback', %(event_type)s, %(status)s,
           %(content_type)s, %(raw_body)s, false, %(received_at)s,
           CASE WHEN %(applicable)s THEN NULL ELSE CAST(%(received_at)s AS timestamptz) END
    FROM calls
    WHERE calls.id = %(call_id)s
      AND (CAST(%(sid)s AS varchar) IS NULL
           OR calls.sid = %(sid)s
           OR (calls.sid IS NULL
               AND NOT EXISTS (SELECT FROM calls AS owner WHERE owner.sid = %(sid)s)))
    RETURNING id
"""
_CALL_SID = "SELECT sid FROM calls WHERE id = %(call_id)s"


@dataclass(frozen=True)
class ReceivedCallback:
    """A callback that passed the token check, as received; `callback` if it parsed."""

    call_id: uuid.UUID
    callback: ExotelCallback | None
    raw_body: bytes
    content_type: str | None
    received_at: datetime


def _column_text(value: str | None, length: int) -> str | None:
    """A value Postgres text can hold: no NUL, no lone surrogate, at most `length` chars."""
    if value is None:
        return None
    storable = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return storable[:length]


class CallbackInbox:
    def __init__(
        self, pool: ConnectionPool, *, stored: Callable[[int, ExotelCallback], None]
    ) -> None:
        """`stored` is given each callback to apply, with its event id, once stored: it
        wakes this process's applier (cheaper than a NOTIFY, which serialises the commits
        of every session that sends one) and hands it the callback already parsed."""
        self._pool = pool
        self._stored = stored

    async def store(self, received: ReceivedCallback) -> None:
        """Store the callback durably, or raise the Problem that refuses it (404, 403)."""
        callback = received.callback
        sid = _column_text(callback.call_sid, SID_COLUMN) if callback else None
        async with self._pool.connection() as conn:
            stored = await (
                await conn.execute(
                    _STORE,
                    {
                        "call_id": received.call_id,
                        "sid": sid,
                        "event_type": _column_text(
                            callback.event_type if callback else None, SHORT_COLUMN
                        ),
                        "status": _column_text(callback.status if callback else None, SHORT_COLUMN),
                        "content_type": _column_text(received.content_type, CONTENT_TYPE_COLUMN),
                        "raw_body": received.raw_body,
                        "received_at": received.received_at,
                        "applicable": callback is not None,
                    },
                )
            ).fetchone()
            if stored is not None:
                if callback is not None:
                    self._stored(stored[0], callback)
                return
            # Refused: say why (the rare path may take a second round trip).
            found = await (await conn.execute(_CALL_SID, {"call_id": received.call_id})).fetchone()
        if found is None:
            # Only possible if the call was deleted: tokens are made for stored calls.
            raise Problem(404, "call-not-found", "The token names no stored call")
        log.warning(
            "callback_sid_mismatch", call_id=str(received.call_id), call_sid=found[0], sid=sid
        )
        raise Problem(
            403,
            "callback-sid-mismatch",
            "The callback's CallSid is not the Sid of the token's call",
        )
