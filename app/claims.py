"""Claims tied to this process's database session: work whose owner died is seen at once.

A process holds a Postgres session advisory lock for each piece of work it is doing (a
call being placed, a call being reconciled), all on one connection it keeps open for
them. Postgres frees a session's locks when the session ends, so if the process is
killed, or its machine vanishes, its claims are gone as soon as Postgres notices: at
once for a killed process (the socket closes), within the TCP keepalive settings for
a lost machine. Any other process can then ask which claims are held (`held`) and
settle the work that no live session holds, instead of waiting for a fixed lease.

Locks are 64-bit keys derived from (kind, id): the first 64 bits of the id (random in a
UUID4) XOR a constant of the kind, so that SQL can compute them too (`key_of`) and a
query can skip the rows some session holds (`unheld`). `pg_locks` shows them, from any
session, as classid (high 32 bits), objid (low 32 bits), objsubid 1; the queries below
put them back together with `(classid::bigint << 32) | objid::bigint` (the shift wraps,
so a negative key comes back negative).

If the claims connection dies under a live process (Postgres restarted), its claims are
gone: the next statement says so (ClaimsLost) and the one after opens a new session.
Work that relied on a lost claim must stay safe without it (see app/jobs/reconciler.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Select,
    Text,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import Executable

from app.db import BoundedConnection, connect_options, libpq_url

log = structlog.get_logger(__name__)

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
_HELD_HERE = text(
    """
    SELECT EXISTS (
        SELECT FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid()
          AND ((classid::bigint << 32) | objid::bigint) = :key
    )
    """
)
_HELD_ANYWHERE = text(
    """
    SELECT (classid::bigint << 32) | objid::bigint AS key
    FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = ANY(:keys)
    """
)


class ClaimKind(enum.Enum):
    PLACING = "placing"
    RECONCILING = "reconciling"


class ClaimTaken(Exception):
    """Another live session holds this claim."""


class ClaimsLost(Exception):
    """The session holding this process's claims is gone: none of them holds any more."""


def _kind_mask(kind: ClaimKind) -> int:
    digest = hashlib.blake2b(kind.value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim_key(kind: ClaimKind, work_id: uuid.UUID) -> int:
    """The advisory lock key of a claim, as Postgres' signed bigint (see `key_of`)."""
    return int.from_bytes(work_id.bytes[:8], "big", signed=True) ^ _kind_mask(kind)


def key_of(kind: ClaimKind, id_column: ColumnElement[uuid.UUID]) -> ColumnElement[int]:
    """`claim_key` in SQL, for a uuid column: its first 16 hex digits as a bigint, XOR."""
    first_hex_digits = func.translate(func.left(cast(id_column, Text), 18), "-", "")
    first_64_bits = cast(cast(func.concat("x", first_hex_digits), BIT(64)), BigInteger)
    return first_64_bits.op("#", return_type=BigInteger)(_kind_mask(kind))


# Every advisory key some live session holds, as one bigint each.
_HELD_KEYS = text(
    "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks"
    " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
).columns(key=BigInteger)


def unheld(kind: ClaimKind, id_column: ColumnElement[uuid.UUID]) -> ColumnElement[bool]:
    """True for the rows whose claim of `kind` no live session holds (one scan of
    pg_locks per query, hashed)."""
    return key_of(kind, id_column).not_in(_HELD_KEYS.subquery().select())


# How long closing waits for background claims and releases still under way.
CLOSE_WAIT_S = 2.0
# Background claims and releases go to Postgres together, in one statement: all that
# queued while the last one was under way. A release waits up to this long for a claim
# to ride with, so that at a steady rate of calls each statement takes one call's claim
# and releases another's. Late releases are harmless: the work they covered is done.
RELEASE_DELAY_S = 0.2
# Claims `claim` (bigints) unless held elsewhere, and releases `release`; answers the
# claims that another session holds.
_CLAIM_AND_RELEASE = text(
    """
    SELECT (
        SELECT coalesce(array_agg(key), '{}') FROM unnest(CAST(:claim AS bigint[])) AS key
        WHERE NOT pg_try_advisory_lock(key)
    ), (
        SELECT count(*) FROM unnest(CAST(:release AS bigint[])) AS key
        WHERE pg_advisory_unlock(key)
    )
    """
)


class SessionClaims:
    """This process's claims, held on one dedicated connection.

    The connection is used by one statement at a time (a lock guards it); each claim
    and release is one short round trip, except those taken in the background
    (`claim_soon`), which share one statement with the others queued meanwhile. It is a
    plain psycopg connection (statements compiled by the engine's dialect): a claim and
    a release are on the placing path, where SQLAlchemy's async layer would cost more
    CPU than the statements.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._dialect = engine.dialect
        self._conninfo = libpq_url(engine.url.render_as_string(hide_password=False))
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._started = False
        self._in_use = asyncio.Lock()
        # Claims and releases queued in the background (`claim_soon`), by key; the task
        # that sends them (kept referenced), and what wakes it from a release's delay.
        self._to_claim: dict[int, tuple[ClaimKind, uuid.UUID]] = {}
        self._to_release: set[int] = set()
        self._sending: asyncio.Task[None] | None = None
        self._claim_queued = asyncio.Event()

    async def start(self) -> None:
        self._connection = await self._connect()
        self._started = True

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await BoundedConnection.connect(self._conninfo, autocommit=True, **connect_options())

    async def close(self) -> None:
        """Release every claim (by ending the session) and the connection."""
        self._started = False
        # Ending the session releases every claim, and the work queued claims were for is
        # over; a statement under way is let finish (it is short, or fails at once) rather
        # than cut mid-statement or mid-connect.
        self._to_claim.clear()
        self._to_release.clear()
        sending = self._sending
        if sending is not None:
            self._claim_queued.set()
            _, unfinished = await asyncio.wait({sending}, timeout=CLOSE_WAIT_S)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @asynccontextmanager
    async def holding(self, kind: ClaimKind, work_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the claim while the block runs; ClaimTaken if another session holds it."""
        if not await self.try_claim(kind, work_id):
            raise ClaimTaken(f"{kind.value} {work_id} is claimed by another session")
        try:
            yield
        finally:
            await self.release(kind, work_id)

    async def try_claim(self, kind: ClaimKind, work_id: uuid.UUID) -> bool:
        """Take the claim if no other session holds it (1 round trip)."""
        return bool(await self._execute(_TRY_LOCK, key=claim_key(kind, work_id)))

    async def release(self, kind: ClaimKind, work_id: uuid.UUID) -> None:
        await self._execute(_UNLOCK, key=claim_key(kind, work_id))

    def claim_soon(self, kind: ClaimKind, work_id: uuid.UUID) -> BackgroundClaim:
        """Claim in the background, without waiting: for work that stays safe if another
        process acts on it before the claim lands (or after it is lost)."""
        key = claim_key(kind, work_id)
        self._to_claim[key] = (kind, work_id)
        self._claim_queued.set()
        self._send_soon()
        return BackgroundClaim(self, key)

    def _release_soon(self, key: int) -> None:
        if self._to_claim.pop(key, None) is not None:
            return  # never sent, so never taken: nothing to release
        self._to_release.add(key)
        self._send_soon()

    def _send_soon(self) -> None:
        if self._sending is None:
            # In a context of its own: one statement carries many requests' claims, so
            # what it logs belongs to none of them (not to the request that started it).
            self._sending = asyncio.get_running_loop().create_task(
                self._send_queued(), context=contextvars.Context()
            )

    async def _send_queued(self) -> None:
        """Send what is queued, one statement at a time, until nothing is."""
        try:
            while self._to_claim or self._to_release:
                if not self._to_claim and self._started:
                    self._claim_queued.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._claim_queued.wait(), RELEASE_DELAY_S)
                claiming, self._to_claim = self._to_claim, {}
                releasing, self._to_release = self._to_release, set()
                if not (claiming or releasing):
                    continue  # closed while the releases waited: ending the session freed them
                try:
                    taken = await self._execute(
                        _CLAIM_AND_RELEASE, claim=list(claiming), release=list(releasing)
                    )
                except Exception as exc:
                    log.warning(
                        "claims_failed",
                        claims=len(claiming),
                        releases=len(releasing),
                        error=type(exc).__name__,
                    )
                    continue
                assert isinstance(taken, list)
                for key in taken:
                    kind, work_id = claiming[key]
                    log.warning("claim_taken_elsewhere", kind=kind.value, id=str(work_id))
        finally:
            self._sending = None

    async def claim_first(
        self,
        kind: ClaimKind,
        candidates: Select[tuple[uuid.UUID]] | CompoundSelect[tuple[uuid.UUID]],
    ) -> uuid.UUID | None:
        """Claim the first of `candidates` (ids, in order) that no session holds (1 round
        trip). The candidates must leave out the claims held already (`unheld`): this
        session's own are re-entrant, so trying them would succeed. They are read from a
        snapshot taken before the claim: the caller checks, once it holds the claim, that
        the work is still to be done."""
        # MATERIALIZED: the candidates are listed first, then tried in order, one at a
        # time until one is taken, so no lock is taken on a row not returned.
        listed = candidates.cte("candidates").prefix_with("MATERIALIZED")
        [id_column] = listed.c
        first = select(id_column).where(func.pg_try_advisory_lock(key_of(kind, id_column))).limit(1)
        found = await self._execute(first)
        return found if isinstance(found, uuid.UUID) else None

    async def still_held(self, kind: ClaimKind, work_id: uuid.UUID) -> bool:
        """Whether this session still holds the claim (and so is still alive)."""
        return bool(await self._execute(_HELD_HERE, key=claim_key(kind, work_id)))

    async def _execute(self, statement: Executable, **params: object) -> object:
        if not self._started:
            raise ClaimsLost("claims were not started, or were closed")
        sql, bound = _compiled(statement, self._dialect)
        async with self._in_use:
            if self._connection is None:
                # The last session died: a new one, holding nothing yet.
                self._connection = await self._connect()
            connection = self._connection
            try:
                row = await (await connection.execute(sql, {**bound, **params})).fetchone()
            except psycopg.Error as exc:
                if connection.closed or connection.broken:
                    self._connection = None
                    with contextlib.suppress(Exception):
                        await connection.close()
                    raise ClaimsLost("the session holding the claims is gone") from exc
                raise
            return None if row is None else row[0]


def _compiled(statement: Executable, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The statement as psycopg's SQL, and the values it binds itself; the constant
    statements are compiled once."""
    if isinstance(statement, TextClause):
        return _compiled_text(statement, dialect), {}
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    return str(compiled), dict(compiled.params)


@functools.cache
def _compiled_text(statement: TextClause, dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect))


class BackgroundClaim:
    """A claim taken and released in the background, in that order; never raises."""

    def __init__(self, claims: SessionClaims, key: int) -> None:
        self._claims = claims
        self._key = key

    def release(self) -> None:
        self._claims._release_soon(self._key)


async def held(
    connection: AsyncConnection, kind: ClaimKind, ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of `ids` some live session holds a claim of `kind` on (one query)."""
    keys = {claim_key(kind, work_id): work_id for work_id in ids}
    if not keys:
        return set()
    rows = await connection.execute(_HELD_ANYWHERE, {"keys": list(keys)})
    return {keys[row.key] for row in rows}
