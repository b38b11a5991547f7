"""Reconciliation: settles the calls that Exotel's callbacks and answers left open.

A call is due when its `next_reconcile_at` has passed; CallService sets it when it
stores the call:
- placed, not finished: RECONCILE_AFTER_S after creation. The call is then read with
  Exotel's call-details API, by Sid.
- `unknown` (the connect answer was lost): 30 s after the attempt. It has no Sid, so
  it is searched for with the bulk call-details API, by its numbers and creation time.
  Exactly one match that no other call owns is attached and applied, unless another
  unsettled call between the same numbers could be its owner; several candidates leave
  the call as it is (a wrong Sid is worse than none), logged and counted. None is no
  proof: bulk details list a call only once it has ended, and a call whose answer was
  lost may be talking for hours. So the call stays `unknown` (its Idempotency-Key
  answering 504 with its id) until the longest it could last (app/exotel/limits.py: its
  TimeOut and TimeLimit, Exotel's maxima when unset) and RECONCILE_UNKNOWN_GRACE_S more
  have passed since it was requested; only then is it failed as not placed, and its
  Idempotency-Key released so that a retry may place it.
- `pending`: a few seconds (CLAIM_GRACE) after creation, if no live process claims it
  (app/claims.py): the process placing it died. If its connect request surely never
  left, it is failed at once and its Idempotency-Key released; if it may have left, it
  becomes `unknown` and is searched for by its numbers, as above. Which one is told by
  `connect_reserved_at`: the statement that stores a call also reserves its connect
  request's place under the Exotel limit, and marks the call if and only if it got one
  (app/calls/service.py). A call is sent only with that place, so an unmarked call is
  never sent, by a live but slow process either.
  Why a mark, and why there: "sent" cannot be inferred from the claim alone, and a
  separate write would cost placing a round trip; the insert is a statement placing
  makes anyway, so the mark rides on it for free.

What Exotel answers is stored as a `reconcile` event and applied through
`apply_update`, under the same rules as callbacks. A look that does not settle
the call schedules the next one RECONCILE_INTERVAL_S * 2**(looks - 1) later, at most
an hour; after RECONCILE_GIVE_UP_S from creation the call is left as it is, and
logged. A Sid that Exotel answers 404 for on SID_NOT_FOUND_LOOKS looks is left
`unknown` with an error saying so, and no longer looked at. Reconciliation never places
a call. Its requests go through the fleet's Exotel limiter at background priority:
they take only places that placing calls leave spare, and a run stops when none is
left (the calls stay due for the next run).

Runners share the work through session claims (app/claims.py): a runner claims a due
call with an advisory lock on its claims session, skipping calls another session holds
(the SKIP LOCKED of advisory locks), looks, schedules the next look, then releases. If
the runner dies, Postgres frees its claims at once, and any other runner looks at the
call on its next run: seconds, not a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, Select, func, insert, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import store
from app.calls.apply import Applied, apply_update, is_terminal
from app.calls.models import Call, CallEvent
from app.calls.service import mask_number, to_e164
from app.calls.state import CallState
from app.calls.store import calls
from app.claims import ClaimKind, SessionClaims, unheld
from app.config import Settings
from app.exotel.client import (
    CallDetails,
    ExotelClient,
    ExotelError,
    ExotelRateLimited,
    exotel_time,
)
from app.exotel.limits import longest_call
from app.exotel.schemas import CallUpdate, ExotelCall
from app.metrics import RECONCILE_OUTCOMES, record_status_change

log = structlog.get_logger(__name__)

# Due calls a claim chooses from, in order: more than the runners that may be
# claiming at once.
CANDIDATES = 20
# Looks that found Exotel answering 404 for a call's Sid before the call is left alone.
SID_NOT_FOUND_LOOKS = 5
MAX_BACKOFF_S = 3600.0
# Exotel's clock against ours, and how late after our row the connect request may have
# left (the rate limiter may have held it): the bulk search window around creation.
CLOCK_SKEW = timedelta(minutes=2)
SEARCH_SPAN = timedelta(minutes=10)
UNRESOLVED = ("unknown", "pending")
NEVER_SENT = "The process placing this call stopped before sending it to Exotel: it was not placed"
ABANDONED = (
    "The process placing this call stopped after its request may have left for Exotel: "
    "its outcome is not known yet"
)
SID_UNKNOWN = (
    f"Exotel answered 404 (no such call) for this call's Sid on {SID_NOT_FOUND_LOOKS} looks: "
    "its outcome cannot be known, and Callbridge stopped looking"
)
NOT_PLACED = (
    "Exotel has no call from and to these numbers created when this one was requested: "
    "the connect request did not place it (found by reconciliation)"
)


@dataclass(frozen=True)
class _Due:
    """A claimed call, as it was when claimed; `look` counts this look too."""

    id: uuid.UUID
    sid: str | None
    status: str
    from_number: str
    to_number: str
    created_at: datetime
    look: int
    # Whether a place under the Exotel limit was reserved for its connect request.
    connect_reserved: bool


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        settings: Settings,
        claims: SessionClaims,
    ) -> None:
        self._sessions = sessions
        self._exotel = exotel
        self._claims = claims
        self._interval_s = settings.reconcile_interval_s
        self._after = timedelta(seconds=settings.reconcile_after_s)
        self._unknown_grace = timedelta(seconds=settings.reconcile_unknown_grace_s)
        self._give_up = timedelta(seconds=settings.reconcile_give_up_s)
        self._details_after = settings.details_after
        self._country = settings.default_country

    async def run(self, stopping: asyncio.Event) -> None:
        """Every RECONCILE_INTERVAL_S, look at the due calls, until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.run_once(stopping)
            except Exception:
                log.exception("reconcile_run_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await stopping.wait()

    async def run_once(self, stopping: asyncio.Event | None = None) -> int:
        """Look at the due calls, one at a time, until none is left or the Exotel limit
        has no place to spare; return how many were looked at."""
        looks = 0
        while not (stopping is not None and stopping.is_set()):
            due = await self._claim()
            if due is None:
                break
            try:
                outcome = await self._look(due)
            except asyncio.CancelledError:
                await asyncio.shield(self._unclaim(due, looked=False))
                raise
            except Exception:
                log.exception("reconcile_look_failed", call_id=str(due.id))
                outcome = "error"
                with contextlib.suppress(Exception):
                    await self._reschedule(due)
            if outcome == "throttled":
                # No place to spare: this was no look. The call stays due for the next run.
                await self._unclaim(due, looked=False)
                break
            await self._unclaim(due, looked=True)
            looks += 1
            RECONCILE_OUTCOMES.labels(outcome).inc()
        return looks

    async def _claim(self) -> _Due | None:
        """Claim the first due call no other runner holds and no live process is placing
        (2 round trips: the claim on the claims session, then the count of looks)."""

        def due(*where: ColumnElement[bool]) -> Select[tuple[uuid.UUID]]:
            return (
                select(calls.c.id)
                .where(
                    calls.c.next_reconcile_at <= func.now(),
                    unheld(ClaimKind.RECONCILING, calls.c.id),
                    *where,
                )
                .order_by(calls.c.next_reconcile_at)
                .limit(CANDIDATES)
            )

        # Calls their dead process left pending first: their clients wait on them (409
        # for their key) and there are few; then the others, in order.
        candidates = union_all(
            due(calls.c.status == "pending", unheld(ClaimKind.PLACING, calls.c.id)),
            due(calls.c.status != "pending"),
        )
        while (
            call_id := await self._claims.claim_first(ClaimKind.RECONCILING, candidates)
        ) is not None:
            # Chosen from a snapshot taken before the claim: another runner may have
            # looked at it meanwhile. Still due, it is ours.
            async with self._sessions() as session, session.begin():
                row = (
                    await session.execute(
                        update(Call)
                        .where(Call.id == call_id, Call.next_reconcile_at <= func.now())
                        .values(
                            reconcile_attempts=Call.reconcile_attempts + 1,
                            updated_at=Call.updated_at,
                        )
                        .returning(
                            Call.sid,
                            Call.status,
                            Call.from_number,
                            Call.to_number,
                            Call.created_at,
                            Call.reconcile_attempts,
                            Call.connect_reserved_at,
                        )
                    )
                ).one_or_none()
            if row is not None:
                return _Due(
                    id=call_id,
                    sid=row.sid,
                    status=row.status,
                    from_number=row.from_number,
                    to_number=row.to_number,
                    created_at=row.created_at,
                    look=row.reconcile_attempts,
                    connect_reserved=row.connect_reserved_at is not None,
                )
            await self._claims.release(ClaimKind.RECONCILING, call_id)
        return None

    async def _unclaim(self, due: _Due, *, looked: bool) -> None:
        """Release the claim; a look that did not happen is not counted."""
        if not looked:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(Call)
                    .where(Call.id == due.id, Call.reconcile_attempts == due.look)
                    .values(reconcile_attempts=due.look - 1, updated_at=Call.updated_at)
                )
        await self._claims.release(ClaimKind.RECONCILING, due.id)

    async def _look(self, due: _Due) -> str:
        if is_terminal(due.status):
            async with self._sessions() as session, session.begin():
                await _schedule(session, due.id, None)
            return "final"
        if due.status == "pending":
            if not due.connect_reserved:
                return await self._fail_never_sent(due)
            due = await self._left_unknown(due)
        try:
            if due.sid is not None:
                return await self._by_sid(due, due.sid)
            return await self._by_numbers(due)
        except ExotelRateLimited:
            return "throttled"
        except ExotelError as exc:
            log.warning(
                "reconcile_exotel_failed",
                call_id=str(due.id),
                exotel_status=exc.status,
                reason=exc.message,
            )
            await self._reschedule(due)
            return "exotel_error"

    async def _by_sid(self, due: _Due, sid: str) -> str:
        details = await self._exotel.call_details(sid)
        if details is None:
            log.warning("reconcile_sid_unknown_to_exotel", call_id=str(due.id), sid=sid)
            return await self._sid_not_found(due, sid)
        async with self._sessions() as session, session.begin():
            call = await _lock(session, due.id)
            applied = await _apply(session, call, details, self._details_after)
            await self._schedule_next(session, due, call)
        return _outcome(applied)

    async def _sid_not_found(self, due: _Due, sid: str) -> str:
        """Note Exotel's 404 as an event; on the SID_NOT_FOUND_LOOKS-th, stop looking.

        The call had a Sid, so Exotel accepted it: `failed` would say it was not placed,
        and its last status (say `in-progress`) would say it still runs. `unknown` with
        an error is what it is: placed, outcome not known. A late callback may still
        settle it."""
        async with self._sessions() as session, session.begin():
            call = await _lock(session, due.id)
            if call.sid != sid or is_terminal(call.status):
                await self._schedule_next(session, due, call)
                return "settled_meanwhile"
            unchanged = Applied(changed=False, previous_status=call.status, status=call.status)
            record = json.dumps({"Sid": sid, "Status": 404}).encode()
            await _store_event(session, call.id, sid, "sid_not_found", None, record, unchanged)
            found_missing = await session.scalar(
                select(func.count()).where(
                    CallEvent.call_id == call.id,
                    CallEvent.source == "reconcile",
                    CallEvent.event_type == "sid_not_found",
                )
            )
            if (found_missing or 0) < SID_NOT_FOUND_LOOKS:
                await _schedule(session, due.id, self._next_look(due))
                return "sid_not_found"
            await session.execute(
                update(Call)
                .where(Call.id == call.id)
                .values(
                    status="unknown",
                    error_status=404,
                    error_code=None,
                    error_message=SID_UNKNOWN,
                    next_reconcile_at=None,
                    updated_at=func.now(),
                )
            )
        record_status_change(call.status, "unknown")
        log.warning("reconcile_sid_never_found", call_id=str(due.id), sid=sid, looks=due.look)
        return "sid_unknown"

    async def _left_unknown(self, due: _Due) -> _Due:
        """A call its dead process may have sent is `unknown` from now on, like one whose
        connect answer was lost: a retry with its key is told to read the call (504)
        rather than to retry shortly (409), and it is searched for by its numbers."""
        async with self._sessions() as session, session.begin():
            changed = await session.execute(
                update(Call)
                .where(Call.id == due.id, Call.status == "pending", Call.sid.is_(None))
                .values(status="unknown", error_message=ABANDONED, updated_at=func.now())
                .returning(Call.id)
            )
        if changed.first() is not None:
            record_status_change("pending", "unknown")
            log.warning("reconcile_placing_abandoned", call_id=str(due.id))
        return dataclasses.replace(due, status="unknown")

    async def _fail_never_sent(self, due: _Due) -> str:
        """Fail a call its dead process never sent, and release its key (see the module
        docstring for why no live process can send it after this)."""
        async with self._sessions() as session, session.begin():
            call = await _lock(session, due.id)
            if call.status != "pending":
                # Its process recorded Exotel's answer after all, and scheduled the call.
                return "settled_meanwhile"
            record = {"ConnectReserved": False}
            await self._fail_unplaced(session, call, NEVER_SENT, "never_sent", record)
        log.warning("reconcile_never_sent", call_id=str(due.id))
        return "never_sent"

    async def _by_numbers(self, due: _Due) -> str:
        listed = await self._exotel.find_calls(
            to_number=due.to_number,
            created_after=due.created_at - CLOCK_SKEW,
            created_before=due.created_at + SEARCH_SPAN,
        )
        matches = [
            found
            for found in listed
            if self._same_number(found.to, due.to_number)
            and self._same_number(found.from_, due.from_number)
        ]
        async with self._sessions() as session:
            unclaimed = await _unclaimed(session, matches)
            rivals = await self._rivals(session, due)
            conclusive_at = await self._conclusive_at(session, due)
        if len(unclaimed) == 1 and rivals == 0:
            return await self._attach(due, unclaimed[0].sid)
        if unclaimed:
            log.warning(
                "reconcile_ambiguous",
                call_id=str(due.id),
                to_number=mask_number(due.to_number),
                exotel_calls=len(unclaimed),
                other_unknown_calls=rivals,
            )
            await self._reschedule(due)
            return "ambiguous"
        if datetime.now(UTC) < conclusive_at:
            # Not listed may only mean still talking: look again, at the latest then.
            await self._reschedule(due, not_after=conclusive_at)
            return "not_found_yet"
        return await self._fail_not_placed(due, listed)

    async def _conclusive_at(self, session: AsyncSession, due: _Due) -> datetime:
        """From when "not listed" means "not placed": bulk details list a call only once
        it has ended, so not before the longest a call asked like this one could last
        (its TimeOut and TimeLimit, Exotel's maxima when unset), plus
        RECONCILE_UNKNOWN_GRACE_S for Exotel to list it."""
        limits = (
            await session.execute(select(Call.time_out, Call.time_limit).where(Call.id == due.id))
        ).one()
        return (
            due.created_at + longest_call(limits.time_out, limits.time_limit) + self._unknown_grace
        )

    async def _rivals(self, session: AsyncSession, due: _Due) -> int:
        """Other unsettled calls between the same numbers: any one of them may own a match."""
        query = select(func.count()).where(
            Call.id != due.id,
            Call.to_number == due.to_number,
            Call.created_at.between(due.created_at - SEARCH_SPAN, due.created_at + SEARCH_SPAN),
            Call.from_number == due.from_number,
            Call.sid.is_(None),
            Call.status.in_(UNRESOLVED),
        )
        return await session.scalar(query) or 0

    async def _attach(self, due: _Due, sid: str) -> str:
        details = await self._exotel.call_details(sid)
        if details is None:
            await self._reschedule(due)
            return "sid_not_found"
        try:
            async with self._sessions() as session, session.begin():
                call = await _lock(session, due.id)
                if call.sid is not None:
                    # A callback or the connect answer named the Sid meanwhile.
                    await self._schedule_next(session, due, call)
                    return "settled_meanwhile"
                applied = await _apply(session, call, details, self._details_after)
                await self._schedule_next(session, due, call, not_before=call.created_at)
        except IntegrityError:
            log.warning("reconcile_sid_taken", call_id=str(due.id), sid=sid)
            await self._reschedule(due)
            return "ambiguous"
        log.info("reconcile_sid_found", call_id=str(due.id), sid=sid, status=applied.status)
        return "sid_found"

    async def _fail_not_placed(self, due: _Due, listed: list[ExotelCall]) -> str:
        async with self._sessions() as session, session.begin():
            call = await _lock(session, due.id)
            if call.sid is not None or call.status not in UNRESOLVED:
                await self._schedule_next(session, due, call)
                return "settled_meanwhile"
            window = (
                f"gte:{exotel_time(due.created_at - CLOCK_SKEW)};"
                f"lte:{exotel_time(due.created_at + SEARCH_SPAN)}"
            )
            # Our conclusion rather than an Exotel message: what was searched and seen.
            record = {"To": due.to_number, "DateCreated": window, "Listed": [c.sid for c in listed]}
            await self._fail_unplaced(session, call, NOT_PLACED, "not_found", record)
        log.warning("reconcile_not_placed", call_id=str(due.id))
        return "not_placed"

    async def _fail_unplaced(
        self,
        session: AsyncSession,
        call: CallState,
        reason: str,
        event_type: str,
        record: Mapping[str, object],
    ) -> None:
        """Fail a call found never placed, with `record` (what was concluded from) as its
        event; like any failure a retry may cure (see CallService), the key is released."""
        applied = apply_update(call, CallUpdate(status="failed"))
        await store.save_applied(
            await session.connection(), [(call, applied)], details_after=self._details_after
        )
        raw = json.dumps(record).encode()
        await _store_event(session, call.id, None, event_type, "failed", raw, applied)
        await session.execute(
            update(Call)
            .where(Call.id == call.id)
            .values(
                error_status=None,
                error_code=None,
                error_message=reason,
                idempotency_key=None,
                updated_at=Call.updated_at,
            )
        )

    def _same_number(self, exotel_number: str | None, ours: str) -> bool:
        return exotel_number is not None and to_e164(exotel_number, self._country) == ours

    async def _reschedule(self, due: _Due, *, not_after: datetime | None = None) -> None:
        next_look = self._next_look(due)
        if next_look is not None and not_after is not None:
            next_look = min(next_look, not_after)
        async with self._sessions() as session, session.begin():
            await _schedule(session, due.id, next_look)

    async def _schedule_next(
        self,
        session: AsyncSession,
        due: _Due,
        call: CallState,
        *,
        not_before: datetime | None = None,
    ) -> None:
        next_look = None
        if not is_terminal(call.status):
            next_look = self._next_look(due)
            if next_look is not None and not_before is not None:
                # A call just found gets the callback's head start any placed call gets.
                next_look = max(next_look, not_before + self._after)
        await _schedule(session, due.id, next_look)

    def _next_look(self, due: _Due) -> datetime | None:
        now = datetime.now(UTC)
        if now >= due.created_at + self._give_up:
            log.warning("reconcile_gave_up", call_id=str(due.id), status=due.status, looks=due.look)
            RECONCILE_OUTCOMES.labels("gave_up").inc()
            return None
        delay_s = min(self._interval_s * 2 ** min(due.look - 1, 32), MAX_BACKOFF_S)
        return now + timedelta(seconds=delay_s)


async def _schedule(session: AsyncSession, call_id: uuid.UUID, at: datetime | None) -> None:
    # Bookkeeping, not news about the call: `updated_at` keeps its value.
    await session.execute(
        update(Call)
        .where(Call.id == call_id)
        .values(next_reconcile_at=at, updated_at=Call.updated_at)
    )


async def _unclaimed(session: AsyncSession, matches: list[ExotelCall]) -> list[ExotelCall]:
    if not matches:
        return []
    sids = [match.sid for match in matches]
    claimed = set((await session.scalars(select(Call.sid).where(Call.sid.in_(sids)))).all())
    return [match for match in matches if match.sid not in claimed]


async def _lock(session: AsyncSession, call_id: uuid.UUID) -> CallState:
    [call] = (await store.lock(await session.connection(), [call_id])).values()
    return call


async def _apply(
    session: AsyncSession, call: CallState, details: CallDetails, details_after: timedelta
) -> Applied:
    """Apply Exotel's answer and store it as an event that says whether it changed the call."""
    applied = apply_update(call, details.call.to_update())
    await store.save_applied(
        await session.connection(), [(call, applied)], details_after=details_after
    )
    await _store_event(
        session,
        call.id,
        details.call.sid,
        "call_details",
        details.call.status,
        details.raw,
        applied,
    )
    return applied


async def _store_event(
    session: AsyncSession,
    call_id: uuid.UUID,
    sid: str | None,
    event_type: str,
    status: str | None,
    raw_body: bytes,
    applied: Applied,
) -> None:
    await session.execute(
        insert(store.call_events).values(
            call_id=call_id,
            call_sid=sid,
            source="reconcile",
            event_type=event_type,
            status=status,
            content_type="application/json",
            raw_body=raw_body,
            applied=applied.changed,
            processed_at=func.now(),
        )
    )


def _outcome(applied: Applied) -> str:
    if applied.became_terminal:
        return "finished"
    return "updated" if applied.changed else "unchanged"
