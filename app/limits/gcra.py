"""GCRA buckets in Postgres, shared by every process: one row per limited thing.

Every process reserves places on the same row, with the database's clock, so the
fleet as a whole keeps the budget however many processes it has. A reservation is one
statement (one round trip, one row lock held for microseconds), or a part of one
(`reserving`: placing a call takes its places in the statement that stores it): at
full Exotel rate that is about three writes a second.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, ConnectionPool
from app.limits.budget import Budget, LimitReached, Priority

# A refusal's wait is a hint read from the statement's snapshot; never poll faster than this.
MIN_POLL_S = 0.01


class RateLimitBucket(Base):
    """One GCRA bucket: `tat` is when the bucket is next empty (see app/limits/budget.py)."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tat: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def reserving(bucket: str, condition: str = "true") -> str:
    """A statement that takes the next place in `bucket` if it comes within its max_wait,
    and only if `condition` holds: returns the bucket's new `tat`, or nothing. For a
    WITH clause named `bucket`, so that a reservation rides in a statement already on
    the way; `bucket_params` binds its parameters, named after it.

    A new bucket is empty, so its first request always goes. clock_timestamp(), not now():
    a statement that queued on the row lock must see the time it got the lock, not the
    time its transaction began.
    """
    return f"""
        INSERT INTO rate_limit_buckets AS bucket (key, tat)
        SELECT %({bucket}_key)s, clock_timestamp() + %({bucket}_interval)s WHERE {condition}
        ON CONFLICT (key) DO UPDATE
            SET tat = greatest(bucket.tat, clock_timestamp()) + %({bucket}_interval)s
            WHERE greatest(bucket.tat, clock_timestamp()) + %({bucket}_interval)s
                  - %({bucket}_tolerance)s <= clock_timestamp() + %({bucket}_max_wait)s
        RETURNING bucket.tat
    """  # noqa: S608 - `condition` is our own SQL


def wait_s(bucket: str) -> str:
    """Seconds from now until the place `reserving(bucket)` took is ours or, if it took
    none, until one would be free. The bucket's row is read as the statement found it
    (its snapshot): the wait a refusal gives is a hint. NULL if the bucket is newer than
    that snapshot."""
    return f"""
        extract(epoch FROM coalesce(
            (SELECT tat FROM {bucket}),
            (SELECT greatest(tat, clock_timestamp()) + %({bucket}_interval)s
             FROM rate_limit_buckets WHERE key = %({bucket}_key)s)
        ) - %({bucket}_tolerance)s - clock_timestamp())::float8
    """  # noqa: S608 - our own SQL only


def bucket_params(
    bucket: str,
    budget: Budget,
    key: str,
    priority: Priority,
    *,
    max_wait: timedelta = timedelta(0),
) -> dict[str, object]:
    """The parameters of `reserving(bucket)` and `wait_s(bucket)`, for bucket row `key`."""
    return {
        f"{bucket}_key": key,
        f"{bucket}_interval": budget.interval,
        f"{bucket}_tolerance": budget.tolerance(priority),
        f"{bucket}_max_wait": max_wait,
    }


_RESERVE = f"""
    WITH reserved AS ({reserving("reserved")})
    SELECT EXISTS (SELECT FROM reserved) AS granted, {wait_s("reserved")} AS wait_s
"""  # noqa: S608 - our own SQL only


@dataclass(frozen=True)
class Reservation:
    """`granted`: the place is ours from `wait_s` seconds on (now, if <= 0). Refused:
    a place would be free in about `wait_s` seconds."""

    granted: bool
    wait_s: float


def reservation_from_row(budget: Budget, granted: bool, wait_s: float | None) -> Reservation:
    """What `reserving` and `wait_s` answered. NULL: the bucket was created after the
    statement's snapshot and had no place for it, so try again an interval later."""
    if wait_s is None:
        return Reservation(granted=False, wait_s=budget.interval.total_seconds())
    return Reservation(granted=granted, wait_s=wait_s)


class Buckets:
    """GCRA buckets in the `rate_limit_buckets` table, under one budget."""

    def __init__(self, pool: ConnectionPool, budget: Budget) -> None:
        # The pool's connections autocommit: a reservation is one statement, with no
        # BEGIN and COMMIT around it.
        self._pool = pool
        self.budget = budget

    async def reserve(
        self, key: str, priority: Priority, *, max_wait: timedelta = timedelta(0)
    ) -> Reservation:
        """Take the next place in bucket `key` if it comes within `max_wait`."""
        params = bucket_params("reserved", self.budget, key, priority, max_wait=max_wait)
        async with self._pool.connection() as connection:
            row = await (await connection.execute(_RESERVE, params)).fetchone()
        assert row is not None
        return reservation_from_row(self.budget, *row)


class FleetLimiter:
    """The limit on requests to one Exotel account, shared by the fleet.

    Placing a call reserves the next place if it comes within `max_wait_s`, in the
    statement that stores the call (`placing_params`), and sleeps until then (`placing`).
    A lookup takes a place only while the bucket has room to spare for placing
    (Budget.background_burst), polling for up to `max_wait_s` (`acquire`). Either way,
    past `max_wait_s` the request is refused: better to say at once that nothing was
    sent, and when to retry, than to queue callers for minutes.
    """

    def __init__(self, buckets: Buckets, key: str, *, max_wait_s: float) -> None:
        self._buckets = buckets
        self._key = key
        self._max_wait_s = max_wait_s

    async def acquire(self) -> None:
        """A place for a lookup: taken only while the bucket has room to spare for
        placing, polled for until `max_wait_s`, else LimitReached."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while True:
            left_s = max(0.0, deadline - loop.time())
            reservation = await self._buckets.reserve(self._key, Priority.BACKGROUND)
            if reservation.granted:
                return
            if reservation.wait_s > left_s:
                raise LimitReached(retry_after_s=max(1, math.ceil(reservation.wait_s - left_s)))
            await asyncio.sleep(max(reservation.wait_s, MIN_POLL_S))

    def placing_params(self) -> dict[str, object]:
        """The parameters of `reserving("exotel")`: a place for a connect request, queued
        for at most `max_wait_s`."""
        return bucket_params(
            "exotel",
            self._buckets.budget,
            self._key,
            Priority.PLACING,
            max_wait=timedelta(seconds=self._max_wait_s),
        )

    def reservation(self, granted: bool, wait_s: float | None) -> Reservation:
        """The place `reserving("exotel")` answered."""
        return reservation_from_row(self._buckets.budget, granted, wait_s)

    async def placing(self, place: Reservation) -> None:
        """Wait for a connect request's place (sleep until it is ours), or LimitReached
        if none came within `max_wait_s`."""
        if not place.granted:
            wait_beyond_s = place.wait_s - self._max_wait_s
            raise LimitReached(retry_after_s=max(1, math.ceil(wait_beyond_s)))
        if place.wait_s > 0:
            await asyncio.sleep(place.wait_s)


class ClientLimiter:
    """A limit per key (an API client) that never waits: a place now, or when to retry.

    The place is taken by the statement that stores the call (app/calls/service.py), with
    `reserving("client")` and these `params`: no round trip of its own, and a request
    refused for any other reason costs no place."""

    def __init__(self, budget: Budget, prefix: str) -> None:
        self._budget = budget
        self._prefix = prefix

    @property
    def per_minute(self) -> int:
        return self._budget.limit

    def params(self, name: str) -> dict[str, object]:
        return bucket_params("client", self._budget, f"{self._prefix}:{name}", Priority.PLACING)

    def reservation(self, granted: bool, wait_s: float | None) -> Reservation:
        """The place `reserving("client")` answered."""
        return reservation_from_row(self._budget, granted, wait_s)

    @staticmethod
    def retry_after_s(refused: Reservation) -> int:
        """Whole seconds until a refused client has a place."""
        return max(1, math.ceil(refused.wait_s))


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
