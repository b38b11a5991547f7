"""Storing status callbacks: one statement, one round trip, then Exotel gets its 2xx.

Callbacks that arrive while others are being stored wait, and are stored together by the
next statement (group commit): under load one statement stores dozens, for a fraction
of the CPU each would cost alone (bench/README.md); an idle service stores each at once.
Every callback is still answered only once its own row is committed.

Each is applied later, by the applier (app/callbacks/applier.py) of this process, which
the store wakes. What is stored is the raw body as received, whether or not it could be
parsed: nothing that passed the token check is lost.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
import structlog

from app.callbacks.applier import CallbackApplier
from app.db import ConnectionPool
from app.errors import Problem
from app.exotel.schemas import ExotelCallback

log = structlog.get_logger(__name__)

# Lengths of the call_events summary columns; the raw body keeps the full values.
SHORT_COLUMN = 32
SID_COLUMN = 64
CONTENT_TYPE_COLUMN = 255
# Statements storing callbacks at once, each of up to BATCH callbacks. While they are in
# flight the next callbacks gather; two keep the database busy without taking more than
# two of the pool's connections from reads and placing.
WRITERS = 2
BATCH = 200

# A token speaks for one call: its callbacks may carry that call's Sid, or, while the
# call has none yet (the connect answer is not stored, or was lost), a Sid no other call
# has. Checked and stored in one statement, for a batch of callbacks given as one JSON
# array (raw bodies in base64): orjson writes it for a tenth of the CPU psycopg takes to
# dump the same values as arrays, element by element (bench/README.md). Each accepted
# callback is given its event id beside its position in the batch.
_STORE = """
    WITH accepted AS (
        SELECT nextval('call_events_id_seq') AS id, given.*
        FROM json_to_recordset(%(callbacks)s::json)
            AS given (position integer, call_id uuid, sid varchar, event_type varchar,
                      status varchar, content_type varchar, raw_body text,
                      received_at timestamptz, applicable boolean)
        JOIN calls ON calls.id = given.call_id
        WHERE given.sid IS NULL
           OR calls.sid = given.sid
           OR (calls.sid IS NULL
               AND NOT EXISTS (SELECT FROM calls AS owner WHERE owner.sid = given.sid))
    ), stored AS (
        INSERT INTO call_events (id, call_id, call_sid, source, event_type, status,
                                 content_type, raw_body, applied, received_at, processed_at)
        SELECT id, call_id, sid, 'callback', event_type, status, content_type,
               decode(raw_body, 'base64'), false, received_at,
               CASE WHEN applicable THEN NULL ELSE received_at END
        FROM accepted
    )
    SELECT coalesce(array_agg(position ORDER BY position), '{}'),
           coalesce(array_agg(id ORDER BY position), '{}')
    FROM accepted
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


@dataclass(frozen=True)
class _Waiting:
    received: ReceivedCallback
    # Set once its statement ends: stored (True), refused by it (False), or its error.
    stored: asyncio.Future[bool]


def _column_text(value: str | None, length: int) -> str | None:
    """A value Postgres text can hold: no NUL, no lone surrogate, at most `length` chars."""
    if value is None:
        return None
    storable = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return storable[:length]


def _summary(callback: ExotelCallback | None, name: str, length: int = SHORT_COLUMN) -> str | None:
    """A parsed field for its summary column of call_events."""
    return _column_text(getattr(callback, name), length) if callback is not None else None


class CallbackInbox:
    def __init__(self, pool: ConnectionPool, applier: CallbackApplier) -> None:
        """Each callback stored wakes `applier`, this process's (cheaper than a NOTIFY,
        which serialises the commits of every session that sends one), and hands it the
        callback already parsed; while its backlog is full, storing waits for room."""
        self._pool = pool
        self._applier = applier
        self._waiting: list[_Waiting] = []
        self._writing = 0
        # Only weak references keep a task alive otherwise.
        self._writers: set[asyncio.Task[None]] = set()

    async def store(self, received: ReceivedCallback) -> None:
        """Store the callback durably, or raise the Problem that refuses it (404, 403)."""
        waiting = _Waiting(received, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if self._writing < WRITERS:
            self._writing += 1
            writer = asyncio.create_task(self._write_while_waiting())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        if not await waiting.stored:
            await self._refusal(received)

    async def _write_while_waiting(self) -> None:
        try:
            while self._waiting:
                await self._applier.room()
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                try:
                    outcomes = await self._write(batch)
                except BaseException as exc:
                    for waiting in batch:
                        if not waiting.stored.done():
                            waiting.stored.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    # A request that is gone (its client left) has cancelled its future.
                    if not waiting.stored.done():
                        waiting.stored.set_result(outcome)
        finally:
            # Counted down in the same step as the last look at what waits: a callback
            # queued after it finds a writer to start.
            self._writing -= 1

    async def _write(self, batch: Sequence[_Waiting]) -> list[bool]:
        """Store the batch in one statement; whether each callback was accepted."""
        received = [waiting.received for waiting in batch]
        callbacks = [one.callback for one in received]
        rows = [
            {
                "position": position,
                "call_id": one.call_id,
                "sid": _summary(callback, "call_sid", SID_COLUMN),
                "event_type": _summary(callback, "event_type"),
                "status": _summary(callback, "status"),
                "content_type": _column_text(one.content_type, CONTENT_TYPE_COLUMN),
                "raw_body": base64.b64encode(one.raw_body).decode(),
                "received_at": one.received_at,
                "applicable": callback is not None,
            }
            for position, (one, callback) in enumerate(zip(received, callbacks, strict=True), 1)
        ]
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_STORE, {"callbacks": orjson.dumps(rows).decode()})
            row = await cursor.fetchone()
        assert row is not None  # aggregates: always one row
        positions, event_ids = row
        accepted = [position - 1 for position in positions]
        for index, event_id in zip(accepted, event_ids, strict=True):
            # A callback that did not parse is stored as processed: nothing to apply.
            if callbacks[index] is not None:
                self._applier.wake(event_id, callbacks[index])
        outcomes = [False] * len(batch)
        for index in accepted:
            outcomes[index] = True
        return outcomes

    async def _refusal(self, received: ReceivedCallback) -> None:
        """Raise the Problem that refused the callback (the rare path takes a round trip
        of its own)."""
        async with self._pool.connection() as conn:
            found = await (await conn.execute(_CALL_SID, {"call_id": received.call_id})).fetchone()
        if found is None:
            # Only possible if the call was deleted: tokens are made for stored calls.
            raise Problem(404, "call-not-found", "The token names no stored call")
        callback = received.callback
        log.warning(
            "callback_sid_mismatch",
            call_id=str(received.call_id),
            call_sid=found[0],
            sid=_summary(callback, "call_sid", SID_COLUMN),
        )
        raise Problem(
            403,
            "callback-sid-mismatch",
            "The callback's CallSid is not the Sid of the token's call",
        )
