"""Figures Exotel fills in minutes after a call ends: Price, Duration, sometimes EndTime.

Callbacks carry neither Price nor Duration; only call details do, about 2 to 5 minutes
after the end. So a call that finishes with a Sid and without a Price is given a first
look DETAILS_AFTER_S after its end (`store.save_applied` sets `details_next_at`). This
job claims due calls, up to 100 at a time (one bulk call-details request: at Exotel's
full 200 calls a minute, about two requests a minute of the shared budget), and
applies what Exotel says through `apply_update`, under the call's lock, storing each
call's answer as a `reconcile` event. A call with a notify_url whose figures arrive
after its end is told with a `call.updated` notification (its own webhook-id).

A call whose figures are not there yet (Exotel does not list it yet, or lists it
without a Price) is looked at again later, each wait twice the last (at most an hour),
until GIVE_UP_AFTER past its end; then it is left without them, saying so in its
events (`figures_gave_up`), in the log and in `callbridge_details_outcomes_total`.

Replicas share the work like the reconciler's: due calls are claimed with FOR UPDATE
SKIP LOCKED and their `details_next_at` moved past the look (a lease); a process that
dies mid-look leaves them to be looked at again when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.calls import store
from app.calls.apply import apply_update
from app.calls.state import CallState
from app.calls.store import call_events, calls
from app.config import Settings
from app.exotel.client import (
    MAX_SIDS_PER_REQUEST,
    CallDetails,
    ExotelClient,
    ExotelError,
    ExotelRateLimited,
)
from app.exotel.limits import longest_call
from app.metrics import DETAILS_OUTCOMES

log = structlog.get_logger(__name__)

BATCH: Final = MAX_SIDS_PER_REQUEST  # Sids per look: one bulk request
MAX_INTERVAL: Final = timedelta(hours=1)
GIVE_UP_AFTER: Final = timedelta(hours=24)  # past the end; Exotel fills them within minutes
GAVE_UP: Final = "figures_gave_up"  # the event that says so
# Longer than one look takes (a bulk request or two, bounded by EXOTEL_TIMEOUT_S).
CLAIM_LEASE: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class FiguresSchedule:
    """When to look again for a finished call's figures."""

    first_after: timedelta  # DETAILS_AFTER_S
    give_up_after: timedelta = GIVE_UP_AFTER

    def next_look(self, ended_at: datetime, looks: int, now: datetime) -> datetime | None:
        """After `looks` looks without the figures: when to look again, or None to give up."""
        if now >= ended_at + self.give_up_after:
            return None
        wait = min(self.first_after * (1 << min(looks - 1, 32)), MAX_INTERVAL)
        return min(now + wait, ended_at + self.give_up_after)


@dataclass(frozen=True)
class Figures:
    """What one look found: the calls whose figures are in, the Sids still waiting (not
    listed, as an ongoing or unknown call is not, or listed without a Price), and every
    call the answer listed, with its JSON."""

    arrived: dict[str, CallDetails]
    waiting: list[str]
    listed: dict[str, CallDetails]


async def look_for_figures(exotel: ExotelClient, sids: Sequence[str]) -> Figures:
    """One look for up to BATCH calls' figures: one bulk call-details request."""
    if len(sids) > BATCH:
        raise ValueError(f"at most {BATCH} Sids a look")
    asked = set(sids)
    listed = {
        found.call.sid: found
        for found in await exotel.bulk_details_by_sids(sids)
        if found.call.sid in asked
    }
    arrived = {sid: found for sid, found in listed.items() if found.call.has_figures}
    return Figures(arrived, [sid for sid in dict.fromkeys(sids) if sid not in arrived], listed)


@dataclass(frozen=True)
class _Due:
    """A claimed call; `look` counts this look too."""

    id: uuid.UUID
    sid: str
    ended_at: datetime
    look: int


class DetailsJob:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._exotel = exotel
        self._schedule = FiguresSchedule(first_after=settings.details_after)
        # Often enough that a first look is at most half DETAILS_AFTER_S late.
        self._pause_s = min(
            settings.reconcile_interval_s, settings.details_after.total_seconds() / 2
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Look for the figures that are due, then pause, until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.run_once(stopping)
            except Exception:
                log.exception("details_run_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._pause_s):
                    await stopping.wait()

    async def run_once(self, stopping: asyncio.Event | None = None) -> int:
        """Look at the due calls, a batch a look, until none is left or the fleet's Exotel
        budget has no place to spare (lookups take only the places placing calls leave:
        no share per process); return how many calls were looked at."""
        looked_at = 0
        while not (stopping is not None and stopping.is_set()):
            due = await self._claim()
            if not due:
                break
            try:
                await self._look(due)
            except asyncio.CancelledError:
                await asyncio.shield(self._release(due))
                raise
            except ExotelRateLimited:
                # No place to spare: this was no look. The calls stay due for the next run.
                await self._release(due)
                break
            except Exception:
                # The lease stands: the calls are looked at again when it ends.
                log.exception("details_look_failed", calls=len(due))
                DETAILS_OUTCOMES.labels("error").inc(len(due))
            looked_at += len(due)
            if len(due) < BATCH:
                break
        return looked_at

    async def _claim(self) -> list[_Due]:
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            rows = (
                await conn.execute(
                    select(
                        calls.c.id,
                        calls.c.sid,
                        calls.c.end_time,
                        calls.c.created_at,
                        calls.c.details_looks,
                    )
                    .where(calls.c.details_next_at <= func.now())
                    .order_by(calls.c.details_next_at)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return []
            await conn.execute(
                calls.update()
                .where(calls.c.id.in_([row.id for row in rows]))
                .values(
                    details_next_at=func.now() + CLAIM_LEASE,
                    details_looks=calls.c.details_looks + 1,
                    updated_at=calls.c.updated_at,
                )
            )
        return [
            _Due(
                id=row.id,
                sid=row.sid,
                # A call without an EndTime: as if it had run as long as it could.
                ended_at=row.end_time or row.created_at + longest_call(None, None),
                look=row.details_looks + 1,
            )
            for row in rows
        ]

    async def _release(self, due: list[_Due]) -> None:
        """Undo the claim of a look that was interrupted (the process is stopping)."""
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            await conn.execute(
                calls.update()
                .where(calls.c.id.in_([call.id for call in due]))
                .values(
                    details_next_at=func.now(),
                    details_looks=calls.c.details_looks - 1,
                    updated_at=calls.c.updated_at,
                )
            )

    async def _look(self, due: list[_Due]) -> None:
        # Without an answer, the calls wait for their next look like any other.
        not_in = "waiting"
        try:
            figures = await look_for_figures(self._exotel, [call.sid for call in due])
        except ExotelRateLimited:
            raise
        except ExotelError as exc:
            log.warning("details_exotel_failed", exotel_status=exc.status, reason=exc.message)
            figures, not_in = Figures({}, [call.sid for call in due], {}), "exotel_error"
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            locked = await store.lock(conn, [call.id for call in due])
            results = []
            events: list[dict[str, Any]] = []
            arrived: list[CallState] = []  # the figures came with this look
            for call in locked.values():
                found = figures.listed.get(call.sid or "")
                if found is None:
                    continue
                had_figures = call.price is not None
                applied = apply_update(call, found.call.to_update())
                results.append((call, applied))
                events.append(_event(call.id, now, found, "call_details", applied.changed))
                if call.price is not None and not had_figures:
                    arrived.append(call)
            await store.save_applied(conn, results, details_after=self._schedule.first_after)
            await store.add_notifications(conn, arrived, store.UPDATED)
            done = {call.id for call in locked.values() if call.price is not None}
            gave_up = await self._schedule_next(conn, due, done, now)
            # Our conclusion rather than an Exotel message: how long we asked.
            events.extend(
                _event(
                    left.id,
                    now,
                    None,
                    GAVE_UP,
                    False,
                    Sid=left.sid,
                    Looks=left.look,
                    EndTime=left.ended_at.isoformat(),
                )
                for left in gave_up
            )
            if events:
                await conn.execute(insert(call_events), events)
        DETAILS_OUTCOMES.labels("arrived").inc(len(arrived))
        DETAILS_OUTCOMES.labels(not_in).inc(len(due) - len(done) - len(gave_up))
        DETAILS_OUTCOMES.labels("gave_up").inc(len(gave_up))
        for left in gave_up:
            log.warning("details_gave_up", call_id=str(left.id), sid=left.sid, looks=left.look)

    async def _schedule_next(
        self, conn: AsyncConnection, due: list[_Due], done: set[uuid.UUID], now: datetime
    ) -> list[_Due]:
        """Stop looking for the calls that have their figures, book the next look for the
        others, and return those given up on."""
        next_looks = {
            call.id: None
            if call.id in done
            else self._schedule.next_look(call.ended_at, call.look, now)
            for call in due
        }
        # Bookkeeping, not news about the call: `updated_at` keeps its value.
        await conn.execute(
            update(calls)
            .where(calls.c.id == bindparam("call_id"))
            .values(details_next_at=bindparam("next_at"), updated_at=calls.c.updated_at),
            [{"call_id": call_id, "next_at": at} for call_id, at in next_looks.items()],
        )
        return [call for call in due if call.id not in done and next_looks[call.id] is None]


def _event(
    call_id: uuid.UUID,
    now: datetime,
    found: CallDetails | None,
    event_type: str,
    applied: bool,
    **record: Any,
) -> dict[str, Any]:
    """A `reconcile` event: Exotel's answer for the call, or our conclusion (`record`)."""
    sid: str | None = None
    status: str | None = None
    if found is not None:
        raw_body, sid, status = found.raw, found.call.sid, found.call.status
    else:
        raw_body = json.dumps(record).encode()
    return {
        "call_id": call_id,
        "call_sid": sid,
        "source": "reconcile",
        "event_type": event_type,
        "status": status,
        "content_type": "application/json",
        "raw_body": raw_body,
        "applied": applied,
        "received_at": now,
        "processed_at": now,
    }
