"""Claims tied to this process's database session: work whose owner died is seen at once.

A process holds a Postgres session advisory lock for each piece of work it is doing (a
call being placed, a call being reconciled), all on one connection it keeps open for
them. Postgres frees a session's locks when the session ends, so if the process is
killed, or its machine vanishes, its claims are gone as soon as Postgres notices: at
once for a killed process (the socket closes), within the TCP keepalive settings for
a lost machine. Any other process can then ask which claims are held (`held`) and
settle the work that no live session holds, instead of waiting for a fixed lease.

Locks are 64-bit keys derived from (kind, id); `pg_locks` shows them, from any session,
as classid (high 32 bits), objid (low 32 bits), objsubid 1; the queries below put them
back together with `(classid::bigint << 32) | objid::bigint` (the shift wraps, so a
negative key comes back negative).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_HELD_HERE = """
    SELECT EXISTS (
        SELECT FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid()
          AND ((classid::bigint << 32) | objid::bigint) = :key
    )
"""
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


def claim_key(kind: ClaimKind, work_id: uuid.UUID) -> int:
    """The advisory lock key of a claim: 64 bits of a hash, as Postgres' signed bigint."""
    digest = hashlib.blake2b(kind.value.encode() + work_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SessionClaims:
    """This process's claims, held on one dedicated connection.

    The connection is used by one statement at a time (a lock guards it); each claim
    and release is one short round trip.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._connection: AsyncConnection | None = None
        self._in_use = asyncio.Lock()

    async def start(self) -> None:
        self._connection = await self._engine.connect()

    async def close(self) -> None:
        """Release every claim (by ending the session) and the connection."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @asynccontextmanager
    async def holding(self, kind: ClaimKind, work_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the claim while the block runs; ClaimTaken if another session holds it."""
        key = claim_key(kind, work_id)
        if not await self._execute("SELECT pg_try_advisory_lock(:key)", key):
            raise ClaimTaken(f"{kind.value} {work_id} is claimed by another session")
        try:
            yield
        finally:
            await self._execute("SELECT pg_advisory_unlock(:key)", key)

    async def still_held(self, kind: ClaimKind, work_id: uuid.UUID) -> bool:
        """Whether this session still holds the claim (and so is still alive)."""
        return bool(await self._execute(_HELD_HERE, claim_key(kind, work_id)))

    async def _execute(self, query: str, key: int) -> object:
        if self._connection is None:
            raise ClaimsLost("claims were not started, or were closed")
        async with self._in_use:
            try:
                return (await self._connection.execute(text(query), {"key": key})).scalar()
            except Exception as exc:
                if self._connection.invalidated or self._connection.closed:
                    raise ClaimsLost("the session holding the claims is gone") from exc
                raise


async def held(
    connection: AsyncConnection, kind: ClaimKind, ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of `ids` some live session holds a claim of `kind` on (one query)."""
    keys = {claim_key(kind, work_id): work_id for work_id in ids}
    if not keys:
        return set()
    rows = await connection.execute(_HELD_ANYWHERE, {"keys": list(keys)})
    return {keys[row.key] for row in rows}
