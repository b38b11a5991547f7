"""The applier: applies stored status callbacks to their calls, in batches, in order.

`POST /callbacks/exotel` only stores a callback (app/callbacks/service.py) and wakes the
applier of its own process (`wake`); this loop, running in every API process and in the
worker, also looks every POLL_INTERVAL_S for what other processes left (a replica that
died, say), and applies what waits:

1. lock, with SKIP LOCKED, the calls of the oldest waiting events (replicas share the
   work: each takes calls no other holds), in id order;
2. read those calls' waiting events, oldest first, and run `apply_update`, the rules every
   message from Exotel goes through, on each: on the callback as the endpoint parsed it,
   if this process stored it, else as parsed again from its raw body;
3. write the calls, their legs, the events' `processed_at`/`applied` and the outbox rows
   back in a few statements, and commit.

A crash mid-batch rolls it all back: the events wait for the next run. If the database
refuses a value, the batch is retried one event at a time, and only the refused event
is set aside (processed, not applied): one bad callback never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import structlog
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.calls import store
from app.calls.apply import Applied, apply_update
from app.calls.state import CallState
from app.exotel.callbacks import CallbackError, parse_callback
from app.exotel.schemas import ExotelCallback
from app.metrics import CALLBACK_APPLY_LAG, CALLBACKS_APPLIED

log = structlog.get_logger(__name__)

# At most this many callbacks a batch. Under a saturating load the applier shares its
# process's event loop with the requests, and each of a batch's ~7 round trips waits
# behind them: batches of 200 then applied barely more than arrived, and the backlog
# (and the lag) could grow for as long as the load lasted. 1,000 keeps a margin.
BATCH = 1000
# The process that stores a callback wakes its applier at once; what others left waits
# at most this long.
POLL_INTERVAL_S = 1.0
# Once woken, how long the applier lets more callbacks arrive before it takes a batch:
# under load a batch then holds many callbacks, not one (a batch costs ~7 round trips).
GATHER_S = 0.005
# After an error of our own (the database is away, say), before trying again.
ERROR_PAUSE_S = 2.0

events = store.call_events
WAITING = events.c.processed_at.is_(None)


# Callbacks parsed by the endpoint kept for the applier, by event id: parsing one again
# from its raw body costs about a tenth of its whole cost (bench/README.md). Past
# PARSED_KEPT waiting (a backlog: a few MB), the others are parsed again.
Parsed: TypeAlias = dict[int, ExotelCallback]
PARSED_KEPT = 5_000
# How long the oldest callback stored by this process may wait for its applier before
# its endpoint waits (at most ROOM_WAIT_S) to store more. Storing costs about twice what
# applying does, and under a saturating load the requests would take all of the
# process's CPU: the backlog, and the lag, would grow for as long as the load lasted
# (bench/README.md). A time, not a count, so that the lag target (p99 <= 1 s) holds on a
# machine of any speed; a quarter of it, where half gave the same throughput and twice
# the lag.
BACKLOG_AGE_S = 0.25
# Bounded: an applier that cannot apply (the database refuses it) must not keep
# callbacks from being stored.
ROOM_WAIT_S = 1.0


class CallbackApplier:
    def __init__(self, engine: AsyncEngine, *, details_after: timedelta) -> None:
        self._engine = engine
        self._details_after = details_after
        self._woken = asyncio.Event()
        self._parsed: Parsed = {}
        # (event id, when stored) of the callbacks in `_parsed`, oldest first.
        self._stored_at: deque[tuple[int, float]] = deque()
        self._room = asyncio.Event()
        self._room.set()

    def wake(self, event_id: int, callback: ExotelCallback) -> None:
        """Apply what waits now, not at the next poll; `callback` is stored event
        `event_id`, parsed."""
        if len(self._parsed) < PARSED_KEPT:
            self._parsed[event_id] = callback
            self._stored_at.append((event_id, time.monotonic()))
        self._woken.set()

    async def room(self) -> None:
        """Return once no callback stored here has waited BACKLOG_AGE_S for the applier,
        or after ROOM_WAIT_S."""
        if self._backlogged():
            # Set again by the applier once a batch leaves no callback waiting that long.
            # Woken for that batch: the oldest may have been applied by another process
            # (its call was held when this applier took the others), which only a batch
            # finds out; an idle applier would otherwise look at its next poll.
            self._room.clear()
            self._woken.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROOM_WAIT_S):
                    await self._room.wait()

    async def run(self, stopping: asyncio.Event) -> None:
        """Apply what waits whenever woken, until `stopping` is set."""
        stopper = asyncio.create_task(_set_when(stopping, self._woken))
        try:
            while not stopping.is_set():
                await asyncio.sleep(GATHER_S)
                self._woken.clear()
                pause_s = POLL_INTERVAL_S
                try:
                    while await self._apply_making_room() == BATCH and not stopping.is_set():
                        pass
                except Exception:
                    log.exception("callback_apply_failed")
                    pause_s = ERROR_PAUSE_S
                    # Nothing is applied before the pause: the endpoint need not wait.
                    self._parsed.clear()
                    self._stored_at.clear()
                    self._room.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause_s):
                        await self._woken.wait()
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)

    async def _apply_making_room(self) -> int:
        processed = await self.apply_pending()
        if not self._backlogged():
            self._room.set()
        return processed

    def _backlogged(self) -> bool:
        """Whether the oldest callback stored here and still waiting has waited
        BACKLOG_AGE_S or longer (those applied have left `_parsed`)."""
        while self._stored_at and self._stored_at[0][0] not in self._parsed:
            self._stored_at.popleft()
        return bool(self._stored_at) and time.monotonic() - self._stored_at[0][1] >= BACKLOG_AGE_S

    async def apply_pending(self) -> int:
        """Apply up to about BATCH waiting callbacks; return how many were processed."""
        try:
            async with self._engine.begin() as conn:
                return await apply_waiting(
                    conn, WAITING, details_after=self._details_after, parsed=self._parsed
                )
        except (DataError, IntegrityError) as exc:
            log.warning("callback_batch_refused", reason=_refusal(exc))
            return await self._apply_one_at_a_time()

    async def _apply_one_at_a_time(self) -> int:
        async with self._engine.connect() as conn:
            waiting = (
                await conn.scalars(
                    select(events.c.id).where(WAITING).order_by(events.c.id).limit(BATCH)
                )
            ).all()
        for event_id in waiting:
            try:
                async with self._engine.begin() as conn:
                    await apply_waiting(
                        conn, WAITING & (events.c.id == event_id), details_after=self._details_after
                    )
            except (DataError, IntegrityError) as exc:
                log.error("callback_not_applied", event_id=event_id, reason=_refusal(exc))
                async with self._engine.begin() as conn:
                    await conn.execute(
                        events.update()
                        .where(events.c.id == event_id)
                        .values(processed_at=func.now(), applied=False)
                    )
        return len(waiting)


async def apply_waiting(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    *,
    details_after: timedelta,
    parsed: Parsed | None = None,
) -> int:
    """Apply the events `which` selects, of calls no other transaction holds, within the
    caller's transaction (~7 round trips); return how many were processed.

    `parsed` holds callbacks already parsed; those of the events taken are removed, and
    so are those of older events: another process applied them, or their call is held
    by another transaction, and they are parsed again when their turn comes.
    """
    parsed = {} if parsed is None else parsed
    oldest = select(events.c.call_id).where(which).order_by(events.c.id).limit(BATCH)
    calls = await store.lock(conn, oldest, skip_locked=True)
    if not calls:
        parsed.clear()
        return 0
    rows = (
        await conn.execute(
            select(
                events.c.id,
                events.c.call_id,
                events.c.raw_body,
                events.c.content_type,
                events.c.received_at,
            )
            .where(which, events.c.call_id.in_(list(calls)))
            .order_by(events.c.id)
        )
    ).all()
    statuses_before = {call_id: call.status for call_id, call in calls.items()}
    changed_calls: set[uuid.UUID] = set()
    changed_events: list[int] = []
    outcomes: Counter[str] = Counter()
    oldest_taken = rows[0].id if rows else 0
    for older in [event_id for event_id in parsed if event_id < oldest_taken]:
        del parsed[older]
    for row in rows:
        call = calls[row.call_id]
        callback = parsed.pop(row.id, None) or await _parsed(row.raw_body, row.content_type)
        applied = None if callback is None else apply_update(call, callback.to_update())
        outcome = "unchanged"
        if applied is not None and applied.changed:
            changed_calls.add(call.id)
            changed_events.append(row.id)
            outcome = "applied"
        if applied is not None and applied.conflicting:
            # Counted as such even if it filled a gap (a price, say).
            outcome = "conflicting"
            log.warning(
                "callback_conflicting_status",
                call_id=str(call.id),
                event_id=row.id,
                status=call.status,
            )
        outcomes[outcome] += 1
    await store.save_applied(
        conn,
        [
            (call, _applied(statuses_before[call.id], call, call.id in changed_calls))
            for call in calls.values()
        ],
        details_after=details_after,
    )
    await conn.execute(
        events.update()
        .where(store.ids_in(events.c.id, [row.id for row in rows]))
        .values(
            # The time of this statement, not of the transaction's start: the lag
            # metric and bench measure acknowledgement to application.
            processed_at=func.clock_timestamp(),
            applied=store.ids_in(events.c.id, changed_events),
        )
    )
    _observe(rows, outcomes)
    return len(rows)


async def _parsed(raw_body: bytes, content_type: str | None) -> ExotelCallback | None:
    """A stored callback, parsed again; None if it cannot be read."""
    try:
        return await parse_callback(raw_body, content_type)
    except CallbackError:
        return None  # the parser changed since it was stored, and now refuses it


def _refusal(exc: DBAPIError) -> str:
    """Why the database refused, without what: SQLAlchemy's message shows the statement's
    parameters, and the database's DETAIL quotes the row, the legs' phone numbers with it."""
    primary = getattr(getattr(exc.orig, "diag", None), "message_primary", None)
    return primary if isinstance(primary, str) else type(exc.orig).__name__


def _applied(status_before: str, call: CallState, changed: bool) -> Applied:
    return Applied(changed=changed, previous_status=status_before, status=call.status)


def _observe(rows: Sequence[object], outcomes: Counter[str]) -> None:
    now = datetime.now(UTC)
    for row in rows:
        CALLBACK_APPLY_LAG.observe((now - row.received_at).total_seconds())  # type: ignore[attr-defined]
    for outcome in ("applied", "conflicting", "unchanged"):
        CALLBACKS_APPLIED.labels(outcome).inc(outcomes[outcome])


async def _set_when(condition: asyncio.Event, wake: asyncio.Event) -> None:
    await condition.wait()
    wake.set()


@contextlib.asynccontextmanager
async def running_applier(
    engine: AsyncEngine, *, details_after: timedelta
) -> AsyncIterator[CallbackApplier]:
    """Run the applier while the context is open; on exit, finish the batch in hand."""
    applier = CallbackApplier(engine, details_after=details_after)
    stopping = asyncio.Event()
    task = asyncio.create_task(applier.run(stopping), name="callback-applier")
    try:
        yield applier
    finally:
        stopping.set()
        await task
