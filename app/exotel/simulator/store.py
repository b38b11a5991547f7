"""Where the simulator keeps its calls: in memory, or in Postgres so they outlive a restart.

The Postgres store uses the simulator's own tables (`sim_*`), created by the simulator
when it starts, never by Callbridge's migrations (migrations/env.py leaves them out of
`alembic check`). Any number of simulators may share them: a call's record says all
there is to say about it (see state.py), so each answers the same for it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.exotel.simulator.state import SimulatedCall

# Apart from Callbridge's Base.metadata on purpose: these are not Callbridge's tables.
sim_metadata = MetaData()
sim_calls = Table(
    "sim_calls",
    sim_metadata,
    Column("sid", Text, primary_key=True),
    Column("account_sid", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("record", JSONB, nullable=False),
    Column("delivered", ARRAY(Text), nullable=False, server_default="{}"),
    Column("callbacks_owed", Boolean, nullable=False),
    Column("claimed_at", DateTime(timezone=True)),
    Index("ix_sim_calls_account_created", "account_sid", "created_at"),
    Index("ix_sim_calls_owed", "ends_at", postgresql_where=text("callbacks_owed")),
)
SCHEMA_LOCK = 0x73696D73  # simulators starting together create the tables one at a time


class CallStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, call: SimulatedCall) -> None: ...

    async def get(self, account_sid: str, sid: str) -> SimulatedCall | None: ...

    async def find(
        self,
        account_sid: str,
        *,
        sids: Collection[str],
        created_from: datetime,
        created_to: datetime,
        ended_by: datetime,
    ) -> list[SimulatedCall]:
        """Calls created in the window and ended by `ended_by`, newest first; `sids`
        empty means any."""
        ...

    async def delivered(self, sid: str, step: str, *, still_owed: bool) -> None: ...

    async def claim_owed(self, ended_before: datetime, lease: timedelta) -> list[SimulatedCall]:
        """Calls that still owe callbacks though they ended before `ended_before`, and
        that nobody claimed within `lease`: the process that played them is gone."""
        ...


class MemoryStore:
    """Calls of this process only; forgotten when it stops."""

    def __init__(self) -> None:
        self._calls: dict[str, SimulatedCall] = {}  # in creation order

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def add(self, call: SimulatedCall) -> None:
        self._calls[call.sid] = call

    async def get(self, account_sid: str, sid: str) -> SimulatedCall | None:
        call = self._calls.get(sid)
        return call if call is not None and call.account_sid == account_sid else None

    async def find(
        self,
        account_sid: str,
        *,
        sids: Collection[str],
        created_from: datetime,
        created_to: datetime,
        ended_by: datetime,
    ) -> list[SimulatedCall]:
        return [
            call
            for call in reversed(self._calls.values())
            if call.account_sid == account_sid
            and (not sids or call.sid in sids)
            and created_from <= call.created_at <= created_to
            and call.ends_at <= ended_by
        ]

    async def delivered(self, sid: str, step: str, *, still_owed: bool) -> None:
        call = self._calls[sid]
        self._calls[sid] = _with_delivered(call, step)

    async def claim_owed(self, ended_before: datetime, lease: timedelta) -> list[SimulatedCall]:
        return []  # what this process plays, it plays to the end


class PostgresStore:
    def __init__(self, database: AsyncEngine | str) -> None:
        if isinstance(database, str):
            self._engine = create_async_engine(_psycopg_url(database))
            self._owns_engine = True
        else:
            self._engine = database
            self._owns_engine = False

    async def open(self) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
            )
            await connection.run_sync(sim_metadata.create_all)

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    async def add(self, call: SimulatedCall) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                sim_calls.insert().values(
                    sid=call.sid,
                    account_sid=call.account_sid,
                    created_at=call.created_at,
                    ends_at=call.ends_at,
                    record=_record(call),
                    delivered=list(call.delivered),
                    callbacks_owed=bool(call.callback_steps()),
                )
            )

    async def get(self, account_sid: str, sid: str) -> SimulatedCall | None:
        query = select(sim_calls.c.record, sim_calls.c.delivered).where(
            sim_calls.c.sid == sid, sim_calls.c.account_sid == account_sid
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).one_or_none()
        return None if row is None else _call(row.record, row.delivered)

    async def find(
        self,
        account_sid: str,
        *,
        sids: Collection[str],
        created_from: datetime,
        created_to: datetime,
        ended_by: datetime,
    ) -> list[SimulatedCall]:
        query = (
            select(sim_calls.c.record, sim_calls.c.delivered)
            .where(
                sim_calls.c.account_sid == account_sid,
                sim_calls.c.created_at.between(created_from, created_to),
                sim_calls.c.ends_at <= ended_by,
            )
            .order_by(sim_calls.c.created_at.desc(), sim_calls.c.sid.desc())
        )
        if sids:
            query = query.where(sim_calls.c.sid.in_(list(sids)))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_call(row.record, row.delivered) for row in rows]

    async def delivered(self, sid: str, step: str, *, still_owed: bool) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(sim_calls)
                .where(sim_calls.c.sid == sid)
                .values(
                    delivered=func.array_append(sim_calls.c.delivered, step),
                    callbacks_owed=still_owed,
                )
            )

    async def claim_owed(self, ended_before: datetime, lease: timedelta) -> list[SimulatedCall]:
        # One statement: two simulators looking at once never both take a call.
        claimable = (
            select(sim_calls.c.sid)
            .where(
                sim_calls.c.callbacks_owed,
                sim_calls.c.ends_at < ended_before,
                (sim_calls.c.claimed_at.is_(None)) | (sim_calls.c.claimed_at < func.now() - lease),
            )
            .limit(100)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(sim_calls)
            .where(sim_calls.c.sid.in_(claimable))
            .values(claimed_at=func.now())
            .returning(sim_calls.c.record, sim_calls.c.delivered)
        )
        async with self._engine.begin() as connection:
            rows = (await connection.execute(claim)).all()
        return [_call(row.record, row.delivered) for row in rows]


def _record(call: SimulatedCall) -> dict[str, Any]:
    document = call.document()
    del document["delivered"]  # its own column: appended to as callbacks go out
    return document


def _call(record: dict[str, Any], delivered: list[str]) -> SimulatedCall:
    return SimulatedCall.from_document({**record, "delivered": delivered})


def _with_delivered(call: SimulatedCall, step: str) -> SimulatedCall:
    return replace(call, delivered=(*call.delivered, step))


def _psycopg_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url
