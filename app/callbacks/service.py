"""How a status callback changes a call: stored first, then applied, in one transaction.

The call's row is locked first, so callbacks for one call, and Exotel's connect answer,
are applied one after another in a definite order; the event ids, drawn under that
lock, record that order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.models import Call, CallEvent
from app.calls.service import CallService
from app.errors import Problem
from app.exotel.schemas import ExotelCallback

log = structlog.get_logger(__name__)

# Lengths of the call_events summary columns; the raw body keeps the full values.
SHORT_COLUMN = 32
CONTENT_TYPE_COLUMN = 255


@dataclass(frozen=True)
class ReceivedCallback:
    """A callback that passed authentication and parsing, with what is kept of it."""

    call_id: uuid.UUID
    callback: ExotelCallback
    raw_body: bytes
    content_type: str | None
    received_at: datetime


class CallbackService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(self, received: ReceivedCallback) -> bool:
        """Store the callback and apply it to its call; True if the call changed."""
        callback = received.callback
        async with self._sessions() as session, session.begin():
            call = await self._lock(session, received.call_id)
            await self._refuse_another_calls_sid(session, call, callback.call_sid)
            event = CallEvent(
                call_id=call.id,
                call_sid=callback.call_sid,
                source="callback",
                event_type=_truncated(callback.event_type, SHORT_COLUMN),
                status=_truncated(callback.status, SHORT_COLUMN),
                content_type=_truncated(received.content_type, CONTENT_TYPE_COLUMN),
                raw_body=received.raw_body,
                applied=False,
                received_at=received.received_at,
            )
            session.add(event)
            await session.flush()
            try:
                # A value the database refuses (a status too long for its column, say)
                # must not cost us the stored event: only the apply step is undone.
                async with session.begin_nested():
                    applied = await CallService.apply(session, call, callback.to_update())
            except (DataError, IntegrityError) as exc:
                # Only a value the database refuses; a lost connection or a timeout must
                # fail the whole request (503) so that Exotel retries it.
                # The database's own message only: SQLAlchemy's would show the statement's
                # parameters, and with them the legs' phone numbers.
                log.error(
                    "callback_not_applied",
                    call_id=str(received.call_id),
                    sid=callback.call_sid,
                    reason=str(exc.orig),
                )
                return False
            event.applied = applied.changed
        log.info(
            "callback_received",
            call_id=str(received.call_id),
            sid=callback.call_sid,
            event_type=callback.event_type,
            status=callback.status,
            changed=applied.changed,
            call_status=applied.status,
        )
        return applied.changed

    @staticmethod
    async def _lock(session: AsyncSession, call_id: uuid.UUID) -> Call:
        try:
            return await CallService.lock(session, call_id)
        except NoResultFound:
            # Only possible if the call was deleted: tokens are made for stored calls.
            raise Problem(404, "call-not-found", "The token names no stored call") from None

    @staticmethod
    async def _refuse_another_calls_sid(session: AsyncSession, call: Call, sid: str) -> None:
        """A token speaks for one call: its callbacks may not carry another call's Sid."""
        if call.sid == sid:
            return
        if call.sid is None:
            owner = await session.scalar(select(Call.id).where(Call.sid == sid))
            if owner is None:
                # Exotel's connect answer is not saved yet (or was lost): the token
                # names the call, and its Sid is learnt from this callback.
                return
        log.warning("callback_sid_mismatch", call_id=str(call.id), call_sid=call.sid, sid=sid)
        raise Problem(
            403,
            "callback-sid-mismatch",
            "The callback's CallSid is not the Sid of the token's call",
        )


def _truncated(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None
