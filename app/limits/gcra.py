"""GCRA buckets in Postgres, shared by every process: one row per limited thing.

Every process reserves places on the same row, with the database's clock, so the
fleet as a whole keeps the budget however many processes it has. A reservation is one
statement (one round trip, one row lock held for microseconds): at full Exotel rate
that is about three writes a second.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, ConnectionPool
from app.limits.budget import Budget, CallSettled, LimitReached, Priority

# A refusal's wait is a hint read from the statement's snapshot; never poll faster than this.
MIN_POLL_S = 0.01


class RateLimitBucket(Base):
    """One GCRA bucket: `tat` is when the bucket is next empty (see app/limits/budget.py)."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tat: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def reserving(condition: str = "true") -> str:
    """A statement that takes the next place in bucket %(bucket_key)s if it comes within
    %(bucket_max_wait)s, and only if `condition` holds: returns the bucket's new `tat`, or
    nothing. For a WITH clause, so that the reservation rides in a statement already on
    the way (`Buckets.params` binds its parameters).

    A new bucket is empty, so its first request always goes. clock_timestamp(), not now():
    a statement that queued on the row lock must see the time it got the lock, not the
    time its transaction began.
    """
    return f"""
        INSERT INTO rate_limit_buckets AS bucket (key, tat)
        SELECT %(bucket_key)s, clock_timestamp() + %(bucket_interval)s WHERE {condition}
        ON CONFLICT (key) DO UPDATE
            SET tat = greatest(bucket.tat, clock_timestamp()) + %(bucket_interval)s
            WHERE greatest(bucket.tat, clock_timestamp()) + %(bucket_interval)s
                  - %(bucket_tolerance)s <= clock_timestamp() + %(bucket_max_wait)s
        RETURNING bucket.tat
    """  # noqa: S608 - `condition` is our own SQL


# Seconds from now until the place reserved as `reserved` is ours or, if none was, until
# one would be free. The bucket's row is read as the statement found it (its snapshot):
# the wait a refusal gives is a hint. NULL if the bucket is newer than that snapshot.
WAIT_S = """
    extract(epoch FROM coalesce(
        (SELECT tat FROM reserved),
        (SELECT greatest(tat, clock_timestamp()) + %(bucket_interval)s FROM rate_limit_buckets
         WHERE key = %(bucket_key)s)
    ) - %(bucket_tolerance)s - clock_timestamp())::float8
"""


def bucket_params(
    budget: Budget, key: str, priority: Priority, *, max_wait: timedelta = timedelta(0)
) -> dict[str, object]:
    """The parameters of `reserving` and `WAIT_S` for bucket `key`."""
    return {
        "bucket_key": key,
        "bucket_interval": budget.interval,
        "bucket_tolerance": budget.tolerance(priority),
        "bucket_max_wait": max_wait,
    }


_RESERVE = f"""
    WITH reserved AS ({reserving()})
    SELECT EXISTS (SELECT FROM reserved) AS granted, {WAIT_S} AS wait_s, true AS sendable
"""  # noqa: S608 - our own SQL only


# The same, for a call's connect request, and only while the call is still pending: the
# call row is locked, the place reserved, and the call marked as possibly sent from now
# on, all in the one statement that was already on the placing path (no extra round
# trip). A process settling a call left pending by a dead one does so with a conditional
# UPDATE on the same row, so exactly one of the two wins: either the call is failed as
# never sent and no place is granted here, or the place is granted and the call is marked.
_RESERVE_TO_SEND = f"""
    WITH call AS (
        SELECT id FROM calls WHERE id = %(call_id)s AND status = 'pending' FOR UPDATE
    ), reserved AS ({reserving("EXISTS (SELECT FROM call)")}
    ), marked AS (
        UPDATE calls SET connect_reserved_at = clock_timestamp()
        WHERE id IN (SELECT id FROM call) AND EXISTS (SELECT FROM reserved)
        RETURNING id
    )
    SELECT EXISTS (SELECT FROM marked) AS granted, {WAIT_S} AS wait_s,
           EXISTS (SELECT FROM call) AS sendable
"""  # noqa: S608 - our own SQL only


@dataclass(frozen=True)
class Reservation:
    """`granted`: the place is ours from `wait_s` seconds on (now, if <= 0). Refused:
    a place would be free in about `wait_s` seconds."""

    granted: bool
    wait_s: float
    # False: the call being sent is no longer pending (nothing was reserved).
    sendable: bool = True


class Buckets:
    """GCRA buckets in the `rate_limit_buckets` table, under one budget."""

    def __init__(self, pool: ConnectionPool, budget: Budget) -> None:
        # The pool's connections autocommit: a reservation is one statement, with no
        # BEGIN and COMMIT around it.
        self._pool = pool
        self.budget = budget

    async def reserve(
        self,
        key: str,
        priority: Priority,
        *,
        max_wait: timedelta = timedelta(0),
        sending: uuid.UUID | None = None,
    ) -> Reservation:
        """Take the next place in bucket `key` if it comes within `max_wait`; for the
        connect request of call `sending`, only while that call is pending."""
        params = bucket_params(self.budget, key, priority, max_wait=max_wait)
        statement = _RESERVE
        if sending is not None:
            statement, params["call_id"] = _RESERVE_TO_SEND, sending
        async with self._pool.connection() as connection:
            row = await (await connection.execute(statement, params)).fetchone()
        if row is None or row[1] is None:
            # The bucket was created after this statement's snapshot: try again soon.
            return Reservation(
                granted=False,
                wait_s=self.budget.interval.total_seconds(),
                sendable=row is None or row[2],
            )
        granted, wait_s, sendable = row
        return Reservation(granted=granted, wait_s=wait_s, sendable=sendable)


class FleetLimiter:
    """The limit on requests to one Exotel account, shared by the fleet.

    Placing a call reserves the next place if it comes within `max_wait_s` (one round
    trip) and sleeps until then. Background work takes a place only while the bucket
    has room to spare for placing (Budget.background_burst), polling for up to
    `max_wait_s`. Either way, past `max_wait_s` the request is refused: better to say at
    once that nothing was sent, and when to retry, than to queue callers for minutes.
    """

    def __init__(self, buckets: Buckets, key: str, *, max_wait_s: float) -> None:
        self._buckets = buckets
        self._key = key
        self._max_wait_s = max_wait_s

    async def acquire(self, priority: Priority, *, sending: uuid.UUID | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while True:
            left_s = max(0.0, deadline - loop.time())
            may_queue = timedelta(seconds=left_s if priority is Priority.PLACING else 0)
            reservation = await self._buckets.reserve(
                self._key, priority, max_wait=may_queue, sending=sending
            )
            if not reservation.sendable:
                raise CallSettled(f"call {sending} is no longer pending")
            if reservation.granted:
                if reservation.wait_s > 0:
                    await asyncio.sleep(reservation.wait_s)
                return
            if priority is Priority.PLACING or reservation.wait_s > left_s:
                raise LimitReached(retry_after_s=max(1, math.ceil(reservation.wait_s - left_s)))
            await asyncio.sleep(max(reservation.wait_s, MIN_POLL_S))


class ClientLimiter:
    """A limit per key (an API client) that never waits: a place now, or when to retry.

    The place is taken by the statement that stores the call (app/calls/service.py), with
    `reserving` and these `params`: no round trip of its own, and a request refused for
    any other reason costs no place."""

    def __init__(self, budget: Budget, prefix: str) -> None:
        self._budget = budget
        self._prefix = prefix

    @property
    def per_minute(self) -> int:
        return self._budget.limit

    def params(self, name: str) -> dict[str, object]:
        return bucket_params(self._budget, f"{self._prefix}:{name}", Priority.PLACING)

    def retry_after_s(self, wait_s: float | None) -> int:
        """Whole seconds until a refused client has a place (`WAIT_S`, NULL for a bucket
        newer than the statement's snapshot)."""
        if wait_s is None:
            wait_s = self._budget.interval.total_seconds()
        return max(1, math.ceil(wait_s))


# How long placing a call may wait for a place under EXOTEL_REQUESTS_PER_MINUTE.
MAX_QUEUE_S = 5.0
# A request leaves for Exotel within this long of its place (a pooled connection is
# ready, or one is opened): places are counted against the budget over a minute plus this.
EXOTEL_SEND_SLACK = timedelta(seconds=2)
# A call is counted against its client when accepted, before its row is written.
CLIENT_SLACK = timedelta(seconds=1)


def exotel_limiter(pool: ConnectionPool, account_sid: str, per_minute: int) -> FleetLimiter:
    """The fleet's limiter for one Exotel account: no minute holds more than `per_minute`."""
    budget = Budget.keeping(per_minute, send_slack=EXOTEL_SEND_SLACK)
    return FleetLimiter(Buckets(pool, budget), f"exotel:{account_sid}", max_wait_s=MAX_QUEUE_S)


def client_limiter(per_minute: int) -> ClientLimiter:
    """The fleet's limit on POST /calls per API client."""
    return ClientLimiter(Budget.keeping(per_minute, send_slack=CLIENT_SLACK), "calls")
